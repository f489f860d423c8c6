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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a 2-core machine: extra intra-op threads only fight each other (3x slower)."""
    import torch

    torch.set_num_threads(int(os.environ.get("LEGO_TEST_TORCH_THREADS", "1")))
    yield
