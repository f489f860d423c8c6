"""scripts/bench/gpu.sh and gpu_wheels.sh: the GPU benchmark's tiny mode runs the same code on the CPU
(so the CUDA run cannot rot unnoticed), and the wheel gatherer pins the right packages and keeps to
its size limit. No GPU and no network here: the CUDA path differs only in sizes, device and dtype."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"


def _env(**extra) -> dict:
    # one thread: the tiny models gain nothing from two, and a busy machine makes two much slower
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def test_gpu_sh_tiny_runs_every_part_and_prints_one_table(tmp_path):
    """In bf16, as on the GPU: the CUDA run differs from this one only in sizes and device."""
    report = tmp_path / "report.json"
    r = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--tiny", "--python", sys.executable, "--",
                        "--dtype", "bf16", "--repeats", "1", "--json", str(report),
                        "--workdir", str(tmp_path / "models")],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split(" | ")[0].strip() for line in r.stdout.splitlines() if " | " in line]
    assert rows == ["what", "train", "generate", "enrich"], r.stdout
    data = json.loads(report.read_text())
    train, gen, enrich = data["train"], data["generate"], data["enrich"]
    assert train["samples_per_s"] > 0 and train["tflop_per_step"] > 0    # torch's FLOP counter saw the step
    assert train["mfu"] is None                                           # no peak known for a CPU
    assert gen["steps"] == 2 and gen["ip2p_s"] > 0 and gen["lego_joint_s"] > 0
    assert enrich["batched"]["tokens"] > 0 and enrich["single"]["tokens"] == enrich["batched"]["tokens"]
    assert train["unet_dtype"] == gen["unet_dtype"] == enrich["dtype"] == "bfloat16"


def test_gpu_sh_without_wheels_says_what_to_run(tmp_path):
    r = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--wheels", str(tmp_path / "none"), "--python", sys.executable],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2
    assert "gpu_wheels.sh" in r.stderr and "Traceback" not in r.stderr


def test_gpu_wheels_pins_the_benchmarks_closure_without_torch():
    r = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), "--dry-run"], capture_output=True, text=True,
                       env=_env(PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    pins = dict(line.split("==") for line in r.stdout.splitlines() if "==" in line and not line.startswith("#"))
    names = {n.lower() for n in pins}
    for name in ("diffusers", "transformers", "deepspeed", "webdataset", "safetensors", "tokenizers",
                 "huggingface_hub"):
        assert pins[next(n for n in pins if n.lower() == name.lower())] == metadata.version(name)
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia", "triton"))}
    assert "hf-xet" not in names and "lpips" not in names
    assert "--only-binary=:all:" in r.stdout and "manylinux2014_x86_64" in r.stdout


def test_gpu_wheels_refuses_a_folder_over_its_limit(tmp_path):
    (tmp_path / "big-1.0-py3-none-any.whl").write_bytes(b"\0" * 1_500_000)
    run = ["bash", str(BENCH / "gpu_wheels.sh"), "--check", "--out", str(tmp_path)]
    over = subprocess.run(run + ["--max-mb", "1"], capture_output=True, text=True, env=_env(PYTHON=sys.executable))
    assert over.returncode == 1 and "over the 1 MB limit" in over.stderr
    within = subprocess.run(run + ["--max-mb", "2"], capture_output=True, text=True, env=_env(PYTHON=sys.executable))
    assert within.returncode == 0 and "1.5 MB" in within.stdout


def test_the_wheel_and_venv_folders_are_never_committed():
    for path in ("gpu-wheels/x.whl", ".venv-gpu/bin/python"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not git-ignored"
