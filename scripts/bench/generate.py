"""Benchmark: LegoPipeline vs diffusers' InstructPix2Pix, and the cost of VLLM conditioning.

The benchmark model is SD-1.5's layout narrowed so its VAE:UNet cost ratio stays SD-1.5's (VAE
encode ≈ 1.5× a UNet forward): UNet (64, 128, 256, 256) × 2 layers, cross-attention 256; VAE
(32, 64, 64, 64). 256×256, 20 steps, one run, runs interleaved, median of --repeats.

Batching: 16 requests (one frame, 16 actions; `--requests`) through `ActionFrameGenerator` at
`--batch-size 8` vs one at a time, the same outputs (max pixel difference printed); on a CUDA GPU the
same again there, and the peak CUDA memory without and with `--offload model|sequential`.
`--parts unet`: the bound on what batching can gain, the UNet forward alone at the batch of one
request (its 3 guidance branches) vs of `--batch-size` requests (3 × batch), per image.

    .venv/bin/python scripts/bench/generate.py [--steps 20] [--repeats 3] [--parts pipeline,batching,unet,cli]
"""

from __future__ import annotations

import argparse
import json
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


ACTIONS = ["cut onion", "open fridge", "wash plate", "take knife", "put pan", "stir soup", "pour water",
           "close drawer", "peel carrot", "turn on tap", "pick up cup", "wipe table", "open lid", "put bowl",
           "take spoon", "rinse pan"]


def bench_batching(folder: Path, frame, steps: int, repeats: int, device: str, batch_size: int = 8,
                   n_requests: int = 16) -> dict:
    """`n_requests` at `batch_size` vs one at a time, one generator (the model loaded once)."""
    from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions, Request

    gen = ActionFrameGenerator(str(folder), options=GenerateOptions(steps=steps, size=256, device=device,
                                                                    progress=False))
    requests = [Request(frame, ACTIONS[i % len(ACTIONS)]) for i in range(n_requests)]

    def run(size):
        gen.options.batch_size = size
        out = [np.asarray(r.images[0], dtype=np.int16) for r in gen.run(requests)]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    outs = {size: run(size) for size in (batch_size, 1)}              # warm-up, and the outputs compared
    times = {batch_size: [], 1: []}
    for _ in range(repeats):                                          # interleaved
        for size in times:
            times[size].append(timed(lambda: run(size), 1))
    batched, single = statistics.median(times[batch_size]), statistics.median(times[1])
    return {"device": device, "requests": len(requests), "batch_size": batch_size, "batched_s": round(batched, 2),
            "one_at_a_time_s": round(single, 2), "speedup": round(single / batched, 2),
            "max_pixel_diff": int(max(np.abs(a - b).max() for a, b in zip(outs[batch_size], outs[1])))}


@torch.no_grad()
def bench_unet(folder: Path, repeats: int, batch_size: int = 8) -> dict:
    """The UNet forward alone, per image: 3 rows (one request's guidance branches) vs 3 × batch_size."""
    from lego_core.diffusion.build import load_pipeline

    pipe = load_pipeline(folder)
    unet, latent = pipe.unet.eval(), 256 // pipe.vae_scale_factor    # the benchmark's 256 px, as latents
    per_image = {}
    for rows in (3, 3 * batch_size):
        x = torch.randn(rows, unet.config.in_channels, latent, latent)
        ctx = torch.randn(rows, 77, unet.config.cross_attention_dim)
        unet(x, 500, encoder_hidden_states=ctx)                          # warm-up
        per_image[rows] = timed(lambda: unet(x, 500, encoder_hidden_states=ctx), repeats) / (rows // 3)
    small, big = per_image[3], per_image[3 * batch_size]
    return {"rows": [3, 3 * batch_size], "s_per_image": [round(small, 4), round(big, 4)],
            "speedup_per_image": round(small / big, 2)}


def bench_offload_memory(folder: Path, frame, steps: int) -> dict:
    """Peak CUDA memory (MiB) of 8 requests in one batch, without and with CPU offload."""
    from lego_core.diffusion.generate import ActionFrameGenerator, GenerateOptions, Request
    from lego_core.diffusion.memory import release_memory

    peaks = {}
    for offload in (None, "model", "sequential"):
        release_memory()
        torch.cuda.reset_peak_memory_stats()
        gen = ActionFrameGenerator(str(folder), options=GenerateOptions(steps=steps, size=256, device="cuda",
                                                                        offload=offload, progress=False))
        list(gen.run([Request(frame, a) for a in ACTIONS[:8]]))
        peaks[offload or "none"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        del gen
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm-dim", type=int, default=5120)
    ap.add_argument("--image-tokens", type=int, default=256)
    ap.add_argument("--requests", type=int, default=16, help="requests in the batching benchmark")
    ap.add_argument("--batch-size", type=int, default=8, help="requests per UNet batch in the batching benchmark")
    ap.add_argument("--parts", default="pipeline,batching,cli", help="which measurements to run "
                                                                     "(pipeline, batching, unet, cli)")
    args = ap.parse_args()
    todo = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="lego-bench-"))
    folder = make_tiny_instruct_pix2pix(tmp / "ip2p", **BENCH)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    build_from_pretrained(folder, conditioning="description", vllm=args.vllm_dim).save_pretrained(tmp / "lego")
    report = {"model": BENCH, "size": 256, "steps": args.steps, "threads": torch.get_num_threads()}
    if "pipeline" in todo:
        report.update(bench_pipelines(folder, frame, args))
    if "batching" in todo:
        report["batching"] = [bench_batching(tmp / "lego", frame, args.steps, args.repeats, "cpu", args.batch_size,
                                             args.requests)]
        if torch.cuda.is_available():
            report["batching"].append(bench_batching(tmp / "lego", frame, args.steps, args.repeats, "cuda",
                                                     args.batch_size, args.requests))
            report["peak_cuda_mib_by_offload"] = bench_offload_memory(tmp / "lego", frame, args.steps)
    if "unet" in todo:
        report["unet_forward"] = bench_unet(tmp / "lego", args.repeats, args.batch_size)
    if "cli" in todo:
        # End to end: `lego --help`, and `lego generate` on a saved model (a fresh process each).
        frame.save(tmp / "frame.jpg")
        lego = str(Path(sys.executable).parent / "lego")
        report["lego_help_s"] = round(timed(lambda: subprocess.run([lego, "--help"], check=True, capture_output=True),
                                            3), 3)
        report["lego_generate_end_to_end_s"] = round(timed(lambda: subprocess.run(
            [lego, "-q", "generate", str(tmp / "frame.jpg"), "cut onion", "--model", str(tmp / "lego"), "--steps",
             str(args.steps), "--size", "256", "-o", str(tmp / "out.png")], check=True, capture_output=True), 1), 2)
    print(json.dumps(report, indent=1))


def bench_pipelines(folder: Path, frame, args) -> dict:
    """LegoPipeline vs diffusers' InstructPix2Pix on the same parts, and the cost of VLLM rows."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False)
    parts = {k: getattr(ref, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    plain = LegoPipeline(**parts)
    torch.manual_seed(0)
    joint = LegoPipeline(**parts, conditioner=LegoConditioner(vllm_dim=args.vllm_dim, cross_attention_dim=256).eval())
    for p in (ref, plain, joint):
        p.set_progress_bar_config(disable=True)
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
    return {"ip2p_s": round(med["ip2p"], 3), "lego_s": round(med["lego"], 3),
            "lego_over_ip2p": round(med["lego"] / med["ip2p"], 3), "max_abs_diff_vs_ip2p": same,
            "lego_joint_s": round(med["lego_joint"], 3), "joint_over_plain": round(med["lego_joint"] / med["lego"], 3),
            "vllm": {"M": args.image_tokens, "D": args.vllm_dim}}


if __name__ == "__main__":
    main()
