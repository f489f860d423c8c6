"""CLIP image–image score: cosine similarity of the generated and ground-truth images' CLIP image
embeddings, ×100 (transformers `CLIPModel`, ViT-L/14 by default; a folder or a cached hub id).

Preprocessing as the authors' (metrics/clip_similarity.py): the whole image as a [0, 1] float
tensor resized with `F.interpolate(mode="bicubic", align_corners=False)` to the model's input size
(aspect ratio not kept, no crop, no antialiasing, no clamping or rounding to uint8), then CLIP's
normalisation (mean/std from the folder's processor config). Generated and reference images of one
size go through the model in one batch; reference embeddings are kept per key, so further
generated sets (the ablation table) only embed their own images.
"""

from __future__ import annotations

import os

from .common import Batch, Metric, Shared, clip_image_features, load_pretrained

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModel:
    """A CLIP model + tokenizer + the authors' image preprocessing, loaded once."""

    def __init__(self, name: str = DEFAULT_CLIP, device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.name, self.device = name, device
        self.model = load_pretrained(CLIPModel, name, "CLIP model", "--clip-model").to(device).eval()
        self.tokenizer = load_pretrained(AutoTokenizer, name, "CLIP tokenizer", "--clip-model")
        try:
            proc = CLIPImageProcessor.from_pretrained(name, local_files_only=True)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError):
            mean, std = CLIP_MEAN, CLIP_STD
        self.size = int(self.model.config.vision_config.image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def pixels(self, images):
        """uint8 B×3×H×W → normalised float B×3×S×S, the authors' way: torch bicubic on [0, 1]
        floats (unlike PIL's resize: no antialiasing, and over/undershoot is kept, not clamped)."""
        import torch.nn.functional as F

        x = images.to(self.device).float() / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    def image_features(self, images):
        return clip_image_features(self.model, self.pixels(images))


def shared_clip(shared: Shared, name: str, device: str) -> ClipModel:
    return shared.get(("clip", os.path.abspath(name) if os.path.isdir(name) else name, device),
                      lambda: ClipModel(name, device))


class ClipScore(Metric):
    name = "clip"
    columns = ("clip",)
    higher_is_better = {"clip": True}

    def __init__(self, model: str = DEFAULT_CLIP, device: str = "cpu", shared: Shared | None = None):
        self.clip = shared_clip(shared or Shared(), model, device)
        self._ref: dict[str, object] = {}  # key -> reference embedding (kept across generated sets)

    def update(self, batch: Batch) -> dict[str, list]:
        import torch

        gen: list = [None] * len(batch)
        with torch.inference_mode():
            for idx, g, r in batch.size_groups():  # one model call per image size
                todo = [j for j, i in enumerate(idx) if batch.keys[i] not in self._ref]
                feats = self.clip.image_features(torch.cat([g, r[todo]]))
                for i, f in zip(idx, feats[: len(idx)]):
                    gen[i] = f
                for j, f in zip(todo, feats[len(idx):]):
                    self._ref[batch.keys[idx[j]]] = f
        ref = torch.stack([self._ref[k] for k in batch.keys])
        return {"clip": (100.0 * (torch.stack(gen) * ref).sum(-1)).tolist()}

    def settings(self) -> dict:
        return {"model": self.clip.name,
                "preprocessing": f"bicubic F.interpolate (no antialias) of the whole [0, 1] image to {self.clip.size}, "
                                 "CLIP normalisation",
                "scale": "cosine x 100"}
