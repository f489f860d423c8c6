"""Benchmark: `lego train`'s step vs a loop written the way diffusers' train_instruct_pix2pix.py
does it (VAE-encode both images every step, clip the gradient norm at 1, torch AdamW), same model.

Sizes: `bench` (default) is SD-1.5's layout narrowed so its VAE:UNet cost ratio stays SD-1.5's
(VAE encode ≈ 1.5× a UNet forward), micro-batch 4, all three runs interleaved in one process;
`sd15` is SD-1.5 itself (UNet 859 M, random weights, built once into --work), micro-batch 1, each
run in its own process (one model in memory at a time: fp32 UNet + gradients + AdamW ≈ 14 GB),
the processes alternating. 256×256, fp32 on CPU, `--threads` torch threads (1 by default: on a
shared machine a ratio measured with one thread per process moves least with the load). Prints
samples/s of the reference, of ours encoding on the fly and of ours with cached latents, the
ratios, the reference's VAE seconds (what caching alone saves) and the load average the runs saw.

    .venv/bin/python scripts/bench/train.py [--size bench|sd15] [--steps 6] [--repeats 2] [--threads 1]
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

import torch

BENCH = dict(unet_block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=256,
             vae_block_out_channels=(32, 64, 64, 64), sample_size=32, attention_heads=4)
RUNS = ("reference", "lego", "lego_cached")
TEXT = "cut onion with the knife in the right hand"


def make_model(folder: Path, size: str) -> Path:
    from lego_core.kit import make_sd15_random, make_tiny_instruct_pix2pix

    if (folder / "model_index.json").is_file():
        return folder
    if size == "sd15":
        return make_sd15_random(folder, instruct_pix2pix=True)
    return make_tiny_instruct_pix2pix(folder, **BENCH)


def make_batch(b: int) -> dict:
    torch.manual_seed(0)
    return {"input": torch.rand(b, 3, 256, 256) * 2 - 1, "target": torch.rand(b, 3, 256, 256) * 2 - 1,
            "text": [TEXT] * b, "key": [str(i) for i in range(b)]}


VAE_SECONDS: list[float] = []          # the reference's VAE encodes, per step: what caching saves


def reference_step(folder: Path, batch: dict):
    """diffusers' train_instruct_pix2pix.py, one step (no dropout details that change the cost)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False)
    vae, unet, text_encoder, tokenizer, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step():
        start = time.perf_counter()
        latents = vae.encode(batch["target"]).latent_dist.sample() * vae.config.scaling_factor
        original = vae.encode(batch["input"]).latent_dist.mode()
        VAE_SECONDS.append(time.perf_counter() - start)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = sched.add_noise(latents, noise, t)
        ids = tokenizer(batch["text"], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        pred = unet(torch.cat([noisy, original], dim=1), t, hidden, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)      # the script's --max_grad_norm 1
        opt.step()
        opt.zero_grad()
    return step


def lego_steps(folder: Path, batch: dict, which: tuple[str, ...]) -> dict:
    """Ours: the engine, optimizer and DiffusionStep that `lego train` builds (engine/loop.py's
    start_engine, engine/optim.py's adamw, the one-rank engine choice), on the fly and cached."""
    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.train import Denoiser, DiffusionStep, TrainConfig, trainable_parameters
    from lego_core.engine.config import EngineOptions, engine_config, plain_engine_on_one_rank
    from lego_core.engine.loop import start_engine
    from lego_core.engine.optim import adamw

    b = len(batch["text"])
    cfg = TrainConfig(shards=[], out="", ema=False, engine=EngineOptions(micro_batch=b, grad_accum=1, precision="fp32"))
    ds_config = engine_config(cfg.engine, 1)
    plain_engine_on_one_rank(ds_config, cfg.engine, 1)
    pipe = build_from_pretrained(folder, conditioning="description", vllm=16)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    denoiser = Denoiser(pipe.unet, pipe.conditioner)
    params = trainable_parameters(denoiser)
    engine = start_engine(denoiser, adamw(params, "cpu", lr=1e-4, weight_decay=1e-2), None, params, ds_config, 1)
    ours = DiffusionStep(pipe, engine, torch.float32, "cpu", cfg)
    with torch.no_grad():
        dist = pipe.vae.encode(torch.cat([batch["input"], batch["target"]])).latent_dist
    cached = {"text": batch["text"], "key": batch["key"], "input_latent": dist.mode()[:b],
              "target_latent": torch.cat([dist.mean, dist.logvar], dim=1)[b:]}

    def step_on(data):
        def step():
            engine.backward(ours.loss(data))
            engine.step()
        return step
    return {k: step_on(batch if k == "lego" else cached) for k in which}


def time_runs(runs: dict, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each of `steps` x `repeats` steps per run, after one warm-up each. The runs take
    turns step by step, so a burst of load from the machine's other users hits them alike."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps * repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def measure_here(folder: Path, which: tuple[str, ...], args) -> dict[str, list[float]]:
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    torch.set_num_threads(args.threads)
    init_distributed(detect_launch({}))
    batch = make_batch(args.batch)
    runs = {}
    if "reference" in which:
        runs["reference"] = reference_step(folder, batch)
    if set(which) - {"reference"}:
        runs.update(lego_steps(folder, batch, tuple(k for k in which if k != "reference")))
    try:
        times = time_runs(runs, args.steps, args.repeats)
        if "reference" in which:
            times["reference_vae"] = VAE_SECONDS[1:]                      # without the warm-up
        return times
    finally:
        shutdown()


def measure_apart(folder: Path, args) -> dict[str, list[float]]:
    """One process per run and repeat (`steps` steps after a warm-up), alternating reference, lego,
    lego_cached."""
    times: dict[str, list[float]] = {k: [] for k in (*RUNS, "reference_vae")}
    for _ in range(args.repeats):
        for k in RUNS:
            cmd = [sys.executable, __file__, "--size", args.size, "--work", str(folder), "--only", k, "--repeats", "1",
                   "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            for name, seconds in got.items():
                times[name] += seconds
            print(f"{k}: {statistics.median(times[k][-args.steps:]):.2f} s/step", file=sys.stderr, flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("bench", "sd15"), default="bench")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run and repeat (6; sd15: 2)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="micro-batch (4; sd15: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="the model folder (sd15: reused when it exists)")
    ap.add_argument("--only", choices=RUNS, help=argparse.SUPPRESS)       # one run, in this process
    args = ap.parse_args()
    sd15 = args.size == "sd15"
    args.steps = args.steps or (2 if sd15 else 6)
    args.batch = args.batch or (1 if sd15 else 4)
    folder = args.work or Path(tempfile.mkdtemp(prefix="lego-bench-train-")) / "ip2p"
    if args.only:
        print(json.dumps(measure_here(folder, (args.only,), args)))
        return
    if sd15 and not (folder / "model_index.json").is_file():      # built in a child: its memory goes back
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import train; "
                        "from pathlib import Path; train.make_model(Path(sys.argv[2]), 'sd15')",
                        str(Path(__file__).parent), str(folder)], check=True)
    make_model(folder, args.size)
    load = os.getloadavg()[0]
    times = measure_apart(folder, args) if sd15 else measure_here(folder, RUNS, args)
    vae = times.pop("reference_vae")
    sps = {k: args.batch / statistics.median(v) for k, v in times.items()}
    # What caching alone can give: the reference's step over the step without its VAE encodes (the
    # FLOP ratio assumes the VAE's convolutions run at the UNet's FLOP rate, which on a CPU they need
    # not). Ours can go past it only by a cheaper rest of the step (the fused AdamW, at SD-1.5 size).
    ref_median, vae_median = statistics.median(times["reference"]), statistics.median(vae)
    print(json.dumps({
        "size": args.size, "model": "SD-1.5 (random weights)" if sd15 else BENCH, "resolution": 256,
        "micro_batch": args.batch, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "seconds_per_step": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "samples_per_s": {k: round(v, 4) for k, v in sps.items()},
        "lego_over_reference": round(sps["lego"] / sps["reference"], 3),
        "lego_cached_over_reference": round(sps["lego_cached"] / sps["reference"], 3),
        "reference_vae_seconds_per_step": round(vae_median, 3),
        "caching_alone_would_give": round(ref_median / (ref_median - vae_median), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
