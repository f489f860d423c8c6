"""CompVis/LDM <-> diffusers parameter names, both ways.

The authors' diffusion checkpoints are CompVis `LatentDiffusion` state dicts (the layout of
Stable Diffusion 1.x and InstructPix2Pix):

    model.diffusion_model.*        the UNet (openaimodel.UNetModel)
    model_ema.<name without dots>  LitEma's copy of the UNet: "model_ema." + the UNet name relative
                                   to `model.` with every "." removed ("diffusion_modelinput_blocks00weight")
    first_stage_model.*            the VAE (taming AutoencoderKL)
    cond_stage_model.transformer.* the CLIP text encoder (a transformers CLIPTextModel, so its names
                                   already match; very old files lack the "text_model." level)
    projection_img.*, projection_txt.*, self_attn_mix.*   LEGO's conditioner (names as ours)

The maps are generated from the diffusers models' configs (layers per block, which blocks have
attention), so they hold for SD-1.5's size and for the tiny test models alike: every diffusers
name has exactly one CompVis name (`unet_to_compvis`, `vae_to_compvis`), and the importer reads the
inverse. Only the VAE's mid-block attention changes shape: CompVis uses 1x1 convolutions
([C, C, 1, 1]) where diffusers uses linear layers ([C, C]).
"""

from __future__ import annotations

import re
from typing import Mapping

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
CONDITIONER_PREFIXES = ("projection_img.", "projection_txt.", "self_attn_mix.")
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

# UNet ResBlock: diffusers name -> CompVis name (inside one block)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# VAE ResnetBlock and AttnBlock
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ema_name(compvis_unet_key: str) -> str:
    """LitEma's buffer name for a UNet weight: `model_ema.` + the name under `model.`, dots removed.

    "model.diffusion_model.input_blocks.0.0.weight" -> "model_ema.diffusion_modelinput_blocks00weight".
    """
    if not compvis_unet_key.startswith("model."):
        raise ValueError(f"not a CompVis UNet key: {compvis_unet_key}")
    return EMA_PREFIX + compvis_unet_key[len("model."):].replace(".", "")


def _rename(inner: str, table: Mapping[str, str]) -> str:
    for src, dst in table.items():
        if inner == src or inner.startswith(src + "."):
            return dst + inner[len(src):]
    raise KeyError(inner)


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type or block_type.startswith("Attn")


def unet_to_compvis(key: str, config: Mapping) -> str:
    """The CompVis name (under `model.diffusion_model.`) of one diffusers UNet2DConditionModel key."""
    layers = int(config["layers_per_block"])
    n = len(config["block_out_channels"])
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    simple = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.attentions.0": "middle_block.1",
    }
    for src, dst in simple.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    m = re.match(r"mid_block\.resnets\.(\d)\.(.+)$", key)
    if m:
        return f"middle_block.{0 if m.group(1) == '0' else 2}." + _rename(m.group(2), _UNET_RESNET)
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if kind == "downsamplers":
            k = 1 + i * (layers + 1) + layers
            if not rest.startswith("conv."):
                raise KeyError(key)
            return f"input_blocks.{k}.0.op." + rest[len("conv."):]
        k = 1 + i * (layers + 1) + j
        if kind == "resnets":
            return f"input_blocks.{k}.0." + _rename(rest, _UNET_RESNET)
        return f"input_blocks.{k}.1." + rest
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if kind == "upsamplers":
            k = i * (layers + 1) + layers   # the last layer of the block carries the upsampler
            slot = 2 if _has_attention(up_types[i]) else 1
            if not rest.startswith("conv."):
                raise KeyError(key)
            return f"output_blocks.{k}.{slot}." + rest
        k = i * (layers + 1) + j
        if kind == "resnets":
            return f"output_blocks.{k}.0." + _rename(rest, _UNET_RESNET)
        return f"output_blocks.{k}.1." + rest
    raise KeyError(f"no CompVis name for UNet key {key} ({n} blocks, {down_types})")


def vae_to_compvis(key: str, config: Mapping) -> str:
    """The CompVis name (under `first_stage_model.`) of one diffusers AutoencoderKL key."""
    n = len(config["block_out_channels"])
    for part in ("encoder", "decoder"):
        if not key.startswith(part + "."):
            continue
        rest = key[len(part) + 1:]
        for src, dst in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out")):
            if rest.startswith(src + "."):
                return f"{part}.{dst}" + rest[len(src):]
        m = re.match(r"mid_block\.resnets\.(\d)\.(.+)$", rest)
        if m:
            return f"{part}.mid.block_{int(m.group(1)) + 1}." + _rename(m.group(2), _VAE_RESNET)
        m = re.match(r"mid_block\.attentions\.0\.(.+)$", rest)
        if m:
            return f"{part}.mid.attn_1." + _rename(m.group(1), _VAE_ATTN)
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", rest)
        if m:
            direction, i, kind, j, inner = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
            level = i if direction == "down" else n - 1 - i   # the decoder's up blocks run in reverse
            if kind == "resnets":
                return f"{part}.{direction}.{level}.block.{j}." + _rename(inner, _VAE_RESNET)
            return f"{part}.{direction}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}." + inner
    for name in ("quant_conv", "post_quant_conv"):
        if key.startswith(name + "."):
            return key
    raise KeyError(f"no CompVis name for VAE key {key}")


def is_vae_attention_matrix(diffusers_key: str) -> bool:
    """Mid-block attention projections: [C, C] in diffusers, [C, C, 1, 1] in CompVis."""
    return ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(".weight") and any(
        f".{p}.weight" in diffusers_key for p in ("to_q", "to_k", "to_v", "to_out.0"))


def text_to_compvis(key: str) -> str:
    """The CompVis name (under `cond_stage_model.transformer.`) of a CLIPTextModel key.

    SD-1.x files hold `text_model.embeddings...` (transformers 4's CLIPTextModel layout); transformers
    5 names the same weights without the `text_model.` level, so it is added back here."""
    return key if key.startswith("text_model.") else "text_model." + key


def text_from_compvis(name: str) -> str:
    """A CLIP text weight's name without `cond_stage_model.transformer.` and without the
    `text_model.` level (older files have none; SD-1.x files have it): the common form."""
    if name.startswith(TEXT_PREFIX):
        name = name[len(TEXT_PREFIX):]
    return name[len("text_model."):] if name.startswith("text_model.") else name


# -- whole state dicts ---------------------------------------------------------------------------


def to_compvis(*, unet: Mapping, unet_config: Mapping, vae: Mapping, vae_config: Mapping, text_encoder: Mapping,
               conditioner: Mapping | None = None, ema_unet: Mapping | None = None) -> dict:
    """A CompVis/LDM state dict from diffusers state dicts (the inverse of the importer's map).

    `ema_unet`, when given, is written as LitEma buffers (`model_ema.<dot-less name>`, plus its
    `decay` and `num_updates`), as Lightning checkpoints of the authors hold it.
    """
    import torch

    out: dict = {}
    for k, v in unet.items():
        out[UNET_PREFIX + unet_to_compvis(k, unet_config)] = v
    if ema_unet is not None:
        for k, v in ema_unet.items():
            out[ema_name(UNET_PREFIX + unet_to_compvis(k, unet_config))] = v
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    for k, v in vae.items():
        if is_vae_attention_matrix(k):
            v = v.reshape(*v.shape, 1, 1)
        out[VAE_PREFIX + vae_to_compvis(k, vae_config)] = v
    for k, v in text_encoder.items():
        out[TEXT_PREFIX + text_to_compvis(k)] = v
    for k, v in (conditioner or {}).items():
        out[k] = v
    return out


def split_compvis(state: Mapping) -> dict[str, dict]:
    """Group a CompVis state dict by part: unet, ema, vae, text, conditioner, other (names kept)."""
    parts: dict[str, dict] = {"unet": {}, "ema": {}, "vae": {}, "text": {}, "conditioner": {}, "other": {}}
    for k, v in state.items():
        if k.startswith(UNET_PREFIX):
            parts["unet"][k] = v
        elif k.startswith(EMA_PREFIX):
            if k not in EMA_BOOKKEEPING:
                parts["ema"][k] = v
        elif k.startswith(VAE_PREFIX):
            parts["vae"][k] = v
        elif k.startswith("cond_stage_model."):
            parts["text"][k] = v
        elif k.startswith(CONDITIONER_PREFIXES):
            parts["conditioner"][k] = v
        else:
            parts["other"][k] = v
    return parts
