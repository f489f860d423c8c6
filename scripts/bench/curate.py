"""Benchmark: `lego curate` with --concurrency 16 vs 1 against a local fake LLM server, one run each.

200 samples (the bundled ones, repeated under new keys) and a server on 127.0.0.1 that takes 50 ms
per request (tests/curate_server.py, run as its own process so it does not share our GIL). Both
runs start with an empty cache, so every sample is one request. Prints samples/s of both and the
ratio (goal >= 8x), and checks every sample was curated exactly once in both runs.

    .venv/bin/python scripts/bench/curate.py [--samples 200] [--latency 0.05] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lego_core.curate.run import CurateConfig, curate  # noqa: E402
from lego_core.data.shards import ShardWriter, iter_samples  # noqa: E402


def make_inputs(folder: Path, n: int) -> str:
    base = list(iter_samples(str(REPO / "shards")))
    with ShardWriter(str(folder / "in-%06d.tar"), max_samples=100) as w:
        for i in range(n):
            src = base[i % len(base)]
            meta = json.loads(src["meta.json"])
            meta["action_id"] = f"{meta['action_id']}-b{i}"
            key = f"{meta['dataset']}-{meta['video_id']}-{meta['action_id']}"
            w.write({"__key__": key, "input.jpg": src["input.jpg"], "target.jpg": src["target.jpg"], "meta.json": meta})
    return str(folder / "in-*.tar")


def keys_written(folder: Path) -> list[str]:
    keys = []
    for p in sorted(folder.glob("*.tar")):
        with tarfile.open(p) as tar:
            keys += [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".curated.txt")]
    return keys


def run_once(inputs: str, out: Path, url: str, concurrency: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    cfg = CurateConfig(inputs=[inputs], out=str(out) + "/", base_url=url, llm="fake", concurrency=concurrency,
                       retry_base_delay=0.05, timeout=30)
    t = time.perf_counter()
    summary = curate(cfg, progress=False, environ={"OPENAI_API_KEY": "sk-bench"})
    seconds = time.perf_counter() - t
    keys = keys_written(out)
    assert len(keys) == len(set(keys)) == summary.written, "a sample was written twice or lost"
    return seconds, summary.written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "curate_server.py"), "--latency",
                               str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            inputs = make_inputs(tmp / "in", args.samples)
            os.environ.setdefault("NO_PROXY", "127.0.0.1")
            t1, n1 = run_once(inputs, tmp / "c1", url, 1)
            tn, nn = run_once(inputs, tmp / "cn", url, args.concurrency)
        assert n1 == nn == args.samples, (n1, nn)
        print(f"{args.samples} samples, server latency {args.latency * 1000:.0f} ms per request")
        print(f"--concurrency 1:  {t1:6.2f} s  {n1 / t1:7.1f} samples/s")
        print(f"--concurrency {args.concurrency}: {tn:6.2f} s  {nn / tn:7.1f} samples/s")
        print(f"speed-up: {t1 / tn:.1f}x (goal >= 8x)")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
