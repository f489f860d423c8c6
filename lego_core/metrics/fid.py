"""FID: torchmetrics' FrechetInceptionDistance, fed whole batches (the authors fed one image at a time).

Features: InceptionV3 (torch-fidelity's port of the TF FID network, 2048-d pool features) with the
official weights from `--fid-weights FILE` or torch.hub's cache
($TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth); never downloaded. Or
`--fid-model DIR`: any transformers vision model folder whose pooled output are the features (a
tiny random one in tests; e.g. a DINOv2 or CLIP vision folder for an FD_DINOv2-style variant), with
the input size and normalisation from its preprocessor_config.json.

When several generated sets share the same reference keys (the ablation table), the reference
statistics are computed once and kept.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from .common import Batch, Metric, find_weights, load_pretrained

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE


def hf_feature_extractor(folder: str, device: str = "cpu"):
    """A module mapping uint8 B×3×H×W images to B×D features with a transformers model folder."""
    import torch
    from transformers import AutoModel

    model = load_pretrained(AutoModel, folder, "FID feature model", "--fid-model").to(device).eval()
    cfg_path = os.path.join(folder, "preprocessor_config.json")
    pre = json.load(open(cfg_path)) if os.path.isfile(cfg_path) else {}
    size = pre.get("size", {})
    size = (size.get("shortest_edge") or size.get("height") or getattr(model.config, "image_size", 224)
            if isinstance(size, dict) else size)
    mean = pre.get("image_mean", [0.485, 0.456, 0.406])
    std = pre.get("image_std", [0.229, 0.224, 0.225])

    class HFFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.size = int(size)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
            with torch.no_grad():
                self.num_features = int(self.forward(torch.zeros(1, 3, self.size, self.size, dtype=torch.uint8,
                                                                 device=device)).shape[-1])

        def forward(self, x):
            x = x.to(self.mean.device, torch.float32) / 255.0
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                                antialias=True)
            out = self.model(pixel_values=(x - self.mean) / self.std)
            feats = (out.pooler_output if getattr(out, "pooler_output", None) is not None
                     else out.last_hidden_state[:, 0])
            return feats.flatten(1)

    return HFFeatures()


def make_fid(weights: str | None = None, model: str | None = None, device: str = "cpu"):
    """A torchmetrics FrechetInceptionDistance (reset_real_features=False) on `device`."""
    import contextlib
    import io

    from torchmetrics.image.fid import FrechetInceptionDistance

    if model:
        fid = FrechetInceptionDistance(feature=hf_feature_extractor(model, device), reset_real_features=False)
    else:
        path = find_weights(weights, INCEPTION_FILE, "FID InceptionV3", "--fid-weights", INCEPTION_URL)
        with contextlib.redirect_stdout(io.StringIO()):
            fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path, reset_real_features=False)
    return fid.to(device)


class FID(Metric):
    name = "fid"
    set_columns = ("fid",)
    higher_is_better = {"fid": False}

    def __init__(self, weights: str | None = None, model: str | None = None, device: str = "cpu"):
        self.weights, self.model_name, self.device = weights, model, device
        self.fid = make_fid(weights, model, device)
        self._real_keys: frozenset | None = None
        self._need_real = True
        self._seen: list[str] = []

    def start(self, keys: Sequence[str]) -> None:
        keys = frozenset(keys)
        if keys == self._real_keys:
            self.fid.reset()  # keeps the reference statistics (reset_real_features=False)
            self._need_real = False
        else:
            self.fid.reset_real_features = True
            self.fid.reset()
            self.fid.reset_real_features = False
            self._real_keys, self._need_real = None, True
        self._seen = []

    def update(self, batch: Batch) -> dict[str, list]:
        import torch

        with torch.inference_mode():
            self._seen.extend(batch.keys)
            for _, gen, ref in batch.size_groups():
                if self._need_real:
                    self.fid.update(ref.to(self.device), real=True)
                self.fid.update(gen.to(self.device), real=False)
        return {}

    def finish(self) -> dict[str, dict]:
        n = int(self.fid.fake_features_num_samples)
        if self._need_real:  # the reference statistics now hold exactly these keys
            self._real_keys, self._need_real = frozenset(self._seen), False
        if n < 2:
            return {"fid": {"value": None, "n": n, "note": "FID needs at least 2 images"}}
        return {"fid": {"value": float(self.fid.compute()), "n": n}}

    def settings(self) -> dict:
        return {"features": f"transformers model {self.model_name}" if self.model_name else "InceptionV3 pool3 (2048)",
                "weights": self.weights or ("" if self.model_name else "torch cache")}
