"""The `lego` front end: instant start, help with examples, exit codes, one-line errors."""

import subprocess
import sys

import pytest

from conftest import run_cli, run_lego
from lego_cli.main import COMMANDS
from lego_core import __version__


# What each front-facing module set may not import at module level: `lego --help` and every
# command's start stay instant, and stages without torch (extract, curate, inspect) never pay for it.
LIGHT = {
    "cli": (("lego_cli.main",),
            ("torch", "diffusers", "transformers", "deepspeed", "webdataset", "av", "numpy", "gradio")),
    "data": (("lego_core.data", "lego_core.data.schema", "lego_core.data.shards", "lego_core.data.inspect",
              "lego_core.atomic"), ("torch", "webdataset", "numpy", "PIL")),
    "kit": (("lego_core.kit",), ("torch", "diffusers", "transformers")),
    "metrics": (("lego_core.metrics", "lego_core.metrics.runner", "lego_core.metrics.report",
                 "lego_cli.commands.evaluate"), ("torch", "transformers", "lpips", "torchmetrics")),
    "vllm": (("lego_core.vllm", "lego_core.vllm.enrich", "lego_core.vllm.describe", "lego_core.vllm.load",
              "lego_core.vllm.prompting", "lego_cli.commands.enrich"), ("torch", "transformers", "numpy", "PIL")),
}


@pytest.mark.parametrize("part", sorted(LIGHT))
def test_importing_imports_nothing_heavy(part):
    modules, heavy = LIGHT[part]
    code = (f"import sys, {', '.join(modules)}; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {', '.join(modules)} imported {out.strip()}"


def test_help_lists_every_command_and_each_has_an_example():
    result = run_cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
        sub = run_cli(name, "--help")
        assert sub.exit_code == 0
        assert "Example" in sub.output and f"lego {name}" in sub.output


def test_version_and_console_script():
    proc = run_lego("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_usage_errors_exit_2():
    assert run_lego("no-such-command").returncode == 2
    assert run_lego("extract").returncode == 2          # missing required options
    proc = run_lego("inspect", "/nonexistent/shards-{0..3}.tar")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lego: error:" in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = run_lego("--debug", "inspect", str(tmp_path / "missing.tar"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("command, module, function", [("train", "lego_core.diffusion.train", "train"),
                                                       ("tune-vllm", "lego_core.vllm.tune", "tune")])
def test_train_and_tune_vllm_share_the_engine_options(command, module, function, monkeypatch, tmp_path):
    import importlib

    from lego_core.engine.config import EngineOptions

    seen = []
    monkeypatch.setattr(importlib.import_module(module), function, lambda cfg: seen.append(cfg) or None)
    extra = ["--vllm", "x"] if command == "tune-vllm" else []
    result = run_cli(command, "s.tar", "--out", tmp_path / "run", *extra, "--batch-size", "3", "--grad-accum", "2",
                     "--zero", "1", "--precision", "fp32", "--grad-clip", "0.5", "--offload-optimizer")
    assert result.exit_code == 0, result.output
    assert seen[0].engine == EngineOptions(micro_batch=3, grad_accum=2, zero_stage=1, precision="fp32", grad_clip=0.5,
                                           offload_optimizer=True)
