"""Benchmark: `lego enrich` at --batch-size 16 vs a batch-size-1 loop (the authors' way), one run.

A small random LLaVA built offline with the kit: CLIP vision 4 layers x 256 wide on 224 px images
with 14 px patches (256 image tokens), Llama 4 layers x 512 wide. Both runs go through the stage
itself (`lego_core.vllm.enrich.enrich`, model loaded once and passed in) over the same input shards
(the bundled samples, repeated to --samples), greedy decoding, --max-new-tokens each (a random model
rarely stops early, so every sample generates about that many tokens). Prints samples/s of both, the
ratio, and checks the outputs are the same: descriptions and token ids equal, H_i and H_t equal up to
float16 rounding.

    .venv/bin/python scripts/bench/enrich.py [--samples 32] [--max-new-tokens 64] [--device auto] [--json]
    .venv/bin/python scripts/bench/enrich.py --split [--threads 1] [--repeats 3]

`--split` shows what bounds the ratio: `describe_and_embed` at batch 16 and 1, each with 1 new token
(the prefill: vision tower + LLM over ~300 prompt tokens) and with --max-new-tokens, interleaved,
timed in process CPU seconds (on a shared machine wall time mostly measures the neighbours; with
one thread CPU time is the work done). Prints prefill ms per sample, decode ms per token per sample,
the speedup, and its ceiling if decoding were free: batch 1's total over batch 16's prefill.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_inputs(folder: Path, n: int) -> list[str]:
    from lego_core.data.schema import decode_meta, make_key
    from lego_core.data.shards import ShardWriter, iter_samples

    base = list(iter_samples(str(REPO / "shards")))
    with ShardWriter(str(folder / "in-%06d.tar"), max_samples=16) as w:
        for i in range(n):
            s = dict(base[i % len(base)])
            s.pop("__url__", None)
            meta = json.loads(s["meta.json"])
            meta["action_id"] = f"{meta['action_id']}-r{i}"
            s["meta.json"] = json.dumps(meta).encode()
            s["__key__"] = make_key(meta["dataset"], meta["video_id"], meta["action_id"])
            decode_meta(s["meta.json"])
            w.write(s)
    return w.shards


def run(model, processor, inputs, out: Path, batch_size: int, max_new_tokens: int, device: str):
    from lego_core.vllm.enrich import EnrichConfig, enrich

    cfg = EnrichConfig(shards=inputs, vllm="bench-llava", out=str(out / "e-%06d.tar"), batch_size=batch_size,
                       max_new_tokens=max_new_tokens, greedy=True, max_text_tokens=0, device=device)
    t = time.perf_counter()
    summary = enrich(cfg, progress=False, model=model, processor=processor)
    return summary, time.perf_counter() - t


def compare(a: Path, b: Path) -> dict:
    import numpy as np

    from lego_core.data.schema import decode_npy
    from lego_core.data.shards import iter_samples

    sa = {s["__key__"]: s for s in iter_samples(str(a))}
    sb = {s["__key__"]: s for s in iter_samples(str(b))}
    assert sa.keys() == sb.keys(), "different samples"
    text_same = sum(sa[k]["enriched.txt"] == sb[k]["enriched.txt"] for k in sa)
    shape_same = sum(decode_npy(sa[k]["vllm_txt.npy"]).shape == decode_npy(sb[k]["vllm_txt.npy"]).shape for k in sa)
    diff_img = max(float(np.abs(decode_npy(sa[k]["vllm_img.npy"]).astype(np.float32)
                                - decode_npy(sb[k]["vllm_img.npy"])).max()) for k in sa)
    diff_txt = max(float(np.abs(decode_npy(sa[k]["vllm_txt.npy"]).astype(np.float32)
                                - decode_npy(sb[k]["vllm_txt.npy"])).max())
                   for k in sa if decode_npy(sa[k]["vllm_txt.npy"]).shape == decode_npy(sb[k]["vllm_txt.npy"]).shape)
    return {"samples": len(sa), "same_descriptions": text_same, "same_text_rows": shape_same,
            "max_abs_diff_h_i": diff_img, "max_abs_diff_h_t": diff_txt}


def split(model, processor, n: int, tokens: int, batch_size: int, repeats: int) -> dict:
    """Prefill vs decode cost per sample at `batch_size` and 1, in process CPU seconds (medians)."""
    import io
    import os
    import statistics

    from PIL import Image

    from lego_core.data.schema import decode_meta
    from lego_core.data.shards import iter_samples
    from lego_core.vllm.describe import describe_and_embed

    base = list(iter_samples(str(REPO / "shards")))
    images = [Image.open(io.BytesIO(base[i % len(base)]["input.jpg"])).convert("RGB") for i in range(n)]
    labels = [decode_meta(base[i % len(base)]["meta.json"]).label for i in range(n)]

    def cpu_seconds(bs, new_tokens):
        t = time.process_time()
        describe_and_embed(model, processor, images, labels, greedy=True, max_new_tokens=new_tokens, batch_size=bs)
        return time.process_time() - t

    cpu_seconds(batch_size, 2)                                        # warm-up
    runs = {(bs, k): [] for bs in (batch_size, 1) for k in (1, tokens)}
    for _ in range(repeats):                                          # interleaved
        for key in runs:
            runs[key].append(cpu_seconds(*key))
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"threads": __import__("torch").get_num_threads(), "load_average": [round(x, 1) for x in os.getloadavg()]}
    for bs in (batch_size, 1):
        out[f"batch_{bs}"] = {"prefill_ms_per_sample": round(1000 * med[(bs, 1)] / n, 1),
                              "decode_ms_per_token_per_sample": round(1000 * (med[(bs, tokens)] - med[(bs, 1)])
                                                                      / n / (tokens - 1), 2),
                              "cpu_s": round(med[(bs, tokens)], 2)}
    out["speedup"] = round(med[(1, tokens)] / med[(batch_size, tokens)], 2)
    out["ceiling_if_decode_were_free"] = round(med[(1, tokens)] / med[(batch_size, 1)], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", help="keep the files here (default: a temp folder, removed)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--split", action="store_true", help="prefill vs decode in CPU seconds (see above)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="--split: interleaved repeats, median")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lego_core.kit import make_tiny_llava
    from lego_core.vllm.load import embedding_shape, load_vllm

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lego-bench-enrich-"))
    try:
        t = time.perf_counter()
        folder = make_tiny_llava(work / "llava", image_size=224, patch_size=14, vision_hidden=256, vision_layers=4,
                                 text_hidden=512, text_layers=4, seed=0)
        model, processor = load_vllm(folder, device=args.device)
        build = time.perf_counter() - t
        if args.split:
            res = split(model, processor, args.samples, args.max_new_tokens, args.batch_size, args.repeats)
            if args.json:
                print(json.dumps(res, indent=2))
                return
            for bs in (args.batch_size, 1):
                r = res[f"batch_{bs}"]
                print(f"batch {bs:>2}: prefill {r['prefill_ms_per_sample']} ms/sample, decode "
                      f"{r['decode_ms_per_token_per_sample']} ms/token/sample, {r['cpu_s']} CPU s")
            print(f"speedup {res['speedup']}x (CPU time); ceiling if decoding were free "
                  f"{res['ceiling_if_decode_were_free']}x; {res['threads']} thread(s), load average "
                  f"{res['load_average']}")
            return
        inputs = make_inputs(work / "in", args.samples)
        m, d = embedding_shape(model)
        params = sum(p.numel() for p in model.parameters())
        # warm-up (first-call allocations, lazy imports) outside the timings
        run(model, processor, inputs[:1], work / "warm", args.batch_size, 2, args.device)
        batched, t_batched = run(model, processor, inputs, work / "batched", args.batch_size, args.max_new_tokens,
                                 args.device)
        single, t_single = run(model, processor, inputs, work / "single", 1, args.max_new_tokens, args.device)
        same = compare(work / "batched", work / "single")
        report = {
            "model": {"image_tokens": m, "width": d, "parameters": params, "device": str(model.device),
                      "dtype": str(model.dtype).replace("torch.", ""), "torch_threads": torch.get_num_threads(),
                      "built_in_s": round(build, 1)},
            "samples": args.samples, "max_new_tokens": args.max_new_tokens,
            "generated_tokens": {"batched": batched.tokens, "single": single.tokens},
            "batched": {"batch_size": args.batch_size, "seconds": round(t_batched, 2),
                        "samples_per_s": round(args.samples / t_batched, 3)},
            "single": {"batch_size": 1, "seconds": round(t_single, 2),
                       "samples_per_s": round(args.samples / t_single, 3)},
            "speedup": round(t_single / t_batched, 2),
            "same_outputs": same,
        }
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"LLaVA: {m} image tokens, width {d}, {params / 1e6:.1f}M parameters on {model.device} "
                  f"({report['model']['dtype']}, {torch.get_num_threads()} threads)")
            print(f"{args.samples} samples, greedy, {args.max_new_tokens} new tokens max "
                  f"({batched.tokens} / {single.tokens} generated)")
            print(f"batch size {args.batch_size}: {t_batched:.1f}s  {args.samples / t_batched:.2f} samples/s")
            print(f"batch size 1:  {t_single:.1f}s  {args.samples / t_single:.2f} samples/s")
            print(f"speedup: {t_single / t_batched:.2f}x")
            print(f"same descriptions: {same['same_descriptions']}/{same['samples']}; H_t rows equal: "
                  f"{same['same_text_rows']}/{same['samples']}; max |diff| H_i {same['max_abs_diff_h_i']:.2g}, "
                  f"H_t {same['max_abs_diff_h_t']:.2g} (float16)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
