"""`lego import checkpoint`: the authors' CompVis/LDM diffusion checkpoint -> a LegoPipeline folder.

Their checkpoints (`ego4d_diffusion_with_vllm_feature.ckpt`, ...) are PyTorch Lightning files: a
pickle holding `state_dict` with CompVis names (see `compvis`). A pickle can run code when it is
loaded, so the file is first read with `torch.load(weights_only=True)`, which only accepts tensors
and plain containers; a file that needs more (Lightning's hyper-parameters, callbacks) is loaded in
full only with `trust_pickle=True` (`--trust-pickle`). `.safetensors` files need neither.

What is written: a diffusers folder (`LegoPipeline.save_pretrained`) with
- unet: the EMA weights when the file has them (`model_ema.*`, LitEma's dot-less names), else the
  raw ones (`ema=False` / `--no-ema` picks the raw ones); conv_in with 8 input channels (a 4-channel
  SD checkpoint is widened with zeros for the new channels, as the authors initialised theirs);
- vae, text_encoder: `first_stage_model.*`, `cond_stage_model.transformer.*`;
- conditioner: σ, μ, π from `projection_img`, `projection_txt`, `self_attn_mix` when present. In
  the authors' release these were never given to the optimizer: they are the random values they
  were initialised with. They are imported as they are, because that is the model the paper's
  numbers come from;
- tokenizer, scheduler: SD-1.5's, shipped with lego as configs (`sd15/`); the CLIP BPE vocabulary
  is built from `bpe_simple_vocab_16e6.txt.gz` (shipped inside the open_clip_torch package) or read
  from a CLIP tokenizer in the Hugging Face cache, or given with `tokenizer=`;
- import.json: what was imported, from where, and how;
- lego.json: the resolution the model was trained at and the step count to sample with (the
  authors': 256 px crops, 100 Euler-ancestral steps; `resolution=` / `steps=` for other files), the
  same record `lego train`'s export writes, so `lego generate` defaults `--size` / `--steps` to them.

The architecture (UNet/VAE/text encoder configs) is SD-1.5's unless `base` names a diffusers folder
whose configs to use instead (how the tests import their tiny models).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lego_core.errors import BadInput
from lego_core.importers.output import check_out, install, temp_folder
from lego_core.importers.sd15_files import base_configs, load_base_tokenizer, write_sd15_tokenizer
from lego_core.importers.state_dict import read_state_dict

from . import compvis

log = logging.getLogger("lego.import")

# The authors' settings (configs/train_*.yaml: crop_res 256; configs/generate_*.yaml: steps 100).
AUTHORS_RESOLUTION, AUTHORS_STEPS = 256, 100
UNTRAINED_NOTE = ("the conditioner (projection_img, projection_txt, self_attn_mix) is imported as released: "
                  "in the authors' code these layers were never given to the optimizer, so they hold their "
                  "random initial values")


@dataclass
class CheckpointImport:
    """What `import_checkpoint` did (also written to OUT/import.json)."""

    source: str
    out: str
    loaded_with: str                   # "weights_only", "full pickle (--trust-pickle)", "safetensors"
    unet_weights: str                  # "ema" or "raw"
    ema_in_file: bool
    in_channels_in_file: int
    conditioner: str | None            # its conditioning, or None when the file has no conditioner
    vllm_dim: int | None
    tokenizer_from: str
    ignored_keys: int
    resolution: int = AUTHORS_RESOLUTION     # recorded in lego.json: `lego generate`'s default --size
    steps: int = AUTHORS_STEPS               # and its default --steps
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [self.out, f"  from {self.source} ({self.loaded_with})",
               f"  unet: {self.unet_weights} weights" + (" (the file has EMA weights too)"
                                                         if self.ema_in_file and self.unet_weights == "raw" else "")]
        out.append(f"  conditioner: {self.conditioner} (VLLM width {self.vllm_dim})" if self.conditioner
                   else "  conditioner: none in the file (description-only model)")
        out.append(f"  generate defaults (lego.json): {self.resolution} px, {self.steps} steps")
        out += [f"  note: {n}" for n in self.notes]
        return out


# -- building the models ---------------------------------------------------------------------------


def _load_part(model, expected_names: dict[str, str], state: dict, part: str, src: str, dtype,
               reshape=None) -> None:
    """Load `model` from `state` where `expected_names` maps each model key to its name in the file."""
    own = model.state_dict()
    missing = [name for k, name in expected_names.items() if name not in state]
    if missing:
        raise BadInput(f"{src}: {len(missing)} of {len(expected_names)} {part} weights missing (first: {missing[0]}); "
                       "not a checkpoint of this architecture (use --base for another one)")
    sd = {}
    for k, name in expected_names.items():
        v = state[name]
        if reshape is not None:
            v = reshape(k, v)
        if tuple(v.shape) != tuple(own[k].shape):
            raise BadInput(f"{src}: {name} has shape {list(v.shape)}, the {part} expects {list(own[k].shape)}; "
                           "not a checkpoint of this architecture (use --base for another one)")
        sd[k] = v.to(dtype)
    model.load_state_dict(sd, strict=True, assign=True)


def _empty(build):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def import_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, trust_pickle: bool = False,
                      ema: bool = True, base: str | os.PathLike | None = None,
                      tokenizer: str | os.PathLike | None = None, overwrite: bool = False,
                      dtype: str = "float32", resolution: int = AUTHORS_RESOLUTION,
                      steps: int = AUTHORS_STEPS) -> CheckpointImport:
    """Import a CompVis/LDM checkpoint into a LegoPipeline folder at `out` (see the module doc).
    `resolution` / `steps`: what the model was trained at and is sampled with, recorded in lego.json."""
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lego_core.diffusion.build import quiet_loading, widen_conv_in, write_model_info
    from lego_core.diffusion.conditioner import LegoConditioner
    from lego_core.diffusion.pipeline import LegoPipeline

    if dtype not in ("float32", "float16", "bfloat16"):
        raise BadInput(f"--dtype must be float32, float16 or bfloat16, not {dtype!r}")
    if resolution < 8 or resolution % 8 or steps < 1:
        raise BadInput(f"--resolution {resolution} / --steps {steps}: the resolution is a multiple of 8 "
                       "(the VAE's factor) and the steps at least 1")
    torch_dtype = getattr(torch, dtype)
    out = Path(out)
    check_out(out, overwrite)
    configs = base_configs(base)
    quiet_loading()
    src = str(path)
    state, how = read_state_dict(path, trust_pickle=trust_pickle)
    parts = compvis.split_compvis(state)
    if not parts["unet"]:
        sample = ", ".join(sorted(state)[:3])
        raise BadInput(f"{src}: no {compvis.UNET_PREFIX}* weights (found {sample}, ...): "
                       "not a CompVis/LDM (Stable Diffusion / LEGO) checkpoint")
    for part, prefix in (("vae", compvis.VAE_PREFIX), ("text", compvis.TEXT_PREFIX)):
        if not parts[part]:
            raise BadInput(f"{src}: no {prefix}* weights: the checkpoint lacks its "
                           f"{'VAE' if part == 'vae' else 'CLIP text encoder'}")
    notes: list[str] = []

    # UNet: its input width comes from the file; everything else from the config.
    conv_in = parts["unet"].get(compvis.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.dim() != 4:
        raise BadInput(f"{src}: no 4-D {compvis.UNET_PREFIX}input_blocks.0.0.weight (the UNet's conv_in)")
    in_channels = int(conv_in.shape[1])
    if in_channels not in (4, 8):
        raise BadInput(f"{src}: the UNet takes {in_channels} input channels; expected 8 "
                       "(LEGO/InstructPix2Pix) or 4 (SD)")
    unet_cfg = dict(configs["unet"], in_channels=in_channels)
    unet = _empty(lambda: UNet2DConditionModel.from_config(unet_cfg))
    names = {k: compvis.UNET_PREFIX + compvis.unet_to_compvis(k, unet.config) for k in unet.state_dict()}
    ema_names = {k: compvis.ema_name(n) for k, n in names.items()}
    ema_in_file = bool(parts["ema"])
    use_ema = ema and ema_in_file
    if use_ema:
        _load_part(unet, ema_names, parts["ema"], "UNet (EMA)", src, torch_dtype)
    else:
        _load_part(unet, names, parts["unet"], "UNet", src, torch_dtype)
    if in_channels == 4:
        widen_conv_in(unet, 8)
        notes.append("a 4-channel (SD) UNet: conv_in widened to 8 channels, the new ones zero")

    vae = _empty(lambda: AutoencoderKL.from_config(configs["vae"]))
    vae_names = {k: compvis.VAE_PREFIX + compvis.vae_to_compvis(k, vae.config) for k in vae.state_dict()}

    def vae_shape(k, v):
        return v.reshape(v.shape[0], v.shape[1]) if compvis.is_vae_attention_matrix(k) and v.dim() == 4 else v

    _load_part(vae, vae_names, parts["vae"], "VAE", src, torch_dtype, reshape=vae_shape)

    text_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "_name_or_path")}
    text_encoder = _empty(lambda: CLIPTextModel(CLIPTextConfig(**text_cfg)))
    text_state = {compvis.text_from_compvis(k): v for k, v in parts["text"].items()
                  if k.startswith(compvis.TEXT_PREFIX) and not k.endswith("position_ids")}
    own_text = text_encoder.state_dict()
    text_names = {k: compvis.text_from_compvis(k) for k in own_text if not k.endswith("position_ids")}
    if any(name not in text_state for name in text_names.values()):
        text_state = {compvis.TEXT_PREFIX + compvis.text_to_compvis(k): v for k, v in text_state.items()}
        text_names = {k: compvis.TEXT_PREFIX + compvis.text_to_compvis(name) for k, name in text_names.items()}
        _load_part(text_encoder, text_names, text_state, "text encoder", src, torch_dtype)  # raises: names missing
    sd = {}
    for k, name in text_names.items():
        v = text_state[name]
        if tuple(v.shape) != tuple(own_text[k].shape):
            raise BadInput(f"{src}: {compvis.TEXT_PREFIX}{compvis.text_to_compvis(name)} has shape {list(v.shape)}, "
                           f"the text encoder expects {list(own_text[k].shape)}; not a checkpoint of this "
                           "architecture (use --base for another one)")
        sd[k] = v.to(torch_dtype)
    for k in own_text:
        if k.endswith("position_ids"):
            sd[k] = own_text[k]
    text_encoder.load_state_dict(sd, strict=True, assign=True)
    text_encoder.eval()

    conditioner = None
    vllm_dim = None
    cond = parts["conditioner"]
    if cond:
        present = {p for p in compvis.CONDITIONER_PREFIXES if any(k.startswith(p) for k in cond)}
        if len(present) != 3:
            raise BadInput(f"{src}: only {', '.join(sorted(p.rstrip('.') for p in present))} of projection_img, "
                           "projection_txt, self_attn_mix: an incomplete LEGO conditioner")
        w = cond.get("projection_img.weight")
        if w is None or w.dim() != 2:
            raise BadInput(f"{src}: projection_img.weight missing or not 2-D")
        vllm_dim, width = int(w.shape[1]), int(w.shape[0])
        layers = 1 + max(int(m.group(1)) for k in cond if (m := re.match(r"self_attn_mix\.layers\.(\d+)\.", k)))
        ff = cond.get("self_attn_mix.layers.0.linear1.weight")
        conditioner = LegoConditioner(vllm_dim=vllm_dim, cross_attention_dim=width, conditioning="description+joint",
                                      num_layers=layers, dim_feedforward=int(ff.shape[0]) if ff is not None else 2048)
        _load_part(conditioner, {k: k for k in conditioner.state_dict()}, cond, "conditioner", src, torch_dtype)
        conditioner.eval()
        if width != unet.config.cross_attention_dim:
            raise BadInput(f"{src}: the conditioner projects to {width}, the UNet cross-attends to "
                           f"{unet.config.cross_attention_dim}")
        notes.append(UNTRAINED_NOTE)

    scheduler = EulerAncestralDiscreteScheduler.from_config(configs["scheduler"])
    tmp = temp_folder(out)
    try:
        if base is not None and tokenizer is None and (Path(base) / "tokenizer").is_dir():
            shutil.copytree(Path(base) / "tokenizer", tmp / "tokenizer")
            tokenizer_from = str(Path(base) / "tokenizer")
            tok = load_base_tokenizer(base, tmp / "tokenizer")
        else:
            tokenizer_from = write_sd15_tokenizer(tmp / "tokenizer", tokenizer)
            tok = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"))
        if len(tok) != text_encoder.config.vocab_size:
            raise BadInput(f"the tokenizer from {tokenizer_from} has {len(tok)} tokens, the text encoder "
                           f"{text_encoder.config.vocab_size}")
        unet.eval()
        vae.eval()
        pipe = LegoPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                            conditioner=conditioner)
        pipe.save_pretrained(tmp, safe_serialization=True)
        summary = CheckpointImport(
            source=os.path.abspath(src), out=str(out), loaded_with=how, unet_weights="ema" if use_ema else "raw",
            ema_in_file=ema_in_file, in_channels_in_file=in_channels,
            conditioner=conditioner.config.conditioning if conditioner is not None else None, vllm_dim=vllm_dim,
            tokenizer_from=tokenizer_from, ignored_keys=len(parts["other"]), resolution=resolution, steps=steps,
            notes=notes,
        )
        (tmp / "import.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        write_model_info(tmp, resolution=resolution, validation_steps=steps,
                         conditioning=conditioner.config.conditioning if conditioner is not None else "description",
                         imported_from=os.path.abspath(src))
        install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if ema and not ema_in_file:
        log.info("%s has no EMA weights (model_ema.*): imported the raw UNet weights", src)
    return summary
