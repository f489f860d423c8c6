"""Generate-first evaluation: produce a folder of generated images keyed by sample key.

`generate_folder(shards, model, folder, ...)` writes `folder/{key}.png` for every valid sample of
`shards` (the input frame `input.jpg`, the prompt = the description `enriched.txt`, else
`curated.txt`, else the label, and — for models that need them — the VLLM embeddings `vllm_img.npy` /
`vllm_txt.npy` from the shards, or computed with `--vllm`), then `runner.evaluate` scores that folder
exactly as `--generated DIR` would. Rerunning skips keys whose image exists (each PNG is written to
a temp name and renamed, so a finished file is never half-written).

Everything here is done except the call into `LegoPipeline` (`_pipeline_batch`), which belongs
to the diffusion issue.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from lego_core.errors import LegoError

log = logging.getLogger(__name__)


@dataclass
class GenerateOptions:
    steps: int = 100
    guidance: float = 7.5
    image_guidance: float = 1.5
    size: int = 256
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"


def prompt_of(sample: dict) -> str:
    from lego_core.data import schema

    for name in (schema.ENRICHED, schema.CURATED):
        if sample.get(name):
            t = schema.decode_text(sample[name]).strip()
            if t:
                return t
    return schema.decode_meta(sample[schema.META]).label


def generate_folder(shards, model: str, folder: str, *, vllm: str | None = None, progress: bool = False,
                    **options) -> str:
    """Write `folder/{key}.png` for every sample of `shards` that has none yet; return `folder`."""
    from lego_core.data.shards import SkipStats, iter_samples

    opts = GenerateOptions(**options)
    os.makedirs(folder, exist_ok=True)
    done = {os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".png")}
    stats = SkipStats()
    pipe = None
    batch: list[dict] = []
    for sample in iter_samples(shards, stats=stats):
        if sample["__key__"] in done:
            continue
        batch.append(sample)
        if len(batch) == opts.batch_size:
            pipe = pipe or _load_pipeline(model, vllm, opts)
            _write(folder, batch, _pipeline_batch(pipe, batch, opts))
            batch = []
    if batch:
        pipe = pipe or _load_pipeline(model, vllm, opts)
        _write(folder, batch, _pipeline_batch(pipe, batch, opts))
    if stats.total:
        log.warning("generation: %s", stats.summary())
    return folder


def _write(folder: str, samples: list[dict], images) -> None:
    for s, im in zip(samples, images):
        final = os.path.join(folder, s["__key__"] + ".png")
        tmp = final + ".tmp"
        im.save(tmp, format="PNG")
        os.replace(tmp, final)


def _load_pipeline(model: str, vllm: str | None, opts: GenerateOptions):
    """LEAD: load `LegoPipeline.from_pretrained(model)` (and the VLLM from `vllm` when the model
    needs embeddings the shards lack) on `opts.device`."""
    raise LegoError("generate-first evaluation (--model) needs LegoPipeline, which is not wired in yet; "
                    "generate with `lego generate --batch` and use --generated DIR --reference SHARDS")


def _pipeline_batch(pipe, samples: list[dict], opts: GenerateOptions):
    """LEAD: one PIL image per sample, at the input frame's size: `pipe(prompt=[prompt_of(s)...],
    image=[input.jpg...], num_inference_steps=opts.steps, guidance_scale=opts.guidance,
    image_guidance_scale=opts.image_guidance, generator=torch.Generator().manual_seed(opts.seed),
    vllm_image_embeds=..., vllm_text_embeds=...)`."""
    raise LegoError("generate-first evaluation is not wired to LegoPipeline yet")
