"""CLIP image–image score: cosine similarity of the generated and ground-truth images' CLIP image
embeddings, ×100 (transformers `CLIPModel`, ViT-L/14 by default; a folder or a cached hub id).

Preprocessing as the authors': the whole image resized (bicubic, aspect ratio not kept, no crop) to
the model's input size, then CLIP's normalisation (mean/std from the folder's processor config).
Generated and reference images go through the model in one batch; reference embeddings are kept
per key, so further generated sets (the ablation table) only embed their own images.
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
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def pixels(self, images):
        """PIL RGB images → normalised B×3×S×S (PIL bicubic resize of the whole image to S×S)."""
        import numpy as np
        import torch
        from PIL import Image

        arr = np.stack([np.asarray(im.resize((self.size, self.size), Image.BICUBIC), dtype=np.float32) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
        return ((x - self.mean) / self.std).to(self.device)

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

        todo = [i for i, k in enumerate(batch.keys) if k not in self._ref]
        with torch.inference_mode():
            feats = self.clip.image_features(list(batch.generated) + [batch.reference[i] for i in todo])
        gen, new_ref = feats[: len(batch)], feats[len(batch):]
        for i, f in zip(todo, new_ref):
            self._ref[batch.keys[i]] = f
        ref = torch.stack([self._ref[k] for k in batch.keys])
        return {"clip": (100.0 * (gen * ref).sum(-1)).tolist()}

    def settings(self) -> dict:
        return {"model": self.clip.name, "preprocessing": f"bicubic resize of the whole image to {self.clip.size}, CLIP normalisation",
                "scale": "cosine x 100"}
