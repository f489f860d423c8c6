"""GPU benchmark: one table at SD-1.5 size in bf16 — training throughput and model-FLOP utilisation,
generation latency against diffusers' InstructPix2Pix, enrichment tokens/s. Run by `gpu.sh`.

Every model is built here with random weights from the kit's real-size presets (no download):
SD-1.5 (`SD15_SIZES`: UNet 860 M with InstructPix2Pix's 8 input channels, VAE, CLIP ViT-L/14 text
encoder) and the LLaVA at Llama-2-13B's widths with 2 decoder layers (`LLAVA_REAL_WIDTH`), saved to
folders and loaded back through the code `lego` runs (`build_from_pretrained`, `load_vllm`).

- train: `lego train`'s step (`DiffusionStep` through a DeepSpeed ZeRO-2 engine), cached latents,
  description+joint conditioning with H_i 256 x 5120 and 77 rows of H_t, EMA off, micro-batch 32,
  256 x 256. FLOPs per step from torch's FLOP counter (`torch.utils.flop_counter`) over one forward +
  backward; MFU = those FLOPs x steps/s / the GPU's peak dense bf16 FLOP/s (`--peak-tflops`).
- generate: 100 Euler-ancestral steps, 3 guidance branches in one UNet batch, one image, latency of
  `LegoPipeline` (plain, and with the VLLM rows) vs `StableDiffusionInstructPix2PixPipeline` on the
  same parts (median of --repeats).
- enrich: `describe_and_embed` (what `lego enrich` calls), greedy, --enrich-tokens new tokens per
  sample, generated tokens/s at batch 16 and at batch 1.
- batching: `lego generate`'s batching on the GPU (`scripts/bench/generate.py`'s measurement, its
  narrowed benchmark model, 256 px, 20 steps): 16 requests at batch 8 against one at a time through
  `ActionFrameGenerator`, the same images; on CUDA also the peak memory of 8 requests without and
  with `--offload model|sequential`.

`--size tiny --device cpu --dtype fp32` runs the same code on the kit's tiny models in seconds (the
test suite does, so this script cannot rot); the CUDA run differs only in sizes, device and dtype.

    python scripts/bench/gpu.py [--size sd15|tiny] [--device cuda] [--dtype bf16] [--parts train,generate,...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# Per size: model presets and workload (latent: 32 = 256 px). sd15 is the issue's; tiny only has to
# exercise every line.
SIZES = {
    "sd15": dict(sd="SD15_SIZES", llava="LLAVA_REAL_WIDTH", latent=32, micro_batch=32, train_steps=10,
                 generate_steps=100, enrich_samples=16, enrich_tokens=64, enrich_batch=16,
                 batching_model="BENCH", batching_steps=20, batching_requests=16, batching_batch=8),
    "tiny": dict(sd=None, llava=None, latent=8, micro_batch=2, train_steps=2, generate_steps=2, enrich_samples=2,
                 enrich_tokens=3, enrich_batch=2, batching_model=None, batching_steps=2, batching_requests=4,
                 batching_batch=2),
}
# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets, SXM parts, no sparsity).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PARTS = ("train", "generate", "enrich", "batching")


def presets(size: str) -> tuple[dict, dict]:
    from lego_core import kit

    spec = SIZES[size]
    sd = getattr(kit, spec["sd"]) if spec["sd"] else {}
    llava = getattr(kit, spec["llava"]) if spec["llava"] else {}
    return dict(sd), dict(llava)


def build_models(work: Path, size: str, device: str) -> tuple[Path, Path]:
    """The InstructPix2Pix folder and the LLaVA folder. Weights are initialised on `device` (a
    GPU builds 860 M parameters in seconds where a CPU takes minutes), then saved and reloaded."""
    import torch

    from lego_core.kit import make_tiny_instruct_pix2pix, make_tiny_llava

    sd, llava = presets(size)
    with torch.device(device):
        ip2p = make_tiny_instruct_pix2pix(work / "ip2p", **sd)
        vllm = make_tiny_llava(work / "llava", **llava)
    return ip2p, vllm


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device: str) -> None:
    """Give the memory of the part just measured (its locals are gone) back before the next one."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _sig(x: float) -> float:
    """4 significant digits: the tiny CPU run's step is far under a thousandth of a TFLOP."""
    return float(f"{x:.4g}")


def peak_tflops(device: str, given: float | None) -> float | None:
    import torch

    if given:
        return given
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench_train(folder: Path, device: str, precision: str, spec: dict, vllm_width: int, image_tokens: int,
                peak: float | None) -> dict:
    import deepspeed
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.diffusion.train import Denoiser, DiffusionStep, TrainConfig, trainable_parameters
    from lego_core.engine.config import EngineOptions, engine_config, precision_dtype

    b = spec["micro_batch"]
    cfg = TrainConfig(shards=[], out="", ema=False, cached_latents=True,
                      engine=EngineOptions(micro_batch=b, grad_accum=1, zero_stage=2, precision=precision))
    pipe = build_from_pretrained(folder, conditioning="description+joint", vllm=vllm_width)
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False)
    denoiser = Denoiser(pipe.unet, pipe.conditioner)
    params = trainable_parameters(denoiser)
    ds_config = engine_config(cfg.engine, 1)
    engine, *_ = deepspeed.initialize(model=denoiser, optimizer=torch.optim.AdamW(params, lr=1e-4),
                                      model_parameters=params, config=ds_config)
    pipe.vae.to(device)
    pipe.text_encoder.to(device)
    step = DiffusionStep(pipe, engine, precision_dtype(ds_config), device, cfg)
    latent = spec["latent"]                                           # sd15: 256 px through SD's x8 VAE
    g = torch.Generator().manual_seed(0)
    batch = {"text": ["cut the onion with the knife in the right hand"] * b, "key": [str(i) for i in range(b)],
             "input_latent": torch.randn(b, 4, latent, latent, generator=g),
             "target_latent": torch.randn(b, 8, latent, latent, generator=g),
             "vllm_img": torch.randn(b, image_tokens, vllm_width, generator=g),
             "vllm_txt": [torch.randn(77, vllm_width, generator=g) for _ in range(b)]}

    def one_step():
        engine.backward(step.loss(batch))
        engine.step()

    one_step()                                                        # warm-up: allocations, kernels
    with FlopCounterMode(display=False) as counter:                   # forward + backward of one micro-batch
        engine.backward(step.loss(batch))
    engine.step()
    flops = counter.get_total_flops()
    sync(device)
    t = time.perf_counter()
    for _ in range(spec["train_steps"]):
        one_step()
    sync(device)
    seconds = (time.perf_counter() - t) / spec["train_steps"]
    achieved = flops / seconds
    out = {"micro_batch": b, "latent": latent, "s_per_step": round(seconds, 4), "samples_per_s": round(b / seconds, 2),
           "tflop_per_step": _sig(flops / 1e12), "achieved_tflops": _sig(achieved / 1e12),
           "peak_tflops": peak, "mfu": round(achieved / (peak * 1e12), 3) if peak else None,
           "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
           "unet_dtype": str(next(engine.module.unet.parameters()).dtype).replace("torch.", "")}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def bench_generate(folder: Path, device: str, dtype_name: str, spec: dict, vllm_width: int, image_tokens: int,
                   repeats: int) -> dict:
    import numpy as np
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from lego_core.diffusion.conditioner import LegoConditioner
    from lego_core.diffusion.pipeline import LegoPipeline

    dtype = getattr(torch, DTYPES[dtype_name])
    ref = StableDiffusionInstructPix2PixPipeline.from_pretrained(folder, safety_checker=None,
                                                                 requires_safety_checker=False, dtype=dtype).to(device)
    parts = {k: getattr(ref, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    plain = LegoPipeline(**parts)
    torch.manual_seed(0)
    conditioner = LegoConditioner(vllm_dim=vllm_width, cross_attention_dim=ref.unet.config.cross_attention_dim)
    joint = LegoPipeline(**parts, conditioner=conditioner.eval().to(device, dtype))
    for p in (ref, plain, joint):
        p.set_progress_bar_config(disable=True)
    size = 8 * spec["latent"]
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    g = torch.Generator().manual_seed(1)
    h_i = torch.randn(1, image_tokens, vllm_width, generator=g).to(device, dtype)
    h_t = [torch.randn(60, vllm_width, generator=g).to(device, dtype)]

    def run(pipe, **kw):
        def go():
            pipe("cut onion", frame, num_inference_steps=spec["generate_steps"], output_type="np",
                 generator=torch.Generator().manual_seed(0), **kw)
            sync(device)
        return go

    runs = {"ip2p": run(ref), "lego": run(plain), "lego_joint": run(joint, vllm_image_embeds=h_i, vllm_text_embeds=h_t)}
    for fn in runs.values():
        fn()                                                          # warm-up
    times = {k: [] for k in runs}
    for _ in range(repeats):                                          # interleaved
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"steps": spec["generate_steps"], "size": size, "ip2p_s": round(med["ip2p"], 3),
           "lego_s": round(med["lego"], 3), "lego_joint_s": round(med["lego_joint"], 3),
           "lego_over_ip2p": round(med["lego"] / med["ip2p"], 3),
           "unet_dtype": str(ref.unet.dtype).replace("torch.", "")}
    return out


def bench_enrich(folder: Path, device: str, dtype_name: str, spec: dict) -> dict:
    import numpy as np
    from PIL import Image

    from lego_core.vllm.describe import describe_and_embed
    from lego_core.vllm.load import embedding_shape, load_vllm

    model, processor = load_vllm(folder, device=device, dtype=DTYPES[dtype_name])
    n, tokens = spec["enrich_samples"], spec["enrich_tokens"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)) for _ in range(n)]
    labels = ["cut onion", "open fridge", "wash plate", "take knife"] * (n // 4 + 1)

    def run(batch_size):
        sync(device)
        t = time.perf_counter()
        outs = describe_and_embed(model, processor, images, labels[:n], greedy=True, max_new_tokens=tokens,
                                  batch_size=batch_size)
        sync(device)
        return sum(len(o.token_ids) for o in outs), time.perf_counter() - t

    run(spec["enrich_batch"])                                         # warm-up
    res = {}
    for bs in (spec["enrich_batch"], 1):
        generated, seconds = run(bs)
        res[bs] = {"tokens": generated, "seconds": round(seconds, 3), "tokens_per_s": round(generated / seconds, 1)}
    m, d = embedding_shape(model)
    big, one = res[spec["enrich_batch"]], res[1]
    dtype = str(model.dtype).replace("torch.", "")
    return {"dtype": dtype, "image_tokens": m, "width": d, "samples": n, "max_new_tokens": tokens,
            "batch": spec["enrich_batch"], "batched": big, "single": one,
            "speedup": round(one["seconds"] / big["seconds"], 2)}


def bench_batching(work: Path, device: str, spec: dict, repeats: int) -> dict:
    """Batched generation against one request at a time, with generate.py's own functions (this
    folder is on sys.path when the script runs), on its benchmark model built here on `device`."""
    import generate as generate_bench
    import numpy as np
    import torch
    from PIL import Image

    from lego_core.diffusion.build import build_from_pretrained
    from lego_core.kit import make_tiny_instruct_pix2pix

    sizes = getattr(generate_bench, spec["batching_model"]) if spec["batching_model"] else {}
    with torch.device(device):
        ip2p = make_tiny_instruct_pix2pix(work / "batching-ip2p", **sizes)
    folder = work / "batching-lego"
    build_from_pretrained(ip2p, conditioning="description", vllm=64).save_pretrained(folder)
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    steps = spec["batching_steps"]
    out = generate_bench.bench_batching(folder, frame, steps, repeats, device, spec["batching_batch"],
                                        spec["batching_requests"])
    out["steps"], out["model"] = steps, "bench model" if sizes else "tiny model"
    if device.startswith("cuda"):
        out["peak_mib_by_offload"] = generate_bench.bench_offload_memory(folder, frame, steps)
    return out


def table(report: dict) -> str:
    """The one table gpu.sh prints."""
    rows = [("what", "setting", "result")]
    tr, ge, en, ba = (report.get(k) for k in ("train", "generate", "enrich", "batching"))
    if tr:
        mfu = f"MFU {tr['mfu']:.1%}" if tr["mfu"] is not None else "MFU n/a (no peak known: --peak-tflops)"
        rows.append(("train", f"ZeRO-2, cached latents, micro-batch {tr['micro_batch']}, {report['dtype']}",
                     f"{tr['samples_per_s']} samples/s, {tr['tflop_per_step']} TFLOP/step, "
                     f"{tr['achieved_tflops']} TFLOP/s, {mfu}"))
    if ge:
        rows.append(("generate", f"{ge['steps']} steps, 3 branches, {ge['size']} px, {report['dtype']}",
                     f"lego {ge['lego_s']} s, lego+VLLM rows {ge['lego_joint_s']} s, diffusers ip2p {ge['ip2p_s']} s "
                     f"(lego/ip2p {ge['lego_over_ip2p']})"))
    if en:
        rows.append(("enrich", f"LLaVA {en['image_tokens']} x {en['width']}, greedy, {en['max_new_tokens']} tokens",
                     f"batch {en['batch']}: {en['batched']['tokens_per_s']} tokens/s, batch 1: "
                     f"{en['single']['tokens_per_s']} tokens/s ({en['speedup']}x)"))
    if ba:
        memory = ba.get("peak_mib_by_offload")
        memory = ", peak MiB " + " / ".join(f"{k} {v}" for k, v in memory.items()) if memory else ""
        rows.append(("batching", f"{ba['requests']} requests, batch {ba['batch_size']} vs 1, {ba['steps']} steps, "
                                 f"{ba['model']}, 256 px",
                     f"{ba['batched_s']} s vs {ba['one_at_a_time_s']} s ({ba['speedup']}x), max pixel "
                     f"difference {ba['max_pixel_diff']}{memory}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="sd15")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--repeats", type=int, default=3, help="generate: median of this many runs")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak FLOP/s for MFU (default: from its name)")
    ap.add_argument("--workdir", help="where the models are written (default: a temp folder)")
    ap.add_argument("--json", help="also write the report as JSON here")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        ap.error(f"--parts: unknown {sorted(parts - set(PARTS))}")

    import torch

    from lego_core.engine.launch import detect_launch, init_distributed, shutdown

    started = time.perf_counter()
    spec = SIZES[args.size]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lego-bench-gpu-"))
    ip2p, vllm = build_models(work, args.size, args.device)
    from lego_core.vllm.load import embedding_shape, load_config

    image_tokens, width = embedding_shape(load_config(vllm))
    report = {"size": args.size, "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
              "built_s": round(time.perf_counter() - started, 1)}
    if "train" in parts:
        init_distributed(detect_launch({}))
        try:
            report["train"] = bench_train(ip2p, args.device, args.dtype, spec, width, image_tokens,
                                          peak_tflops(args.device, args.peak_tflops))
        finally:
            shutdown()
        release(args.device)
    if "generate" in parts:
        report["generate"] = bench_generate(ip2p, args.device, args.dtype, spec, width, image_tokens, args.repeats)
        release(args.device)
    if "enrich" in parts:
        report["enrich"] = bench_enrich(vllm, args.device, args.dtype, spec)
        release(args.device)
    if "batching" in parts:
        report["batching"] = bench_batching(work, args.device, spec, args.repeats)
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"({report['gpu'] or args.device}, torch {report['torch']}, models built in {report['built_s']} s, "
          f"total {report['total_s']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
