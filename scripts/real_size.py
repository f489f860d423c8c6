"""The paper's model sizes through the real `lego` CLI on CPU, random weights (no download): one table
of stage, seconds (wall and CPU: on a shared machine the CPU seconds are the work done), seconds
per optimizer step, peak RSS. Driven by scripts/real_size.sh; not for CI (minutes per stage, up to
~20 GB of memory).

Models (lego_core.kit's presets, built once into WORK and reused):
- sd15/: SD-1.5 at its real size (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder 123 M);
  `lego train` widens the UNet to 8 input channels (InstructPix2Pix).
- llava/: LLaVA at Llama-2-13B's widths (5120, 40 heads, FFN 13824), 2 decoder layers, CLIP ViT-L/14
  at 224 px (M = 256 image tokens).

Stages (each one process under /usr/bin/time -v; a failed stage is reported and the next one runs):
  build-sd15, build-llava   the model folders
  enrich                    `lego enrich` 2 samples -> H_i 256 x 5120, H_t n x 5120; its printed storage
                            estimate is checked against the bytes written
  train                     `lego train` 2 optimizer steps, micro-batch 1, 256 px, fp32, EMA off, on the
                            enriched shards (conditioner at width 5120), latents encoded on the fly
  train-cached              the same with --cache-latents
  train-bf16                the same in bf16 (what fits when fp32 does not)
  generate                  `lego generate` 2 steps with the VLLM (the trained model, else an untrained
                            one built from sd15/ with the conditioner at width 5120)
  generate-plain            `lego generate` 2 steps, description conditioning, no VLLM (the smallest piece:
                            only the diffusion model in memory)

    bash scripts/real_size.sh [--work out/real-size] [--stages enrich,train,...] [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["build-sd15", "build-llava", "enrich", "train", "train-cached", "train-bf16", "generate", "generate-plain"]
TRAIN_COMMON = ["--max-steps", "2", "--batch-size", "1", "--grad-accum", "1", "--no-ema", "--resolution", "256",
                "--workers", "0", "--log-every", "1", "--checkpoint-every", "1000", "--overwrite"]


def lego() -> list[str]:
    return [str(Path(sys.executable).parent / "lego"), "-q"]


def build(work: Path, what: str, size: str) -> list[str]:
    """A child process that builds one model folder (one model in memory at a time)."""
    return [sys.executable, __file__, "--work", str(work), "--size", size, "--build", what]


def _build(work: Path, what: str, size: str) -> None:
    from lego_core.kit import make_llava_real_width, make_sd15_random, make_tiny_llava, make_tiny_sd

    if what == "sd15":
        (make_sd15_random if size == "real" else make_tiny_sd)(work / "sd15")
    elif what == "llava":
        (make_llava_real_width if size == "real" else make_tiny_llava)(work / "llava")
    elif what == "inputs":
        _inputs(work)
    elif what in ("lego-untrained", "lego-plain"):
        from lego_core.diffusion.build import build_from_pretrained

        joint = what == "lego-untrained"
        build_from_pretrained(work / "sd15", conditioning="description+joint" if joint else "description",
                              vllm=work / "llava" if joint else 5120).save_pretrained(work / what)


def _inputs(work: Path) -> None:
    """Two bundled samples in one shard, and one input frame for generate."""
    from lego_core.data.shards import ShardWriter, iter_samples

    (work / "in").mkdir(parents=True, exist_ok=True)
    samples = []
    for s in iter_samples(str(REPO / "shards")):
        samples.append({k: v for k, v in s.items() if k != "__url__"})
        if len(samples) == 2:
            break
    with ShardWriter(str(work / "in" / "in-%06d.tar"), max_samples=16) as w:
        for s in samples:
            w.write(s)
    (work / "frame.jpg").write_bytes(samples[0]["input.jpg"])


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    """Run under /usr/bin/time -v; seconds, peak RSS (GB), exit code, the output kept in `log`."""
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    seconds = time.perf_counter() - t
    text = log.read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", text)]
    return {"stage": name, "rc": rc, "seconds": round(seconds, 1), "cpu_s": round(sum(cpu), 1) if cpu else None,
            "peak_rss_gb": round(int(m.group(1)) / 2**20, 2) if m else None, "log": str(log)}


def step_seconds(run: Path) -> float | None:
    """Seconds of the second optimizer step, from the run's log.jsonl (the first includes warm-up)."""
    try:
        steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    except OSError:
        return None
    times = {r["step"]: r["time"] for r in steps if "step" in r and "time" in r and "event" not in r}
    return round(times[2] - times[1], 1) if 1 in times and 2 in times else None


def storage_check(work: Path, log: Path) -> str:
    """enrich's printed estimate (bytes per sample, at most) against the bytes the shards hold."""
    m = re.search(r"each sample gains up to ([0-9.]+) (MB|kB)", log.read_text(errors="replace"))
    estimate = float(m.group(1)) * (1e6 if m.group(2) == "MB" else 1e3) if m else None
    written, n = 0, 0
    for shard in sorted((work / "enriched").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(("vllm_img.npy", "vllm_txt.npy", "enriched.txt")):
                    written += member.size + 512                      # + its tar header
                n += member.name.endswith("meta.json")
    if not n:
        return "no enriched samples"
    per = written / n

    def size(b):
        return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"
    return (f"enrich storage: estimate {size(estimate)} per sample at most, written {size(per)} per sample "
            f"(H_i, H_t, description with their tar headers; {n} samples)" if estimate
            else f"enrich storage: written {size(per)} per sample (no estimate printed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "out" / "real-size"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--max-new-tokens", type=int, default=16, help="enrich / generate: tokens per description")
    ap.add_argument("--size", choices=["real", "tiny"], default="real",
                    help="tiny: the kit's tiny models, to check the script itself in seconds")
    ap.add_argument("--build", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work).resolve()
    if args.build:
        return _build(work, args.build, args.size)
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"--stages: unknown {sorted(unknown)}; choose from {','.join(STAGES)}")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env_note = f"load average {os.getloadavg()[0]:.1f} at start"
    if not (work / "in").is_dir():
        subprocess.run(build(work, "inputs", args.size), check=True, cwd=REPO)
    tokens = ["--max-new-tokens", str(args.max_new_tokens), "--greedy"]
    rows, notes = [], []
    for stage in stages:
        log = work / "logs" / f"{stage}.log"
        if stage in ("build-sd15", "build-llava"):
            what = stage.split("-")[1]
            if (work / what / ("model_index.json" if what == "sd15" else "config.json")).exists():
                continue
            cmd = build(work, what, args.size)
        elif stage == "enrich":
            cmd = lego() + ["enrich", str(work / "in"), "--vllm", str(work / "llava"), "--out",
                            str(work / "enriched" / "e-%06d.tar"), "--overwrite", "--batch-size", "2", *tokens]
            cmd.remove("-q")                             # the storage estimate is printed with the progress
        elif stage.startswith("train"):
            extra = {"train": ["--precision", "fp32"], "train-cached": ["--precision", "fp32", "--cache-latents"],
                     "train-bf16": ["--precision", "bf16"]}[stage]
            cmd = lego() + ["train", str(work / "enriched"), "--base", str(work / "sd15"), "--out",
                            str(work / "runs" / stage), *TRAIN_COMMON, *extra]
        elif stage == "generate-plain":
            model = work / "lego-plain"
            if not (model / "model_index.json").exists():
                subprocess.run(build(work, "lego-plain", args.size), check=True, cwd=REPO)
            cmd = lego() + ["generate", str(work / "frame.jpg"), "cut onion", "--model", str(model), "--steps", "2",
                            "--size", "256", "-o", str(work / "generated-plain.png")]
        else:  # generate
            model = next((work / "runs" / r / "model" for r in ("train", "train-cached", "train-bf16")
                          if (work / "runs" / r / "model" / "model_index.json").exists()), None)
            if model is None:
                model = work / "lego-untrained"
                if not (model / "model_index.json").exists():
                    subprocess.run(build(work, "lego-untrained", args.size), check=True, cwd=REPO)
            cmd = lego() + ["generate", str(work / "frame.jpg"), "cut onion", "--model", str(model), "--vllm",
                            str(work / "llava"), "--steps", "2", "--size", "256", "-o", str(work / "generated.png"),
                            *tokens]
            notes.append(f"generate used {model.relative_to(work)}")
        row = run_stage(stage, cmd, log)
        if stage.startswith("train"):
            row["s_per_step"] = step_seconds(work / "runs" / stage)
        if stage == "enrich" and row["rc"] == 0:
            notes.append(storage_check(work, log))
        rows.append(row)
        print(f"{stage}: exit {row['rc']}, {row['seconds']} s, peak RSS {row['peak_rss_gb']} GB", file=sys.stderr)
    print(f"{'stage':<15} {'exit':>4} {'seconds':>8} {'CPU s':>7} {'s/step':>7} {'peak RSS GB':>11}")
    for r in rows:
        sps = r.get("s_per_step")
        sps = "" if sps is None else sps
        print(f"{r['stage']:<15} {r['rc']:>4} {r['seconds']:>8} {r['cpu_s'] or '?':>7} {sps:>7} "
              f"{r['peak_rss_gb'] if r['peak_rss_gb'] is not None else '?':>11}")
    for note in [env_note, *notes]:
        print(f"- {note}")
    failed = [r for r in rows if r["rc"] != 0]
    for r in failed:
        print(f"- {r['stage']} failed (exit {r['rc']}; exit 137 or -9 = killed, out of memory): see {r['log']}")
    (work / "real-size.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
