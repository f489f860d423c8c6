"""`lego demo` in a reduced form (a small world, few steps): every stage's artefacts and the report's
learning section, then a rerun that skips them all. (Whether training learns: test_learning.py.)"""

import json
import math
import tarfile
from pathlib import Path

import pytest

from conftest import run_lego


def keys_of(pattern_dir: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(pattern_dir.glob(f"{prefix}-*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".meta.json")]
    return keys


def members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name.split(".", 1)[1] for m in tar.getmembers()}


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_skips_them(tmp_path):
    out = tmp_path / "demo"
    args = ["-q", "demo", "--out", str(out), "--clips", "4", "--test-clips", "2", "--vae-steps", "2",
            "--train-steps", "2", "--tune-epochs", "1", "--gen-steps", "2", "--json"]
    first = run_lego(*args, env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    shards = out / "shards"
    assert len(keys_of(shards / "extracted", "epic")) == 6 and len(keys_of(shards / "extracted", "ego4d")) == 6
    train, test = keys_of(shards / "split", "train"), keys_of(shards / "split", "test")
    assert len(train) == len(test) == 6 and not set(train) & set(test)
    split = json.loads((out / "source" / "split.json").read_text())
    assert {k for k in test if any(v in k for v in split["test_videos"])} == set(test)     # held out by clip
    assert "curated.txt" in members(shards / "curated" / "train-000000.tar")
    enriched = members(shards / "enriched" / "test-000000.tar")
    assert {"enriched.txt", "vllm_img.npy", "vllm_txt.npy", "curated.txt"} <= enriched
    tuned = Path(result["artefacts"]["tune-vllm: vllm"])
    assert (tuned / "config.json").is_file() and (tuned / "model.safetensors").is_file()
    for run in ("lego-description-joint", "lego-label"):
        assert (out / "runs" / run / "model" / "model_index.json").is_file()
    assert (out / "runs" / "lego-description-joint" / "model" / "conditioner" / "config.json").is_file()
    generated = sorted((out / "eval" / "generated" / "description-joint").glob("*.png"))
    assert [p.stem for p in generated] == sorted(test)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    learning = metrics["learning"]["description+joint"]
    assert learning["summary"]["samples"] == 6 and {c["name"] for c in learning["checks"]} >= {
        "psnr_changed gain over the input frame (dB)", "psnr_unchanged (dB)"}
    assert set(metrics["learning"]) == {"description+joint", "label"}
    assert {"tuned", "untuned", "tuned, blank image"} == set(metrics["vllm_descriptions"])
    assert math.isfinite(metrics["vae"]["psnr"]) and isinstance(metrics["passed"], bool)
    report = (out / "eval" / "report.html").read_text()
    assert "What the model learned" in report and "data:image/png" in report
    assert result["report"] == str(out / "eval" / "report.html") and "psnr_changed" in result["table"]

    again = run_lego(*args, env={"DS_ACCELERATOR": "cpu"}, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["seconds"] == {}        # every stage was already done
