"""Loading a LEGO model folder, and building a trainable one from pretrained parts.

The authors start from Stable Diffusion 1.5 and widen the UNet's conv_in from 4 to 8 input
channels (the VAE latent of X is concatenated to the noisy latent of Y): the old weights are
copied and the new channels start at zero, so the widened UNet initially ignores X and behaves
like the pretrained one. An InstructPix2Pix folder already has 8 channels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lego_core.device import looks_local
from lego_core.errors import BadInput

log = logging.getLogger("lego.diffusion")

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
MODEL_INFO = "lego.json"   # what the trainer knew and diffusers' model_index.json does not keep


def check_model_folder(folder: str | Path, *, parts=PARTS) -> Path:
    """A local diffusers folder with every part, or BadInput naming what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise BadInput(f"model folder not found: {path} (train one with `lego train`, or pass a diffusers folder)")
    if not (path / "model_index.json").is_file():
        raise BadInput(f"{path} is not a diffusers model folder (no model_index.json)")
    missing = [p for p in parts if not (path / p).is_dir()]
    if missing:
        raise BadInput(f"model folder {path} is missing {', '.join(missing)}/; it must hold {', '.join(parts)}")
    return path


def widen_conv_in(unet, in_channels: int = 8):
    """UNet with conv_in taking `in_channels`: the old channels copied, the new ones zero."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"UNet already takes {old.in_channels} channels, more than {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def vllm_width(vllm: int | str | Path) -> int:
    """The VLLM's hidden size: a number, or read from a LLaVA folder's config.json."""
    if isinstance(vllm, int):
        return vllm
    if str(vllm).isdigit():
        return int(vllm)
    config = Path(vllm) / "config.json"
    if not config.is_file():
        raise BadInput(f"no LLaVA config at {config}; pass the LLaVA folder or the VLLM width as a number")
    data = json.loads(config.read_text())
    text = data.get("text_config") or {}
    width = text.get("hidden_size") or data.get("hidden_size")
    if not width:
        raise BadInput(f"{config} names no hidden_size (text_config.hidden_size); pass the VLLM width as a number")
    return int(width)


def build_from_pretrained(base: str | Path, *, conditioning: str = "description+joint",
                          vllm: int | str | Path | None = 5120, scheduler: str = "euler_a",
                          torch_dtype=torch.float32):
    """A trainable LegoPipeline from an SD-1.5-layout or InstructPix2Pix folder (or hub id)."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from lego_core.diffusion.conditioner import (
        LegoConditioner,
        feedforward_width,
        uses_image_embeds,
        uses_text_embeds,
    )
    from lego_core.diffusion.pipeline import LegoPipeline

    if looks_local(base):
        check_model_folder(base)
    load = dict(pretrained_model_name_or_path=str(base))
    unet = UNet2DConditionModel.from_pretrained(**load, subfolder="unet", dtype=torch_dtype)
    vae = AutoencoderKL.from_pretrained(**load, subfolder="vae", dtype=torch_dtype)
    text_encoder = CLIPTextModel.from_pretrained(**load, subfolder="text_encoder", dtype=torch_dtype)
    tokenizer = CLIPTokenizer.from_pretrained(**load, subfolder="tokenizer")
    sched_config = EulerAncestralDiscreteScheduler.load_config(str(base), subfolder="scheduler")
    sched = EulerAncestralDiscreteScheduler.from_config(sched_config) if scheduler == "euler_a" else None
    if sched is None:
        raise BadInput(f"unknown scheduler {scheduler!r}")
    widen_conv_in(unet, 8)
    channels_last_encoder(vae)
    conditioner = None
    if uses_image_embeds(conditioning) or uses_text_embeds(conditioning) or conditioning in ("label", "description"):
        width = vllm_width(vllm) if vllm is not None else 5120
        d = unet.config.cross_attention_dim
        conditioner = LegoConditioner(vllm_dim=width, cross_attention_dim=d, conditioning=conditioning,
                                      dim_feedforward=feedforward_width(d)).eval()  # like from_pretrained models
        if torch_dtype != torch.float32:
            conditioner = conditioner.to(torch_dtype)
    return LegoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
                        conditioner=conditioner)


def folder_conditioning(folder: str | Path) -> str:
    """The conditioning a saved model was trained with, read from its config alone."""
    config = Path(folder) / "conditioner" / "config.json"
    if not config.is_file():
        return "description"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{config}: not readable JSON ({e}); restore it from the trained model") from None
    conditioning = data.get("conditioning", "description") if isinstance(data, dict) else None
    if not isinstance(conditioning, str):
        raise BadInput(f"{config}: no conditioning name in it; restore it from the trained model")
    return conditioning


def write_model_info(folder: str | Path, *, resolution: int, validation_steps: int, **extra) -> None:
    """Record, beside model_index.json, the resolution the model was trained at and the step count
    its validation samples used: `lego generate` defaults `--size`/`--steps` to them."""
    info = {"resolution": int(resolution), "validation_steps": int(validation_steps), **extra}
    (Path(folder) / MODEL_INFO).write_text(json.dumps(info, indent=1) + "\n")


def read_model_info(folder: str | Path) -> dict:
    """The folder's `lego.json` ({} for folders made elsewhere, e.g. imported weights, or hub ids)."""
    path = Path(folder) / MODEL_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not readable JSON ({e}); fix or delete it") from None
    return info if isinstance(info, dict) else {}


def quiet_loading() -> None:
    """No per-file progress bars from diffusers/transformers while loading: ours is the one that counts."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_pipeline(folder: str | Path, *, device: str = "cpu", torch_dtype=torch.float32):
    """A LegoPipeline from a folder `save_pretrained` wrote (or a hub id)."""
    from lego_core.diffusion.pipeline import LegoPipeline

    if looks_local(folder):
        check_model_folder(folder)
    quiet_loading()
    try:
        pipe = LegoPipeline.from_pretrained(str(folder), dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"cannot load the model in {folder}: {e}") from None
    channels_last_encoder(pipe.vae)
    return pipe.to(device)


def channels_last_encoder(vae):
    """Lay the VAE encoder's weights out channels-last. Its convolutions at full resolution then run
    ≈1.4× faster on CPU (measured at 256², scripts/bench/train.py); the decoder does not gain and
    stays as loaded. Numerically the same encoder (within float rounding); saves unchanged."""
    vae.encoder.to(memory_format=torch.channels_last)
    return vae
