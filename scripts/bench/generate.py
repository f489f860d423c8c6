"""Benchmark: LegoPipeline vs diffusers' InstructPix2Pix, and the cost of VLLM conditioning.

The benchmark model is SD-1.5's layout narrowed so its VAE:UNet cost ratio stays SD-1.5's (VAE
encode ≈ 1.5× a UNet forward): UNet (64, 128, 256, 256) × 2 layers, cross-attention 256; VAE
(32, 64, 64, 64). 256×256, 20 steps, one run, runs interleaved, median of --repeats.

    .venv/bin/python scripts/bench/generate.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lego_core.diffusion.build import build_from_pretrained
from lego_core.diffusion.conditioner import LegoConditioner
from lego_core.diffusion.pipeline import LegoPipeline
from lego_core.kit import make_tiny_instruct_pix2pix

BENCH = dict(unet_block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=256,
             vae_block_out_channels=(32, 64, 64, 64), sample_size=32, attention_heads=4)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm-dim", type=int, default=5120)
    ap.add_argument("--image-tokens", type=int, default=256)
    args = ap.parse_args()
    from diffusers import StableDiffusionInstructPix2PixPipeline

    tmp = Path(tempfile.mkdtemp(prefix="lego-bench-"))
    folder = make_tiny_instruct_pix2pix(tmp / "ip2p", **BENCH)
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False)
    parts = {k: getattr(ref, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    plain = LegoPipeline(**parts)
    torch.manual_seed(0)
    joint = LegoPipeline(**parts, conditioner=LegoConditioner(vllm_dim=args.vllm_dim, cross_attention_dim=256).eval())
    for p in (ref, plain, joint):
        p.set_progress_bar_config(disable=True)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    g = torch.Generator().manual_seed(1)
    h_i = torch.randn(1, args.image_tokens, args.vllm_dim, generator=g)
    h_t = [torch.randn(60, args.vllm_dim, generator=g)]

    def gen(pipe, **kw):
        return lambda: pipe("cut onion", frame, num_inference_steps=args.steps,
                            generator=torch.Generator().manual_seed(0), output_type="np", **kw)

    runs = {"ip2p": gen(ref), "lego": gen(plain), "lego_joint": gen(joint, vllm_image_embeds=h_i, vllm_text_embeds=h_t)}
    for fn in runs.values():                    # warm-up
        fn()
    results = {k: [] for k in runs}
    for _ in range(args.repeats):               # interleaved, so load changes hit all alike
        for k, fn in runs.items():
            results[k].append(timed(fn, 1))
    med = {k: statistics.median(v) for k, v in results.items()}
    same = float(np.abs(runs["lego"]().images - runs["ip2p"]().images).max())

    # End to end: `lego --help`, and `lego generate` on a saved model (a fresh process each).
    build_from_pretrained(folder, conditioning="description", vllm=args.vllm_dim).save_pretrained(tmp / "lego")
    frame.save(tmp / "frame.jpg")
    lego = str(Path(sys.executable).parent / "lego")
    help_s = timed(lambda: subprocess.run([lego, "--help"], check=True, capture_output=True), 3)
    gen_s = timed(lambda: subprocess.run([lego, "-q", "generate", str(tmp / "frame.jpg"), "cut onion", "--model",
                                          str(tmp / "lego"), "--steps", str(args.steps), "-o", str(tmp / "out.png")],
                                         check=True, capture_output=True), 1)
    print(json.dumps({
        "model": BENCH, "size": 256, "steps": args.steps, "threads": torch.get_num_threads(),
        "ip2p_s": round(med["ip2p"], 3), "lego_s": round(med["lego"], 3),
        "lego_over_ip2p": round(med["lego"] / med["ip2p"], 3), "max_abs_diff_vs_ip2p": same,
        "lego_joint_s": round(med["lego_joint"], 3),
        "joint_over_plain": round(med["lego_joint"] / med["lego"], 3),
        "vllm": {"M": args.image_tokens, "D": args.vllm_dim},
        "lego_help_s": round(help_s, 3), "lego_generate_end_to_end_s": round(gen_s, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
