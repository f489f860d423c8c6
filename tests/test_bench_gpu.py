"""scripts/bench/gpu.sh and gpu_wheels.sh: the GPU benchmark's tiny mode runs the same code on the CPU
(so the CUDA run cannot rot unnoticed), and the wheel gatherer pins the right packages and keeps to
its size limit. No GPU and no network here: the CUDA path differs only in sizes, device and dtype."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"


def _env(**extra) -> dict:
    # one thread: the tiny models gain nothing from two, and a busy machine makes two much slower
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels_dry_run() -> str:
    """What gpu_wheels.sh --dry-run prints: the pins and the pip command it would run."""
    r = subprocess.run(["bash", str(BENCH / "gpu_wheels.sh"), "--dry-run"], capture_output=True, text=True,
                       env=_env(PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    return r.stdout


def pins_in(dry_run: str) -> dict[str, str]:
    return dict(line.split("==") for line in dry_run.splitlines() if "==" in line and not line.startswith("#"))


def gpu_machine_python(tmp_path: Path) -> Path:
    """An interpreter that sees only what gpu.sh may count on the GPU machine having: torch with what
    it depends on, and the wheels gpu_wheels.sh gathers. This environment's site-packages is left
    out (`-S`); a folder of links to just those distributions' files stands in for it."""
    allowed, todo = {norm(n) for n in pins_in(wheels_dry_run())}, ["torch"]
    while todo:                                                     # torch's own closure
        try:
            dist = metadata.distribution(todo.pop())
        except metadata.PackageNotFoundError:
            continue
        allowed.add(norm(dist.metadata["Name"]))
        todo += [req.name for req in map(Requirement, dist.requires or [])
                 if (req.marker is None or req.marker.evaluate({"extra": ""})) and norm(req.name) not in allowed]
    site, packages = tmp_path / "gpu-site", Path(sysconfig.get_paths()["purelib"])
    site.mkdir()
    for dist in metadata.distributions():
        name = norm(dist.metadata["Name"])
        if name in allowed or name.startswith(("nvidia-", "cuda-")):
            for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
                if (packages / top).exists() and not (site / top).exists():
                    (site / top).symlink_to(packages / top)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    return python


def test_gpu_sh_tiny_runs_every_part_and_prints_one_table(tmp_path):
    """In bf16, as on the GPU, and with only the packages the GPU machine will have (no av, lpips,
    torchmetrics, openai: an import of one of them on the benchmark's path fails here as it would
    there). The CUDA run differs from this one only in sizes and device."""
    python = gpu_machine_python(tmp_path)
    env = _env(PYTHONPATH=str(tmp_path / "gpu-site"))
    for absent in ("av", "lpips", "torchmetrics", "openai"):
        assert subprocess.run([python, "-c", f"import {absent}"], env=env, capture_output=True).returncode == 1
    report = tmp_path / "report.json"
    r = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--tiny", "--python", str(python), "--",
                        "--dtype", "bf16", "--repeats", "1", "--json", str(report),
                        "--workdir", str(tmp_path / "models")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split(" | ")[0].strip() for line in r.stdout.splitlines() if " | " in line]
    assert rows == ["what", "train", "generate", "enrich", "batching"], r.stdout
    data = json.loads(report.read_text())
    train, gen, enrich, batching = data["train"], data["generate"], data["enrich"], data["batching"]
    assert batching["requests"] == 4 and batching["batch_size"] == 2 and batching["max_pixel_diff"] <= 2
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
    dry_run = wheels_dry_run()
    pins = pins_in(dry_run)
    names = {n.lower() for n in pins}
    for name in ("diffusers", "transformers", "deepspeed", "webdataset", "safetensors", "tokenizers",
                 "huggingface_hub"):
        assert pins[next(n for n in pins if n.lower() == name.lower())] == metadata.version(name)
    assert not {n for n in names if n == "torch" or n.startswith(("nvidia", "triton"))}
    assert "hf-xet" not in names and "lpips" not in names
    assert "--only-binary=:all:" in dry_run and "manylinux2014_x86_64" in dry_run


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
