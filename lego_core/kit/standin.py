"""Stand-in VLLM embeddings: H_i and H_t without a LLaVA, for tests that train the diffusion model.

Tuning and running a LLaVA takes minutes; a test of whether the diffusion model *learns* needs
embeddings that carry what the real ones carry — the picture for H_i, the description's words for
H_t — so that σ, μ and π are trained and used as with a VLLM. Both are fixed random projections,
deterministic in their inputs:

- H_i: the image cut into a grid of patches (as CLIP does), each patch's pixels projected to
  `dim` by one fixed Gaussian matrix, plus a fixed code per patch position: M = grid² rows.
- H_t: one row per word of the description, a fixed Gaussian vector per word (seeded by the word)
  plus a fixed code per position: n = number of words (≤ 77).
"""

from __future__ import annotations

import hashlib

import numpy as np


def _gaussian(tag: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def standin_image_embeds(image, dim: int, grid: int = 4, patch: int = 8) -> np.ndarray:
    """(grid², dim) float16 from a PIL image or HxWx3 uint8 array."""
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    side = grid * patch
    a = np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), np.float32) / 127.5 - 1.0
    patches = a.reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, -1)
    proj = _gaussian(f"standin-img-{patch}-{dim}", (patches.shape[1], dim)) / np.sqrt(patches.shape[1])
    pos = 0.5 * _gaussian(f"standin-img-pos-{grid}-{dim}", (grid * grid, dim))
    return (patches @ proj + pos).astype(np.float16)


def standin_text_embeds(text: str, dim: int, max_tokens: int = 77) -> np.ndarray:
    """(n, dim) float16: a fixed vector per word of `text` plus a position code."""
    words = [w.strip(".,;:!?\"'").lower() for w in text.split()][:max_tokens] or [""]
    rows = np.stack([_gaussian(f"standin-word-{w}-{dim}", (dim,)) for w in words])
    pos = 0.3 * _gaussian(f"standin-txt-pos-{dim}", (max_tokens, dim))[: len(words)]
    return (rows + pos).astype(np.float16)


def add_standin_embeddings(sample: dict, dim: int) -> dict:
    """A shard sample with `enriched.txt` (= its curated description, else its label), and stand-in
    `vllm_img.npy` / `vllm_txt.npy` added: what `lego enrich` adds, without a VLLM."""
    import io
    import json

    from PIL import Image

    from lego_core.data.schema import CURATED, ENRICHED, INPUT, META, VLLM_IMG, VLLM_TXT

    text = sample[CURATED].decode() if sample.get(CURATED) else json.loads(sample[META])["label"]
    with Image.open(io.BytesIO(sample[INPUT])) as im:
        h_i = standin_image_embeds(im, dim)
    out = dict(sample)
    out[ENRICHED] = text.encode()
    for field, arr in ((VLLM_IMG, h_i), (VLLM_TXT, standin_text_embeds(text, dim))):
        buf = io.BytesIO()
        np.save(buf, arr)
        out[field] = buf.getvalue()
    return out
