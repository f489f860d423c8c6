"""Generate-first evaluation: produce a folder of generated images keyed by sample key.

`generate_folder(shards, model, folder, ...)` writes `folder/{key}.png` (`.jpg` with the authors'
post-processing) for every valid sample of
`shards` through the one generation path (`lego_core.diffusion.generate.ActionFrameGenerator`,
which `lego generate` uses too). Each sample becomes a request: the input frame `input.jpg`, the
label as the action, the description the model was trained on (the label for a "label" model,
else `enriched.txt`, else `curated.txt`, else the label) and — for models that need them — the
VLLM embeddings `vllm_img.npy` / `vllm_txt.npy` from the shards, or computed with `--vllm`. Then
`lego_core.metrics.runner.evaluate` scores that folder exactly as `--generated DIR` would. Rerunning skips keys whose
image exists (each PNG is written to a temp name and renamed, so a finished file is never
half-written) when `provenance.json` says it came from the same model files and settings;
otherwise the folder's images are made again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lego_core.diffusion.generate import GenerateOptions

log = logging.getLogger(__name__)


def generate_folder(shards, model: str, folder: str, *, vllm: str | None = None, progress: bool = False,
                    **options) -> str:
    """Write `folder/{key}.png` (or .jpg) for every sample of `shards` that has none yet; return `folder`.
    `options` are `GenerateOptions` fields (steps, size, seed, batch_size, dtype, ...)."""
    from lego_core.data.shards import SkipStats, iter_samples

    opts = GenerateOptions(**{"progress": False, **options})
    done, begin = _images_of_the_same_run(folder, model, vllm, opts)
    stats = SkipStats()
    generator = None

    def start():
        g = _generator(model, vllm, opts)    # a refused option (exit 2) fails here: nothing touched yet
        begin()
        return g

    batch: list[dict] = []
    # Streamed in chunks of batch_size samples, the models loaded once on the first chunk that needs them.
    for sample in iter_samples(shards, stats=stats):
        if sample["__key__"] in done:
            continue
        batch.append(sample)
        if len(batch) == opts.batch_size:
            generator = _write(folder, batch, generator or start())
            batch = []
    if batch:
        generator = _write(folder, batch, generator or start())
    if generator is None:
        begin()                               # nothing to generate: the record still names these images
    if stats.total:
        log.warning("generation: %s", stats.summary())
    return folder


PROVENANCE = "provenance.json"


def provenance(model: str, vllm: str | None, opts: GenerateOptions) -> dict:
    """What decides the images in a generated folder: the models by their files, the sampling
    settings, the question the VLLM is asked, the post-processing (not batch size or device)."""
    from lego_core.provenance import model_identity

    post = ("the authors': resized back to the input's aspect ratio (bicubic, unclamped), each image stretched to its "
            "min..max, uint8, JPEG quality 75" if opts.authors_postprocess
            else "resized back to the input's aspect ratio (bicubic), PNG")
    return {"model": model_identity(model), "vllm": model_identity(vllm), "steps": opts.steps,
            "guidance": opts.guidance, "image_guidance": opts.image_guidance, "seed": opts.seed, "size": opts.size,
            "dtype": opts.dtype, "vllm_dtype": opts.vllm_dtype if vllm else None,
            "vllm_quantize": opts.vllm_quantize if vllm else None,
            "max_new_tokens": opts.max_new_tokens if vllm else None, "greedy": opts.greedy if vllm else None,
            "question": opts.question if vllm else None, "post_processing": post}


def _images_of_the_same_run(folder: str, model: str, vllm: str | None, opts: GenerateOptions):
    """(keys whose image in `folder` was made by this model with these settings, a function to
    call before writing any image). The images are trusted when `provenance.json` beside them
    matches; images from another model or other settings, or of unknown origin, are removed by
    that function (only `{key}.png` / `{key}.jpg` files: what this module writes) and made again."""
    from lego_core.device import looks_local
    from lego_core.errors import BadInput
    from lego_core.provenance import differences, read_record, write_record

    if looks_local(model) and not os.path.isdir(model):
        raise BadInput(f"model folder not found: {model} (train one with `lego train`, or pass a diffusers folder)")
    want = provenance(model, vllm, opts)
    ours = [f for f in os.listdir(folder) if f.endswith((".png", ".jpg"))] if os.path.isdir(folder) else []
    record = os.path.join(folder, PROVENANCE)
    before = read_record(record) if os.path.isfile(record) else None
    stale = ours if before != want else []

    def begin() -> None:
        if stale:
            why = "; ".join(differences(before, want)) if before else f"no {PROVENANCE} beside them"
            log.warning("%s: %d image(s) were generated differently (%s): generating them again", folder,
                        len(stale), why)
            for f in stale:
                os.remove(os.path.join(folder, f))
        os.makedirs(folder, exist_ok=True)
        write_record(record, want)

    return {os.path.splitext(f)[0] for f in ours if f not in stale and f.endswith(opts.suffix)}, begin


def _generator(model: str, vllm: str | None, opts: GenerateOptions):
    from lego_core.diffusion.generate import ActionFrameGenerator

    # The VLLM is kept (every chunk may need it); shards from `lego enrich` bring their own embeddings.
    return ActionFrameGenerator(model, vllm, opts, embeddings_given=True)


def _write(folder: str, samples: list[dict], generator):
    from lego_core.diffusion.generate import save_image

    for result in generator.run([sample_request(s, generator.conditioning) for s in samples]):
        save_image(result.images[0], Path(folder) / f"{result.key}{generator.options.suffix}")
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

    meta = schema.decode_meta(sample[schema.META])
    return Request(image=Image.open(io.BytesIO(sample[schema.INPUT])).convert("RGB"),
                   prompt=meta.label, key=sample["__key__"], question_action=meta.extra.get("question_action"),
                   description=description_of(sample, conditioning),
                   image_embeds=array(schema.VLLM_IMG), text_embeds=array(schema.VLLM_TXT))
