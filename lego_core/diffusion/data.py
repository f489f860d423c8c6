"""Training samples for the diffusion model: shards -> tensors, in DataLoader workers.

Stages are module-level classes so the pipeline pickles into spawned workers.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch
from PIL import Image

from lego_core.data.schema import (CURATED, ENRICHED, INPUT, INPUT_LATENT, META, TARGET, TARGET_LATENT, VLLM_IMG,
                                    VLLM_TXT)
from lego_core.diffusion.conditioner import uses_image_embeds, uses_text_embeds
from lego_core.errors import BadInput


def required_fields(conditioning: str, cached_latents: bool = False) -> list[str]:
    fields = [META]
    fields += [INPUT_LATENT, TARGET_LATENT] if cached_latents else [INPUT, TARGET]
    if conditioning not in ("label", "description"):
        fields.append(ENRICHED)
    if uses_image_embeds(conditioning):
        fields.append(VLLM_IMG)
    if uses_text_embeds(conditioning):
        fields.append(VLLM_TXT)
    return fields


def description_of(sample: dict, conditioning: str) -> str:
    """R for a sample: the label for a "label" model, else the VLLM's enriched description (the
    authors' `llava_forecast_finetune`), else the curated one, else the label. Training and
    generate-first evaluation both use this, so an ablation row is evaluated on what it trained on."""
    meta = json.loads(sample[META])
    if conditioning != "label":
        for field in (ENRICHED, CURATED):
            text = sample[field].decode("utf-8").strip() if sample.get(field) else ""
            if text:
                return text
    return meta["label"]


def image_tensor(data: bytes, resolution: int) -> torch.Tensor:
    """JPEG -> (3, R, R) in [-1, 1]: the whole frame resized to a square, as the authors train."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class DecodeSample:
    """Raw sample -> dict of tensors (unflipped: `flip_batch` mirrors them in the trainer)."""

    def __init__(self, conditioning: str, resolution: int = 256, cached_latents: bool = False,
                 max_text_tokens: int = 77):
        self.conditioning, self.resolution = conditioning, resolution
        self.cached, self.max_text_tokens = cached_latents, max_text_tokens

    def __call__(self, sample: dict) -> dict:
        out = {"key": sample["__key__"], "text": description_of(sample, self.conditioning)}
        if self.cached:
            out["input_latent"] = torch.from_numpy(np.load(io.BytesIO(sample[INPUT_LATENT])).astype(np.float32))
            out["target_latent"] = torch.from_numpy(np.load(io.BytesIO(sample[TARGET_LATENT])).astype(np.float32))
        else:
            out["input"] = image_tensor(sample[INPUT], self.resolution)
            out["target"] = image_tensor(sample[TARGET], self.resolution)
        if uses_image_embeds(self.conditioning):
            out["vllm_img"] = torch.from_numpy(np.load(io.BytesIO(sample[VLLM_IMG])).astype(np.float32))
        if uses_text_embeds(self.conditioning):
            h_t = np.load(io.BytesIO(sample[VLLM_TXT]))[: self.max_text_tokens]
            out["vllm_txt"] = torch.from_numpy(h_t.astype(np.float32))
        return out


def flip_coin(seed: int, epoch: int, key: str) -> bool:
    """Whether a sample is mirrored in an epoch: fixed by (seed, epoch, key), so a resumed run, any
    number of DataLoader workers and a rerun all flip exactly as one uninterrupted run."""
    return hashlib.sha256(f"lego-flip-{seed}-{epoch}-{key}".encode()).digest()[0] < 128


def flip_batch(batch: dict, seed: int, epoch: int) -> dict:
    """Mirror (horizontally) the samples `flip_coin` picks: X and Y together, pixels or latents."""
    rows = [i for i, key in enumerate(batch["key"]) if flip_coin(seed, epoch, key)]
    if rows:
        for name in ("input", "target", "input_latent", "target_latent"):
            if name in batch:
                batch[name][rows] = torch.flip(batch[name][rows], dims=[-1])
    return batch


class DecodeStage:
    """Pipeline stage: decode every raw sample; one that fails (a corrupt JPEG) is skipped and logged."""

    def __init__(self, decode: DecodeSample):
        self.decode = decode

    def __call__(self, src):
        import logging

        for sample in src:
            try:
                yield self.decode(sample)
            except Exception as e:  # noqa: BLE001 - one bad sample never stops training
                logging.getLogger("lego.train").warning("skipped %s: %s", sample.get("__key__"), e)


def collate(samples: list[dict]) -> dict:
    batch = {"key": [s["key"] for s in samples], "text": [s["text"] for s in samples]}
    for k in ("input", "target", "input_latent", "target_latent", "vllm_img"):
        if k in samples[0]:
            batch[k] = torch.stack([s[k] for s in samples])
    if "vllm_txt" in samples[0]:
        batch["vllm_txt"] = [s["vllm_txt"] for s in samples]
    return batch


def check_shards_have(urls: list[str], conditioning: str, cached_latents: bool = False) -> dict:
    """Fail at start, with one line, when the shards lack what the conditioning needs; returns
    the first sample (the VLLM width is read from it)."""
    from lego_core.data.shards import iter_samples

    need = required_fields(conditioning, cached_latents)
    first = next(iter(iter_samples(urls[:1], validate=False)), None)
    if first is None:
        raise BadInput(f"no samples in {urls[0]}")
    missing = [f for f in need if f not in first]
    if missing:
        hint = {ENRICHED: "run `lego enrich`", VLLM_IMG: "run `lego enrich`", VLLM_TXT: "run `lego enrich`",
                INPUT_LATENT: "run with --cache-latents", TARGET_LATENT: "run with --cache-latents"}
        how = "; ".join(sorted({hint.get(f, "run `lego extract`") for f in missing}))
        raise BadInput(f"{urls[0]}: samples lack {', '.join(missing)}, needed by {conditioning} conditioning ({how})")
    return first


def vllm_width_of(sample: dict) -> int | None:
    for field in (VLLM_IMG, VLLM_TXT):
        if field in sample:
            return int(np.load(io.BytesIO(sample[field])).shape[-1])
    return None
