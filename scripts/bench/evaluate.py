"""Benchmark: `lego evaluate`'s full metric set (PSNR, LPIPS, FID, CLIP, BLIP) batched, vs the
authors' way — one image at a time through every model, FID updated with batches of 1 — with the
same tiny random models (kit) and the same images on disk, in one run. Prints images/s and the ratio.

    python scripts/bench/evaluate.py [--n 64] [--size 256] [--batch-size 32] [--threads 0] [--repeats 2]

Both sides read the same files (a generated folder, a reference folder with KEY.txt descriptions)
and compute the same numbers (the script checks the means agree). FID features: the kit's tiny CNN
(`--fid-model`), as InceptionV3 weights cannot be downloaded here; LPIPS: SqueezeNet (random
weights, real size); CLIP and BLIP: the kit's tiny models.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def make_data(root: str, n: int, size: int, seed: int = 0) -> tuple[str, str]:
    from PIL import Image

    from lego_core.kit.tokenizers import corpus

    rng = np.random.RandomState(seed)
    texts = corpus(n, seed=seed)[-n:]
    gen, ref = os.path.join(root, "gen"), os.path.join(root, "ref")
    os.makedirs(gen), os.makedirs(ref)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([np.sin(6 * xx + i) * 0.5 + 0.5, np.cos(5 * yy + i) * 0.5 + 0.5, xx * yy], -1) * 255
        r = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        g = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(r).save(os.path.join(ref, f"s{i:05d}.jpg"), quality=95)
        Image.fromarray(g).save(os.path.join(gen, f"s{i:05d}.png"))
        with open(os.path.join(ref, f"s{i:05d}.txt"), "w") as f:
            f.write(texts[i])
    return gen, ref


def authors_way(gen_dir: str, ref_dir: str, m: dict) -> dict:
    """One image at a time, as the authors' evaluation scripts do."""
    import lpips  # noqa: F401  (the LPIPS model is built the same way as ours)
    import torch
    from PIL import Image
    from torchmetrics.image.fid import FrechetInceptionDistance
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

    from lego_core.metrics.fid import hf_feature_extractor
    from lego_core.metrics.lpips_metric import load_lpips

    lp = load_lpips("squeeze", m["squeeze"])
    fid = FrechetInceptionDistance(feature=hf_feature_extractor(m["fid"]))
    clip = CLIPModel.from_pretrained(m["clip"]).eval()
    clip_proc = CLIPProcessor.from_pretrained(m["clip"])
    blip = BlipForConditionalGeneration.from_pretrained(m["blip"]).eval()
    blip_proc = BlipProcessor.from_pretrained(m["blip"])
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    size = clip.config.vision_config.image_size

    def clip_img(im):  # ClipSimilarity.encode_image: [0, 1] floats, torch bicubic (no antialias), normalise
        x = torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False)
        f = clip.get_image_features(pixel_values=(x - mean) / std).pooler_output
        return torch.nn.functional.normalize(f, dim=-1)

    def clip_txt(t):
        ids = clip_proc.tokenizer([t], return_tensors="pt", truncation=True, max_length=77)
        return torch.nn.functional.normalize(clip.get_text_features(**ids).pooler_output, dim=-1)

    scores = {k: [] for k in ("psnr", "lpips", "clip", "blip_b")}
    secs = {k: 0.0 for k in ("psnr", "lpips", "fid", "clip", "blip")}
    tick = time.perf_counter
    with torch.no_grad():
        for name in sorted(os.listdir(gen_dir)):
            key = os.path.splitext(name)[0]
            g = Image.open(os.path.join(gen_dir, name)).convert("RGB")
            r = Image.open(os.path.join(ref_dir, key + ".jpg")).convert("RGB")
            desc = open(os.path.join(ref_dir, key + ".txt")).read().strip()
            t = tick()
            ga, ra = np.asarray(g, np.float64) / 255, np.asarray(r, np.float64) / 255
            scores["psnr"].append(10 * np.log10(1 / max(np.mean((ga - ra) ** 2), 1e-10)))
            t, secs["psnr"] = tick(), secs["psnr"] + tick() - t
            gt = torch.from_numpy(np.array(g)).permute(2, 0, 1)[None]
            rt = torch.from_numpy(np.array(r)).permute(2, 0, 1)[None]
            scores["lpips"].append(float(lp(gt.float() / 127.5 - 1, rt.float() / 127.5 - 1)))
            t, secs["lpips"] = tick(), secs["lpips"] + tick() - t
            fid.update(rt, real=True)
            fid.update(gt, real=False)
            t, secs["fid"] = tick(), secs["fid"] + tick() - t
            scores["clip"].append(100 * float((clip_img(g) * clip_img(r)).sum()))
            t, secs["clip"] = tick(), secs["clip"] + tick() - t
            inp = blip_proc(images=g, text="a picture of", return_tensors="pt")
            out = blip.generate(**inp, num_beams=3, min_length=5, max_length=20)
            cap = blip_proc.decode(out[0], skip_special_tokens=True)[len("a picture of"):].strip()
            scores["blip_b"].append(100 * float((clip_txt(cap) * clip_txt(desc)).sum()))
            secs["blip"] += tick() - t
    out = {k: float(np.mean(v)) for k, v in scores.items()}
    t = tick()
    out["fid"] = float(fid.compute())
    secs["fid"] += tick() - t
    out["_seconds"] = secs
    return out


def ours(gen_dir: str, ref_dir: str, m: dict, batch_size: int) -> dict:
    from lego_core.metrics.runner import EvalConfig, evaluate

    cfg = EvalConfig(lpips_weights=m["squeeze"], fid_model=m["fid"], clip_model=m["clip"],
                     blip_models=(f"b={m['blip']}",), batch_size=batch_size, device="cpu", report_samples=0)
    res = evaluate({"bench": gen_dir}, ref_dir, cfg).sets[0]
    out = {k: (v.get("mean") if "mean" in v else v.get("value")) for k, v in res.metrics.items()}
    out["_seconds"] = res.timings
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timed runs of each way (best kept)")
    args = ap.parse_args()

    import torch
    import torchvision
    from transformers.utils import logging as hf_logging

    from lego_core.kit.metric_models import make_tiny_blip, make_tiny_clip, make_tiny_fid_features

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        m = {"squeeze": os.path.join(tmp, "squeeze.pth"), "clip": str(make_tiny_clip(os.path.join(tmp, "clip"))),
             "blip": str(make_tiny_blip(os.path.join(tmp, "blip"))),
             "fid": str(make_tiny_fid_features(os.path.join(tmp, "fid")))}
        torch.save(torchvision.models.squeezenet1_1().state_dict(), m["squeeze"])
        gen, ref = make_data(tmp, args.n, args.size)
        ours(gen, ref, m, args.batch_size)  # warm-up (first-call overheads), not timed
        # This machine is shared: interleave the two ways, keep each one's best wall and CPU time.
        wall = {"ours": [], "authors": []}
        cpu = {"ours": [], "authors": []}
        results: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, fn in (("ours", lambda: ours(gen, ref, m, args.batch_size)),
                             ("authors", lambda: authors_way(gen, ref, m))):
                t0, c0 = time.perf_counter(), time.process_time()
                res = fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                results[name] = res
        t_ours, t_auth = min(wall["ours"]), min(wall["authors"])
        c_ours, c_auth = min(cpu["ours"]), min(cpu["authors"])
        a, b = results["ours"], results["authors"]
    for k in b:
        if k.startswith("_"):
            continue
        if not np.isclose(a[k], b[k], rtol=1e-3, atol=1e-3):
            print(f"warning: {k} differs: ours {a[k]:.5f} vs authors' way {b[k]:.5f}", file=sys.stderr)
    print(f"{args.n} images {args.size}x{args.size}, torch threads {torch.get_num_threads()}, "
          "metrics psnr,lpips,fid,clip,blip")
    print(f"ours (batched, batch {args.batch_size}):  {t_ours:7.2f} s  {args.n / t_ours:7.2f} images/s  "
          f"(CPU time {c_ours:.2f} s)")
    print(f"authors' way (one at a time):   {t_auth:7.2f} s  {args.n / t_auth:7.2f} images/s  "
          f"(CPU time {c_auth:.2f} s)")
    print(f"ratio: {t_auth / t_ours:.2f}x wall, {c_auth / c_ours:.2f}x CPU time (best of "
          f"{args.repeats} interleaved runs each)")
    print("seconds per metric (ours / authors' way, last run): " + ", ".join(
        f"{k} {a['_seconds'].get(k, 0):.2f}/{b['_seconds'][k]:.2f}" for k in b["_seconds"]))
    print("means (ours / authors' way): " + ", ".join(f"{k} {a[k]:.4f}/{b[k]:.4f}" for k in b if not k.startswith("_")))


if __name__ == "__main__":
    main()
