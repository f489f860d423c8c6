"""Generate-first evaluation: produce a folder of generated images keyed by sample key.

`generate_folder(shards, model, folder, ...)` writes `folder/{key}.png` for every valid sample of
`shards` (the input frame `input.jpg`; the prompt the model was trained on: the label for a "label"
model, else the description `enriched.txt`, else `curated.txt`, else the label; and — for models
that need them — the VLLM embeddings `vllm_img.npy` / `vllm_txt.npy` from the shards, or computed
with `--vllm`), then `runner.evaluate` scores that folder
exactly as `--generated DIR` would. Rerunning skips keys whose image exists (each PNG is written to
a temp name and renamed, so a finished file is never half-written).

"""

from __future__ import annotations

import logging
import os

from lego_core.diffusion.generate import GenerateOptions
from lego_core.errors import LegoError

log = logging.getLogger(__name__)


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
    """The LEGO pipeline (and the VLLM, when asked) on `opts.device`, loaded once for all batches."""
    import torch

    from lego_core.diffusion.build import load_pipeline
    from lego_core.device import pick_device

    device = pick_device(opts.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = load_pipeline(model, device=device, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    vllm_model = None
    if vllm:
        from lego_core.vllm.load import load_vllm

        vllm_model = load_vllm(vllm, device=device, dtype="float16" if dtype == torch.float16 else "float32")
    return pipe, vllm_model


def _pipeline_batch(pipe, samples: list[dict], opts: GenerateOptions):
    """One image per sample at the input frame's aspect ratio. The prompt is the sample's
    description; a model that needs VLLM embeddings takes them from the shards (`lego enrich`
    output) or, with --vllm, from the VLLM run here. One seeded generator per sample, so an image
    does not depend on how samples are batched (up to float rounding)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from lego_core.data import schema
    from lego_core.data.video import output_size
    from lego_core.diffusion.data import description_of

    pipe, vllm_model = pipe
    frames = [Image.open(io.BytesIO(s[schema.INPUT])).convert("RGB") for s in samples]
    prompts = [description_of(s, pipe.conditioning) for s in samples]
    h_i = h_t = None
    if pipe.needs_vllm:
        if all(schema.VLLM_IMG in s and schema.VLLM_TXT in s for s in samples):
            h_i = torch.stack([torch.from_numpy(np.load(io.BytesIO(s[schema.VLLM_IMG])).astype(np.float32))
                               for s in samples])
            h_t = [torch.from_numpy(np.load(io.BytesIO(s[schema.VLLM_TXT])).astype(np.float32)) for s in samples]
        elif vllm_model is not None:
            from lego_core.vllm.describe import describe_and_embed

            labels = [schema.decode_meta(s[schema.META]).label for s in samples]
            outs = describe_and_embed(*vllm_model, frames, labels, seed=opts.seed)
            prompts = [o.description for o in outs]
            h_i = torch.stack([torch.from_numpy(o.image_embeds.astype(np.float32)) for o in outs])
            h_t = [torch.from_numpy(o.text_embeds.astype(np.float32)) for o in outs]
        else:
            raise LegoError(f"the model uses VLLM embeddings ({pipe.conditioning}) but the shards have no "
                            "vllm_img.npy/vllm_txt.npy: run `lego enrich` first or pass --vllm DIR")
    squares = [f.resize((opts.size, opts.size), Image.Resampling.BICUBIC) for f in frames]
    generators = [torch.Generator().manual_seed(opts.seed) for _ in samples]
    images = pipe(prompts, squares, num_inference_steps=opts.steps, guidance_scale=opts.guidance,
                  image_guidance_scale=opts.image_guidance, generator=generators,
                  vllm_image_embeds=h_i, vllm_text_embeds=h_t).images
    return [im.resize(output_size(f.width, f.height, opts.size, "short"), Image.Resampling.BICUBIC)
            for im, f in zip(images, frames)]
