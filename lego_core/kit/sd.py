"""Tiny random Stable Diffusion folders (SD-1.5 and InstructPix2Pix layouts), built offline.

`make_tiny_sd(folder)` writes exactly what `StableDiffusionPipeline.save_pretrained` writes for
SD-1.5 — `model_index.json` (safety_checker / feature_extractor null), `unet/`, `vae/`,
`text_encoder/` (safetensors), `tokenizer/` (a real CLIP BPE tokenizer, 77 tokens), `scheduler/` —
so production code can load it whole (`StableDiffusionPipeline.from_pretrained(folder)`) or per
component (`UNet2DConditionModel.from_pretrained(folder, subfolder="unet")`, ...).
`make_tiny_instruct_pix2pix(folder)` is the same with an 8-channel UNet input, the layout LEGO's
diffusion model starts from.

Sizes: the default VAE has 4 blocks, so it downsamples ×8 like SD's; with the default
`sample_size=32` the pipeline works at 256×256 px (the paper's resolution) on 32×32 latents, and
the default UNet is still tiny (~1 M parameters). Pass `vae_block_out_channels=(32, 64)` for a
2-block ×2 VAE when even smaller images are wanted. `vae_scale_factor(...)` gives the factor;
image size = `sample_size * vae_scale_factor`. Bigger benchmark variants come from the same
keywords, e.g. `unet_block_out_channels=(64, 128, 256, 256), layers_per_block=2,
cross_attention_dim=256, vae_block_out_channels=(32, 64, 64, 64)`.

Weights are random but deterministic: each component is built right after
`torch.manual_seed(seed + k)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .tokenizers import make_clip_tokenizer, write_clip_vocab_files

# SD-1.5's noise schedule (runwayml/stable-diffusion-v1-5 scheduler_config.json).
SD15_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def vae_scale_factor(vae_block_out_channels: Sequence[int] = (8, 16, 16, 16)) -> int:
    """Pixel/latent ratio of an AutoencoderKL with these blocks (diffusers: 2 ** (blocks - 1))."""
    return 2 ** (len(vae_block_out_channels) - 1)


def _groups(channels: Sequence[int], cap: int = 32) -> int:
    """Largest GroupNorm group count ≤ cap dividing every channel count."""
    g = math.gcd(*channels)
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)


def tiny_sd_components(
    *,
    in_channels: int = 4,
    cross_attention_dim: int = 32,
    sample_size: int = 32,
    seed: int = 0,
    unet_block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention_heads: int = 2,
    vae_block_out_channels: Sequence[int] = (8, 16, 16, 16),
    text_layers: int = 2,
    tokenizer_vocab_size: int = 1000,
    scheduler: str = "pndm",
    prediction_type: str = "epsilon",
    vae_layers_per_block: int = 1,
    text_heads: int | None = None,
    text_vocab_size: int | None = None,
) -> dict:
    """The in-memory components (`unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler`).

    The UNet mirrors SD-1.5's block pattern: cross-attention in every down/up block but the
    lowest-resolution one (`CrossAttnDownBlock2D`… + `DownBlock2D`; `UpBlock2D` + `CrossAttnUpBlock2D`…).
    `attention_heads` is diffusers' (misnamed) `attention_head_dim`, i.e. the number of heads, as in
    SD-1.5's config (8 there). The text encoder is a CLIP text transformer of width
    `cross_attention_dim`, 77 positions, `quick_gelu` like SD's. `scheduler` is "pndm" (SD-1.5's
    config), "euler_a" (instruct-pix2pix's) or "ddpm", all with SD-1.5's betas. `prediction_type`
    is what the UNet predicts: "epsilon" as SD-1.5, or "v_prediction" as SD-2's 768-px models
    (training and sampling both follow the scheduler's setting).
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        EulerAncestralDiscreteScheduler,
        PNDMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(unet_block_out_channels)
    if n < 2:
        raise ValueError("unet_block_out_channels needs at least 2 blocks")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=tuple(unet_block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_heads,
        norm_num_groups=_groups(unet_block_out_channels),
    )
    torch.manual_seed(seed + 1)
    nv = len(vae_block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * nv,
        up_block_types=("UpDecoderBlock2D",) * nv,
        block_out_channels=tuple(vae_block_out_channels),
        layers_per_block=vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=_groups(vae_block_out_channels),
        sample_size=sample_size * vae_scale_factor(vae_block_out_channels),
    )
    tokenizer = make_clip_tokenizer(vocab_size=tokenizer_vocab_size)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(len(tokenizer), text_vocab_size or 0),
            hidden_size=cross_attention_dim,
            intermediate_size=4 * cross_attention_dim,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads or max(1, cross_attention_dim // 16),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=cross_attention_dim,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder.eval()
    sched_cls = {"pndm": PNDMScheduler, "euler_a": EulerAncestralDiscreteScheduler, "ddpm": DDPMScheduler}[scheduler]
    extra = (
        dict(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        if scheduler == "pndm"
        else dict(steps_offset=1)
        if scheduler == "euler_a"
        else dict(clip_sample=False)
    )
    sched = sched_cls(**SD15_BETAS, prediction_type=prediction_type, **extra)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sched)


def make_tiny_sd(
    folder: str | Path,
    *,
    in_channels: int = 4,
    cross_attention_dim: int = 32,
    sample_size: int = 32,
    seed: int = 0,
    unet_block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention_heads: int = 2,
    vae_block_out_channels: Sequence[int] = (8, 16, 16, 16),
    text_layers: int = 2,
    tokenizer_vocab_size: int = 1000,
    scheduler: str = "pndm",
    **sizes,
) -> Path:
    """Write a tiny random SD-1.5-layout pipeline folder and return its path.

    Loadable by `StableDiffusionPipeline.from_pretrained(folder)` and component by component. With
    `in_channels=8` the UNet takes InstructPix2Pix's concatenated input, but `model_index.json`
    still names `StableDiffusionPipeline`: use `make_tiny_instruct_pix2pix` for that layout.
    Keywords (and `**sizes`: `vae_layers_per_block`, `text_heads`, `text_vocab_size`, `prediction_type`): see
    `tiny_sd_components`.
    """
    from diffusers import StableDiffusionPipeline

    return _save(
        StableDiffusionPipeline,
        folder,
        tiny_sd_components(
            in_channels=in_channels, cross_attention_dim=cross_attention_dim, sample_size=sample_size,
            seed=seed, unet_block_out_channels=unet_block_out_channels, layers_per_block=layers_per_block,
            attention_heads=attention_heads, vae_block_out_channels=vae_block_out_channels,
            text_layers=text_layers, tokenizer_vocab_size=tokenizer_vocab_size, scheduler=scheduler, **sizes,
        ),
    )


def make_tiny_instruct_pix2pix(
    folder: str | Path,
    *,
    cross_attention_dim: int = 32,
    sample_size: int = 32,
    seed: int = 0,
    unet_block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    attention_heads: int = 2,
    vae_block_out_channels: Sequence[int] = (8, 16, 16, 16),
    text_layers: int = 2,
    tokenizer_vocab_size: int = 1000,
    scheduler: str = "euler_a",
    **sizes,
) -> Path:
    """Write a tiny random InstructPix2Pix-layout folder (UNet `in_channels=8`, Euler-ancestral
    scheduler as timbrooks/instruct-pix2pix ships) loadable by
    `StableDiffusionInstructPix2PixPipeline.from_pretrained(folder)`. Keywords: see `tiny_sd_components`.
    """
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return _save(
        StableDiffusionInstructPix2PixPipeline,
        folder,
        tiny_sd_components(
            in_channels=8, cross_attention_dim=cross_attention_dim, sample_size=sample_size, seed=seed,
            unet_block_out_channels=unet_block_out_channels, layers_per_block=layers_per_block,
            attention_heads=attention_heads, vae_block_out_channels=vae_block_out_channels,
            text_layers=text_layers, tokenizer_vocab_size=tokenizer_vocab_size, scheduler=scheduler, **sizes,
        ),
    )


# SD-1.5's real sizes (stable-diffusion-v1-5's unet/vae/text_encoder configs): UNet 860 M parameters
# (320, 640, 1280, 1280) x 2 layers, 8 heads, cross-attention 768; VAE 84 M (128, 256, 512, 512) x 2
# layers; CLIP ViT-L/14 text encoder 123 M (12 layers x 768, 12 heads, 49408 tokens).
SD15_SIZES = dict(unet_block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                  attention_heads=8, vae_block_out_channels=(128, 256, 512, 512), vae_layers_per_block=2,
                  text_layers=12, text_heads=12, text_vocab_size=49408, sample_size=64)


def make_sd15_random(folder: str | Path, *, instruct_pix2pix: bool = False, seed: int = 0) -> Path:
    """SD-1.5 at its real size with random weights (no download): every architecture and shape as
    the released model's, only the tokenizer is the kit's small one. `instruct_pix2pix=True` writes
    the InstructPix2Pix layout (8-channel UNet input, Euler-ancestral). About 4.3 GB in float32;
    building it takes ~5 GB of memory and a minute or two on 2 cores."""
    make = make_tiny_instruct_pix2pix if instruct_pix2pix else make_tiny_sd
    return make(folder, seed=seed, **SD15_SIZES)


def _save(pipeline_cls, folder: str | Path, components: dict) -> Path:
    """Save through the pipeline class itself so model_index.json is exactly what diffusers writes."""
    folder = Path(folder)
    pipe = pipeline_cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_clip_vocab_files(folder / "tokenizer", components["tokenizer"])
    return folder
