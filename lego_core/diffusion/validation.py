"""`lego train`'s validation: the loss on fixed noise over a few held-out samples and a grid
(input | generated | target) of them under RUN/samples/."""

from __future__ import annotations

import torch

@torch.no_grad()
def validate(cfg, step_fn, pipe, engine, run, step, logger, rank, zero3):
    """Validation loss on fixed noise, and a grid (input | generated | target) of a few samples."""
    from lego_core.data.shards import iter_samples
    from lego_core.diffusion.data import DecodeSample, collate, required_fields

    decode = DecodeSample(cfg.conditioning, cfg.resolution, cached_latents=cfg.cached_latents)
    samples = [decode(s) for _, s in zip(range(cfg.val_samples), iter_samples(
        cfg.val_shards, require=required_fields(cfg.conditioning, cfg.cached_latents)))]
    if not samples:
        return
    batch = collate(samples)
    engine.eval()  # no dropout in the loss or the samples
    try:
        # Fixed noise for a comparable loss, without touching the training RNG on any device.
        with torch.random.fork_rng(devices=[step_fn.device] if torch.device(step_fn.device).type == "cuda" else []):
            torch.manual_seed(1234)
            val_loss = step_fn.loss(batch).item()
        logger.event("validation", step=step, val_loss=val_loss)
        if rank == 0 and not zero3 and not cfg.cached_latents:
            sample_grid(cfg, pipe, engine.module, samples, run, step, logger)
    finally:
        engine.train()


def sample_grid(cfg, pipe, module, samples, run, step, logger):
    """input | generated | target for the validation samples, saved under RUN/samples/."""
    from PIL import Image

    from lego_core.diffusion.pipeline import LegoPipeline

    gen = LegoPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=module.unet,
                       scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
                       conditioner=module.conditioner)
    gen.set_progress_bar_config(disable=True)
    rows = []
    for i, s in enumerate(samples):
        x = to_pil(s["input"])
        kw = {}
        if "vllm_img" in s:
            kw["vllm_image_embeds"] = s["vllm_img"][None].to(module.unet.dtype)
        if "vllm_txt" in s:
            kw["vllm_text_embeds"] = [s["vllm_txt"].to(module.unet.dtype)]
        out = gen(s["text"], x, num_inference_steps=cfg.val_steps, generator=torch.Generator().manual_seed(i),
                  **kw).images[0]
        rows.append([x, out, to_pil(s["target"])])
    r = cfg.resolution
    grid = Image.new("RGB", (3 * r, len(rows) * r))
    for j, row in enumerate(rows):
        for k, im in enumerate(row):
            grid.paste(im.resize((r, r)), (k * r, j * r))
    path = run / "samples" / f"step-{step:08d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, quality=90)
    logger.event("samples", step=step, path=str(path))
    logger.image("samples", path, step)


def to_pil(t: torch.Tensor):
    """A [-1, 1] CHW image tensor as a PIL image."""
    from PIL import Image

    return Image.fromarray(((t.permute(1, 2, 0).float().numpy() + 1) * 127.5).clip(0, 255).astype("uint8"))
