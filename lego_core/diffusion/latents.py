"""The latent cache: VAE latents of both frames written into new shards, so training skips the
encoder (the VAE encode costs about 1.5 UNet forwards at SD-1.5's sizes).

`input_latent.npy` holds X's latent mode (unscaled, as InstructPix2Pix conditions on it);
`target_latent.npy` holds Y's latent distribution (mean and log-variance stacked on the channel
axis), so training still draws a fresh sample each step exactly as when encoding on the fly. With
cached latents the random horizontal flip is applied to the latents instead of the pixels.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("lego.latents")


@torch.no_grad()
def cache_latents(shards: list[str], base: str, out_pattern: str, *, resolution: int = 256, batch_size: int = 16,
                  device: str | None = None, progress: bool = True) -> list[str]:
    """Write the cache (resumable: keys already in finished shards are skipped); returns its shards."""
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from lego_core.data import shards as sh
    from lego_core.data.schema import INPUT, INPUT_LATENT, TARGET, TARGET_LATENT
    from lego_core.diffusion.data import image_tensor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").to(device).eval()
    pattern = sh.shard_pattern(out_pattern)
    done, start = sh.prepare_output(pattern)
    stats = sh.SkipStats()
    with sh.ShardWriter(pattern, start_index=start) as writer, \
            tqdm(desc="cache latents", unit="sample", disable=not progress) as bar:
        pending: list[dict] = []

        def flush():
            pixels = torch.stack([image_tensor(s[f], resolution) for s in pending for f in (INPUT, TARGET)])
            dist = vae.encode(pixels.to(device)).latent_dist
            modes, params = dist.mode().cpu(), torch.cat([dist.mean, dist.logvar], dim=1).cpu()
            for i, sample in enumerate(pending):
                out = {k: v for k, v in sample.items() if not k.startswith("__url")}
                out[INPUT_LATENT] = modes[2 * i].numpy().astype(np.float16)
                out[TARGET_LATENT] = params[2 * i + 1].numpy().astype(np.float16)
                writer.write(out)
            bar.update(len(pending))
            pending.clear()

        for sample in sh.iter_samples(shards, stats=stats):
            if sample["__key__"] in done:
                continue
            pending.append(sample)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    if stats.total:
        log.warning("latent cache: skipped %s", stats.summary())
    return sh.finished_shards(pattern)
