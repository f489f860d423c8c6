"""EgoVLP scores, the paper's primary metrics: the generated and ground-truth frames compared in the
embedding space of EgoVLP's video encoder, each frame turned into a short clip.

- `egovlp`: the image repeated T times (T = 4 with egovlp.pth, Ego4D; 16 with epic_mir_plus.pth,
  EPIC-KITCHENS) — cosine similarity of the generated clip's and the ground truth's embeddings ×100.
- `egovlp_plus` (`--metrics egovlp+`): the clip is the input frame X then the image, half and half —
  [X, X, Y, Y] for 4 frames, 8 + 8 for 16 — for the generated image and likewise [X, X, Ygt, Ygt]
  for the ground truth, so it scores the state change from the input frame. Needs the input frame
  (shards' input.jpg); a sample without one gets no value.
- The EgoVLP text score (the BLIP score with `--blip-text-encoder egovlp`, the authors' variant) is
  `EgoVLPText`: the BLIP caption and the description embedded with EgoVLP's DistilBERT branch and
  text projection, cosine ×100 (see `blip_score`).

Preprocessing as the authors' (LEGO metrics/all_metrics_in_one.py, run_egovlp): each frame to [0,1],
Resize(224) of the shorter side (torchvision's tensor resize of their version: bilinear, no
antialiasing), CenterCrop(224), ImageNet mean/std. Frames are preprocessed one by one, so the input
frame and the image may differ in size. Ground-truth embeddings are kept per key across generated
sets. Clips go through the model in batches (the authors: one pair at a time).
"""

from __future__ import annotations

import logging
import os

from lego_core.errors import BadInput

from .common import Batch, Metric, Shared, torch_cache_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TOKENIZER = "distilbert-base-uncased"
CLIPS_PER_FORWARD = 16


def default_frames(checkpoint: str | None) -> int:
    """The clip length the authors used with this checkpoint: 16 for the EPIC-KITCHENS one
    (epic_mir_plus.pth, or any file named epic*), else 4 (egovlp.pth, Ego4D)."""
    return 16 if checkpoint and "epic" in os.path.basename(str(checkpoint)).lower() else 4


def default_checkpoint_name(frames: int | None) -> str:
    return "epic_mir_plus.pth" if frames == 16 else "egovlp.pth"


def find_checkpoint(explicit: str | None, frames: int | None = None) -> str:
    """The EgoVLP checkpoint to load: `explicit` (must exist), else egovlp.pth (epic_mir_plus.pth when
    frames = 16) in the torch cache ($TORCH_HOME/hub/checkpoints). Missing → `BadInput`, one line
    naming the file, where it was looked for and where the authors publish it."""
    from .egovlp.load import where_published

    if explicit:
        path = os.path.expanduser(str(explicit))
        if not os.path.isfile(path):
            raise BadInput(f"EgoVLP: checkpoint {explicit} does not exist (--egovlp); "
                           f"{where_published(os.path.basename(path))}")
        return path
    name = default_checkpoint_name(frames)
    path = torch_cache_file(name)
    if not os.path.isfile(path):
        raise BadInput(f"EgoVLP: checkpoint {name} not found in the torch cache ({path}) and nothing is downloaded; "
                       f"{where_published(name)}; put it there or pass --egovlp FILE")
    return path


class EgoVLPEncoder:
    """An EgoVLP checkpoint loaded once, with the authors' frame preprocessing."""

    def __init__(self, checkpoint: str, frames: int, device: str = "cpu"):
        from .egovlp.load import load_egovlp

        if frames < 1:
            raise BadInput(f"--egovlp-frames must be at least 1 (got {frames})")
        self.checkpoint, self.frames, self.device = checkpoint, int(frames), device
        self.model = load_egovlp(checkpoint, frames=self.frames, device=device, text=True)
        self.size = self.model.video_model.img_size
        self._tokenizers: dict[str, object] = {}

    def frame(self, im):
        """PIL RGB → normalised 3×S×S float tensor (CPU): ToTensor, Resize(S) (bilinear, no
        antialiasing, the shorter side to S), CenterCrop(S), ImageNet normalisation."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        s = self.size
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        h, w = x.shape[1:]
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0]
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        x = x[:, top:top + s, left:left + s]
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std

    def embed_clips(self, clips):
        """[T×3×S×S] → L2-normalised N×D video embeddings (on the device)."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(clips), CLIPS_PER_FORWARD):
                video = torch.stack(clips[i:i + CLIPS_PER_FORWARD]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.compute_video(video).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim, device=self.device)

    def tokenizer(self, name: str):
        from transformers import AutoTokenizer

        from .common import load_pretrained

        if name not in self._tokenizers:
            self._tokenizers[name] = load_pretrained(AutoTokenizer, name, "EgoVLP text tokenizer (DistilBERT)",
                                                     "--egovlp-tokenizer")
        return self._tokenizers[name]


def shared_egovlp(shared: Shared, checkpoint: str, frames: int, device: str) -> EgoVLPEncoder:
    return shared.get(("egovlp", os.path.abspath(checkpoint), int(frames), device),
                      lambda: EgoVLPEncoder(checkpoint, frames, device))


class EgoVLPText:
    """EgoVLP's text branch as a text embedder: DistilBERT tokens (truncated to the tokenizer's
    maximum, 512), the [CLS] hidden state, ReLU + Linear to 256-d, L2-normalised."""

    def __init__(self, encoder: EgoVLPEncoder, tokenizer: str = DEFAULT_TOKENIZER):
        self.encoder, self.tokenizer_name = encoder, tokenizer
        self.tokenizer = encoder.tokenizer(tokenizer)
        if not encoder.model.has_text:
            raise BadInput(f"EgoVLP: {encoder.checkpoint} has no text branch")

    def __call__(self, texts) -> "object":
        import torch

        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            feats = self.encoder.model.compute_text(tok["input_ids"].to(self.encoder.device),
                                                    tok["attention_mask"].to(self.encoder.device))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def describe(self) -> str:
        return f"EgoVLP text branch ({self.encoder.checkpoint}, tokenizer {self.tokenizer_name})"


class EgoVLPScore(Metric):
    """EgoVLP: the image repeated T times as a clip; cosine with the ground truth's clip ×100."""

    name = "egovlp"
    columns = ("egovlp",)
    higher_is_better = {"egovlp": True}
    plus = False

    def __init__(self, checkpoint: str | None = None, frames: int | None = None, device: str = "cpu",
                 shared: Shared | None = None):
        frames = int(frames) if frames else default_frames(checkpoint)
        if self.plus and frames % 2:
            raise BadInput(f"--egovlp-frames {frames}: EgoVLP+ splits the clip in two halves; give an even number")
        path = find_checkpoint(checkpoint, frames)
        self.enc = shared_egovlp(shared or Shared(), path, frames, device)
        self._ref: dict[str, object] = {}

    def _clip(self, image, first=None):
        import torch

        t = self.enc.frames
        frames = [image] * t if first is None else [first] * (t // 2) + [image] * (t - t // 2)
        return torch.stack(frames)

    def update(self, batch: Batch) -> dict[str, list]:
        import torch

        n = len(batch)
        firsts: list = [None] * n
        if self.plus:
            inputs = list(batch.inputs) + [None] * (n - len(batch.inputs))
            firsts = [self.enc.frame(x) if x is not None else None for x in inputs]
        ok = [i for i in range(n) if not self.plus or firsts[i] is not None]
        todo = [i for i in ok if batch.keys[i] not in self._ref]
        clips = [self._clip(self.enc.frame(batch.generated[i]), firsts[i]) for i in ok]
        clips += [self._clip(self.enc.frame(batch.reference[i]), firsts[i]) for i in todo]
        feats = self.enc.embed_clips(clips)
        gen, new_ref = feats[: len(ok)], feats[len(ok):]
        for i, f in zip(todo, new_ref):
            self._ref[batch.keys[i]] = f
        scores: list = [None] * n
        if ok:
            ref = torch.stack([self._ref[batch.keys[i]] for i in ok])
            for i, v in zip(ok, (100.0 * (gen * ref).sum(-1)).tolist()):
                scores[i] = v
        return {self.columns[0]: scores}

    def settings(self) -> dict:
        t = self.enc.frames
        clip = (f"[X]*{t // 2} + [Y]*{t - t // 2} (X the input frame)" if self.plus else f"[Y]*{t}")
        s = self.enc.size
        return {"checkpoint": self.enc.checkpoint, "frames": t, "clip": clip,
                "preprocessing": f"Resize({s}, bilinear, no antialias) + CenterCrop({s}) + ImageNet normalisation",
                "scale": "cosine x 100"}


class EgoVLPPlusScore(EgoVLPScore):
    """EgoVLP+: clips [X…, Y…] (input frame, then the image) for the generated and ground-truth
    images; cosine ×100. Samples without an input frame get no value."""

    name = "egovlp+"
    columns = ("egovlp_plus",)
    higher_is_better = {"egovlp_plus": True}
    needs_input = True
    plus = True
