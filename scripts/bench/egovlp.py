"""Benchmark: the EgoVLP and EgoVLP+ scores batched (`lego evaluate`'s metrics) vs one image at a
time (the authors' way: LEGO metrics/all_metrics_in_one.py run_egovlp — per image, the torchvision
clip pipeline, then the ground-truth clip and the generated clip each through the model alone), in
one run. Prints images/s and the ratio, and checks both ways give the same mean.

    python scripts/bench/egovlp.py [--n 16] [--frames 4] [--arch full|tiny] [--batch-size 32] [--device auto]

`--arch full` (default) is the real architecture (space-time ViT-B/16 at 224 px) with random
weights, saved and loaded the way the official checkpoints are; `tiny` the test-size model. Image
decoding is left out on both sides (the same PIL images go to both).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def make_images(n: int, size: int, seed: int = 0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i) * 0.5 + 0.5, np.cos(5 * yy + i) * 0.5 + 0.5, xx * yy], -1) * 255
        ims = [np.clip(base + rng.normal(0, s, base.shape), 0, 255).astype(np.uint8) for s in (20, 40, 30)]
        out.append(tuple(Image.fromarray(a) for a in ims))  # (reference, generated, input frame)
    return out


def authors_way(enc, samples, plus: bool) -> list[float]:
    """run_egovlp, one pair at a time: ToTensor, stack, Resize + CenterCrop + normalise, 2 forwards."""
    import torch
    from torchvision import transforms

    from lego_core.metrics.egovlp_score import IMAGENET_MEAN, IMAGENET_STD

    s, t = enc.size, enc.frames
    tf = transforms.Compose([transforms.Resize(s, antialias=False), transforms.CenterCrop(s)])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)

    def clip(img, pre):
        frames = [img] * t if pre is None else [pre] * (t // 2) + [img] * (t - t // 2)
        x = torch.stack([transforms.ToTensor()(f) for f in frames]).transpose(0, 1)
        x = ((tf(x) - mean) / std).transpose(0, 1).unsqueeze(0)
        return x.to(enc.device)

    out = []
    with torch.inference_mode():
        for ref, gen, inp in samples:
            pre = inp if plus else None
            a = enc.model.compute_video(clip(ref, pre))
            b = enc.model.compute_video(clip(gen, pre))
            out.append(100 * float(torch.nn.functional.cosine_similarity(a, b)))
    if enc.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out


def ours(metric_cls, ckpt, frames, device, shared, samples, batch_size: int) -> list[float]:
    import torch

    from lego_core.metrics.common import Batch

    m = metric_cls(ckpt, frames, device, shared)  # fresh: no cached reference embeddings
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        keys = [f"k{i + j}" for j in range(len(chunk))]
        b = Batch(keys, [g for _, g, _ in chunk], [r for r, _, _ in chunk], inputs=[x for _, _, x in chunk],
                  descriptions=[None] * len(chunk), labels=[None] * len(chunk))
        out += next(iter(m.update(b).values()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--arch", choices=["full", "tiny"], default="full")
    ap.add_argument("--size", type=int, default=256, help="image side")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from lego_core.kit.metric_models import make_tiny_egovlp
    from lego_core.device import pick_device
    from lego_core.metrics.common import Shared
    from lego_core.metrics.egovlp_score import EgoVLPPlusScore, EgoVLPScore, shared_egovlp

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    arch = (dict(frames=16, img_size=224, patch_size=16, dim=768, depth=12, text_dim=768, text_layers=1,
                 projection_dim=256) if args.arch == "full" else dict(frames=max(4, args.frames)))
    samples = make_images(args.n, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(make_tiny_egovlp(os.path.join(tmp, "egovlp.pth"), **arch))
        shared = Shared()
        enc = shared_egovlp(shared, ckpt, args.frames, device)
        print(f"{args.n} images {args.size}x{args.size}, EgoVLP {args.arch} ({enc.size} px, {args.frames} frames), "
              f"device {device}, torch threads {torch.get_num_threads()}")
        ours(EgoVLPScore, ckpt, args.frames, device, shared, samples[:2], args.batch_size)  # warm-up
        for name, cls, plus in (("egovlp", EgoVLPScore, False), ("egovlp+", EgoVLPPlusScore, True)):
            t0 = time.perf_counter()
            a = ours(cls, ckpt, args.frames, device, shared, samples, args.batch_size)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            b = authors_way(enc, samples, plus)
            t_auth = time.perf_counter() - t0
            agree = np.allclose(a, b, atol=1e-3)
            print(f"{name:8s} batched (batch {args.batch_size}): {args.n / t_ours:8.2f} images/s | one at a time: "
                  f"{args.n / t_auth:8.2f} images/s | ratio {t_auth / t_ours:.2f}x | means {np.mean(a):.4f} / "
                  f"{np.mean(b):.4f} ({'agree' if agree else 'DIFFER'})")


if __name__ == "__main__":
    main()
