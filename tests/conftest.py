import os
import subprocess
import sys
from pathlib import Path

import pytest

from click.testing import CliRunner

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
LEGO = str(Path(sys.executable).parent / "lego")


@pytest.fixture
def data_dir() -> Path:
    return DATA


def run_cli(*args: str, input: str | None = None):
    """Invoke `lego ARGS` in-process through click (fast); returns click's Result."""
    from lego_cli.main import cli

    return CliRunner().invoke(cli, list(map(str, args)), input=input, catch_exceptions=False)


def run_lego(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `lego` console script as a real subprocess."""
    env = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.run([LEGO, *map(str, args)], capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A tiny LLaVA folder (`make_tiny_llava`, seed 0), built once per test run: read it, never
    write into it (copy it first)."""
    from lego_core.kit import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "llava")


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory) -> Path:
    """A tiny InstructPix2Pix folder (64x64 latents' worth: ``sample_size=8``), built once per run;
    read-only like `tiny_llava`."""
    from lego_core.kit import make_tiny_instruct_pix2pix

    return make_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny-ip2p") / "ip2p", sample_size=8)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a 2-core machine: extra intra-op threads only fight each other (3x slower)."""
    import torch

    torch.set_num_threads(int(os.environ.get("LEGO_TEST_TORCH_THREADS", "1")))
    yield
