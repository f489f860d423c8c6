"""Generate-first evaluation: produce a folder of generated images keyed by sample key.

`generate_folder(shards, model, folder, ...)` writes `folder/{key}.png` for every valid sample of
`shards` through the one generation path (`lego_core.diffusion.generate.ActionFrameGenerator`,
which `lego generate` uses too). Each sample becomes a request: the input frame `input.jpg`, the
label as the action, the description the model was trained on (the label for a "label" model,
else `enriched.txt`, else `curated.txt`, else the label) and — for models that need them — the
VLLM embeddings `vllm_img.npy` / `vllm_txt.npy` from the shards, or computed with `--vllm`. Then
`runner.evaluate` scores that folder exactly as `--generated DIR` would. Rerunning skips keys whose
image exists (each PNG is written to a temp name and renamed, so a finished file is never
half-written).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lego_core.diffusion.generate import GenerateOptions

log = logging.getLogger(__name__)


def generate_folder(shards, model: str, folder: str, *, vllm: str | None = None, progress: bool = False,
                    **options) -> str:
    """Write `folder/{key}.png` for every sample of `shards` that has none yet; return `folder`.
    `options` are `GenerateOptions` fields (steps, size, seed, batch_size, dtype, ...)."""
    from lego_core.data.shards import SkipStats, iter_samples

    opts = GenerateOptions(**{"progress": False, **options})
    done = {os.path.splitext(f)[0] for f in os.listdir(folder) if f.endswith(".png")} if os.path.isdir(folder) else set()
    stats = SkipStats()
    generator = None
    batch: list[dict] = []
    # Streamed in chunks of batch_size samples, the models loaded once on the first chunk that needs them.
    for sample in iter_samples(shards, stats=stats):
        if sample["__key__"] in done:
            continue
        batch.append(sample)
        if len(batch) == opts.batch_size:
            generator = _write(folder, batch, generator or _generator(model, vllm, opts))
            batch = []
    if batch:
        _write(folder, batch, generator or _generator(model, vllm, opts))
    if stats.total:
        log.warning("generation: %s", stats.summary())
    os.makedirs(folder, exist_ok=True)       # only now: a refused option (exit 2) leaves no folder behind
    return folder


def _generator(model: str, vllm: str | None, opts: GenerateOptions):
    from lego_core.diffusion.generate import ActionFrameGenerator

    # The VLLM is kept (every chunk may need it); shards from `lego enrich` bring their own embeddings.
    return ActionFrameGenerator(model, vllm, opts, embeddings_given=True)


def _write(folder: str, samples: list[dict], generator):
    from lego_core.diffusion.generate import save_image

    for result in generator.run([sample_request(s, generator.conditioning) for s in samples]):
        save_image(result.images[0], Path(folder) / f"{result.key}.png")
    return generator


def sample_request(sample: dict, conditioning: str):
    """A shard sample as a generation request: its input frame, label, description and (when the
    shards have them, from `lego enrich`) VLLM embeddings."""
    import io

    import numpy as np
    from PIL import Image

    from lego_core.data import schema
    from lego_core.diffusion.data import description_of
    from lego_core.diffusion.generate import Request

    def array(field):
        return np.load(io.BytesIO(sample[field])).astype(np.float32) if field in sample else None

    return Request(image=Image.open(io.BytesIO(sample[schema.INPUT])).convert("RGB"),
                   prompt=schema.decode_meta(sample[schema.META]).label, key=sample["__key__"],
                   description=description_of(sample, conditioning),
                   image_embeds=array(schema.VLLM_IMG), text_embeds=array(schema.VLLM_TXT))
