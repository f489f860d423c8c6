"""BLIP score (the paper's BLIP-B / BLIP-L): caption the generated image with a BLIP captioning
model (transformers `BlipForConditionalGeneration`), prompt "a picture of", beam search with 3
beams, length 5–20 tokens (BLIP's own captioning settings), the prompt stripped from the caption as
BLIP's code does; then the cosine similarity (×100) between the caption and the sample's
description, both embedded with the CLIP text encoder (`--clip-model`), as the paper states. The
authors' code used EgoVLP's text encoder instead: `--blip-text-encoder egovlp` (text_encoder="egovlp")
embeds both with EgoVLP's DistilBERT branch and text projection (`egovlp_score.EgoVLPText`), from the
`--egovlp` checkpoint and the `--egovlp-tokenizer` (distilbert-base-uncased) tokenizer.

Several BLIP models may be given (default: base and large); each gives a column `blip_TAG`
(`blip_b`, `blip_l` for the defaults) and its captions in `blip_TAG_caption`. Captions are generated
in batches; description embeddings are kept per key across generated sets.
"""

from __future__ import annotations

import os

from .clip_score import DEFAULT_CLIP, shared_clip
from .common import Batch, Metric, Shared, clip_text_features, load_pretrained

DEFAULT_BLIP = ("b=Salesforce/blip-image-captioning-base", "l=Salesforce/blip-image-captioning-large")
PROMPT = "a picture of"


def parse_blip_models(specs) -> list[tuple[str, str]]:
    """["TAG=PATH" or "PATH", ...] → [(tag, path)]. Without a tag: "b" / "l" when the name holds
    "base" / "large", else the folder's base name."""
    import re

    from lego_core.errors import BadInput

    out: list[tuple[str, str]] = []
    for spec in specs:
        tag, sep, path = spec.partition("=")
        if not sep or "/" in tag or os.sep in tag:
            path = spec
            base = os.path.basename(os.path.normpath(spec)).lower()
            tag = "b" if "base" in base else "l" if "large" in base else base
        tag = re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_") or "model"
        if any(t == tag for t, _ in out):
            raise BadInput(f"--blip-model: two models are tagged '{tag}'; name them TAG=PATH")
        out.append((tag, path))
    return out


class BlipCaptioner:
    def __init__(self, name: str, device: str = "cpu", prompt: str = PROMPT, num_beams: int = 3,
                 min_length: int = 5, max_length: int = 20):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.name, self.device = name, device
        self.prompt, self.num_beams, self.min_length, self.max_length = prompt, num_beams, min_length, max_length
        self.model = load_pretrained(BlipForConditionalGeneration, name, "BLIP model", "--blip-model").to(device).eval()
        self.processor = load_pretrained(BlipProcessor, name, "BLIP processor", "--blip-model")

    def caption(self, images) -> list[str]:
        import torch

        inputs = self.processor(images=list(images), text=[self.prompt] * len(images),
                                return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"], num_beams=self.num_beams, min_length=self.min_length,
                max_length=self.max_length, do_sample=False,
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [strip_prompt(t, self.prompt) for t in texts]


def strip_prompt(caption: str, prompt: str) -> str:
    c = caption.strip()
    if prompt and c.lower().startswith(prompt.lower()):
        c = c[len(prompt):]
    return c.strip()


class BlipScore(Metric):
    name = "blip"
    needs_description = True

    def __init__(self, models=DEFAULT_BLIP, clip_model: str = DEFAULT_CLIP, device: str = "cpu",
                 shared: Shared | None = None, prompt: str = PROMPT, num_beams: int = 3, min_length: int = 5,
                 max_length: int = 20, text_encoder: str = "clip", egovlp: str | None = None,
                 egovlp_frames: int | None = None, egovlp_tokenizer: str = "distilbert-base-uncased"):
        shared = shared or Shared()
        self.device = device
        self.tags = parse_blip_models(models)
        self.captioners = [
            (tag, shared.get(("blip", path, device, prompt, num_beams, min_length, max_length),
                             lambda p=path: BlipCaptioner(p, device, prompt, num_beams, min_length, max_length)))
            for tag, path in self.tags
        ]
        self.text_encoder = text_encoder
        if text_encoder == "egovlp":
            from .egovlp_score import EgoVLPText, default_frames, find_checkpoint, shared_egovlp

            frames = egovlp_frames or default_frames(egovlp)
            enc = shared_egovlp(shared, find_checkpoint(egovlp, frames), frames, device)
            self.clip, self.egovlp_text = None, EgoVLPText(enc, egovlp_tokenizer)
        elif text_encoder == "clip":
            self.clip, self.egovlp_text = shared_clip(shared, clip_model, device), None
        else:
            from lego_core.errors import BadInput

            raise BadInput(f"--blip-text-encoder: {text_encoder!r}; want clip or egovlp")
        self.columns = tuple(f"blip_{t}" for t, _ in self.tags)
        self.text_columns = tuple(f"blip_{t}_caption" for t, _ in self.tags)
        self.higher_is_better = {c: True for c in self.columns}
        self._desc: dict[str, object] = {}

    def _embed(self, texts):
        import torch

        if self.egovlp_text is not None:
            return self.egovlp_text(texts)
        with torch.inference_mode():
            return clip_text_features(self.clip.model, self.clip.tokenizer, texts, self.device)

    def update(self, batch: Batch) -> dict[str, list]:
        import torch

        out: dict[str, list] = {}
        have = [i for i, d in enumerate(batch.descriptions) if d]
        todo = [i for i in have if batch.keys[i] not in self._desc]
        if todo:
            for i, f in zip(todo, self._embed([batch.descriptions[i] for i in todo])):
                self._desc[batch.keys[i]] = f
        for (tag, cap), col, tcol in zip(self.captioners, self.columns, self.text_columns):
            captions = cap.caption(batch.generated)
            scores: list = [None] * len(batch)
            if have:
                c = self._embed([captions[i] for i in have])
                d = torch.stack([self._desc[batch.keys[i]] for i in have])
                for i, v in zip(have, (100.0 * (c * d).sum(-1)).tolist()):
                    scores[i] = v
            out[col], out[tcol] = scores, captions
        return out

    def settings(self) -> dict:
        cap = self.captioners[0][1]
        return {"models": {f"blip_{t}": p for t, p in self.tags}, "prompt": cap.prompt, "num_beams": cap.num_beams,
                "min_length": cap.min_length, "max_length": cap.max_length,
                "text_encoder": self.egovlp_text.describe() if self.egovlp_text else f"CLIP ({self.clip.name})",
                "scale": "cosine x 100"}
