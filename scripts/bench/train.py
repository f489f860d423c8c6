"""Benchmark: `lego train`'s step loop vs a loop written the way diffusers' train_instruct_pix2pix.py
does it (VAE-encode both images every step), same model, one run.

The benchmark model is SD-1.5's layout narrowed so its VAE:UNet cost ratio stays SD-1.5's (VAE
encode ≈ 1.5× a UNet forward). Micro-batch 4, 256×256, fp32 on CPU. Prints samples/s of the
reference, of ours encoding on the fly, and of ours with cached latents, and the ratios.

    .venv/bin/python scripts/bench/train.py [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lego_core.kit import make_tiny_instruct_pix2pix

BENCH = dict(unet_block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=256,
             vae_block_out_channels=(32, 64, 64, 64), sample_size=32, attention_heads=4)


def reference_step_fn(pipe, batch, opt):
    """diffusers' train_instruct_pix2pix.py, one step (no dropout details that change the cost)."""
    vae, unet, text_encoder, tokenizer, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler

    def step():
        latents = vae.encode(batch["target"]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = sched.add_noise(latents, noise, t)
        ids = tokenizer(batch["text"], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        hidden = text_encoder(ids)[0]
        original = vae.encode(batch["input"]).latent_dist.mode()
        pred = unet(torch.cat([noisy, original], dim=1), t, hidden, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import deepspeed
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.train import Denoiser, DiffusionStep, TrainConfig, trainable_parameters
    from lego_core.engine.config import EngineOptions, deepspeed_config
    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    tmp = Path(tempfile.mkdtemp(prefix="lego-bench-train-"))
    folder = make_tiny_instruct_pix2pix(tmp / "ip2p", **BENCH)
    init_distributed(detect_launch({}))
    torch.manual_seed(0)
    b = args.batch
    batch = {"input": torch.rand(b, 3, 256, 256) * 2 - 1, "target": torch.rand(b, 3, 256, 256) * 2 - 1,
             "text": ["cut onion with the knife in the right hand"] * b, "key": [str(i) for i in range(b)]}

    # Reference: plain PyTorch, as the diffusers script.
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False)
    ref.vae.requires_grad_(False)
    ref.text_encoder.requires_grad_(False)
    ref_step = reference_step_fn(ref, batch, torch.optim.AdamW(ref.unet.parameters(), lr=1e-4))

    # Ours: the engine and DiffusionStep that `lego train` runs.
    cfg = TrainConfig(shards=[], out="", engine=EngineOptions(micro_batch=b, grad_accum=1, precision="fp32"))
    pipe = build_from_pretrained(folder, conditioning="description", vllm=16)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    denoiser = Denoiser(pipe.unet, pipe.conditioner)
    params = trainable_parameters(denoiser)
    engine, *_ = deepspeed.initialize(model=denoiser, optimizer=torch.optim.AdamW(params, lr=1e-4),
                                      model_parameters=params, config=deepspeed_config(cfg.engine, 1))
    ours = DiffusionStep(pipe, engine, torch.float32, "cpu", cfg)
    with torch.no_grad():
        dist = pipe.vae.encode(torch.cat([batch["input"], batch["target"]])).latent_dist
    cached = {"text": batch["text"], "key": batch["key"], "input_latent": dist.mode()[:b],
              "target_latent": torch.cat([dist.mean, dist.logvar], dim=1)[b:]}

    def our_step(data):
        def step():
            loss = ours.loss(data)
            engine.backward(loss)
            engine.step()
        return step

    runs = {"reference": ref_step, "lego": our_step(batch), "lego_cached": our_step(cached)}
    for fn in runs.values():
        fn()                                             # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.repeats):                        # interleaved
        for k, fn in runs.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[k].append(time.perf_counter() - t)
    shutdown()
    sps = {k: args.steps * b / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": BENCH, "resolution": 256, "micro_batch": b, "threads": torch.get_num_threads(),
        "samples_per_s": {k: round(v, 3) for k, v in sps.items()},
        "lego_over_reference": round(sps["lego"] / sps["reference"], 3),
        "lego_cached_over_reference": round(sps["lego_cached"] / sps["reference"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
