"""Fit a tiny AutoencoderKL to a set of frames, in place in an SD-layout folder.

A random VAE cannot round-trip a picture, so a diffusion model trained on its latents can never
draw a recognisable frame: real users start from SD's trained VAE, the demo fits its tiny one to
its own world first (about a minute on 2 CPU cores). Loss: L1 + MSE on the reconstruction of the
sampled latent and a small KL, as in LDM's autoencoder without the GAN and perceptual terms. Then
the latent scaling factor is re-estimated (1 / std of the scaled-by-1 latents, SD's own recipe)
so the diffusion model sees unit-variance latents, and the held-out round-trip PSNR is reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _tensor(images: list[np.ndarray], size: int):
    import torch
    from PIL import Image

    arr = np.stack([np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                    for im in images]).astype(np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def round_trip_psnr(vae, images, batch: int = 32) -> float:
    """Mean PSNR (dB, 0–1 scale) of decode(mode(encode(x))) against x, over `images` in [-1, 1]."""
    import torch

    scores = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            mse = ((y - x) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            scores += (10 * torch.log10(1 / mse)).tolist()
    return float(np.mean(scores))


def fit_vae(folder: str | Path, train_images: list[np.ndarray], held_out: list[np.ndarray], *, size: int = 64,
            steps: int = 300, batch: int = 16, lr: float = 2e-3, kl_weight: float = 1e-6, seed: int = 0,
            progress: bool = False) -> dict:
    """Train `folder`/vae on `train_images` (HxWx3 uint8) at `size`², save it back with a new
    scaling factor; return {"psnr": held-out round-trip dB, "scaling_factor", "steps", "seconds"}."""
    import time

    import torch
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    folder = Path(folder)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    x_train, x_test = _tensor(train_images, size), _tensor(held_out, size)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    vae.train()
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc="fit VAE", disable=not progress, leave=False):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x = x_train[idx]
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample(generator=g)).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean() + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(x_train[i : i + 64]).latent_dist.mode() for i in range(0, len(x_train), 64)])
    std = float(latents.std())
    vae.register_to_config(scaling_factor=round(1.0 / max(std, 1e-6), 5))
    psnr = round_trip_psnr(vae, x_test)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    return {"psnr": round(psnr, 2), "scaling_factor": vae.config.scaling_factor, "latent_std": round(std, 4),
            "steps": steps, "seconds": round(time.perf_counter() - t0, 1),
            "held_out_images": len(held_out), "train_images": len(train_images)}
