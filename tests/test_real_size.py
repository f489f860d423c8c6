"""scripts/real_size.sh drives the real CLI stage by stage and prints one table; `--size tiny` runs
the same driver on the kit's tiny models so the script is checked here (the real sizes are not for
CI: minutes per stage and up to ~20 GB)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_size_script_runs_its_stages_and_prints_the_table(tmp_path):
    work = tmp_path / "rs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": os.environ.get("PYTHON", str(REPO / ".venv/bin/python"))}
    r = subprocess.run(["bash", str(REPO / "scripts/real_size.sh"), "--size", "tiny", "--work", str(work),
                        "--stages", "build-llava,enrich,build-sd15,generate", "--max-new-tokens", "4"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    table = [line.split()[0] for line in r.stdout.splitlines() if line and not line.startswith("-")]
    assert table == ["stage", "build-llava", "enrich", "build-sd15", "generate"], r.stdout
    rows = json.loads((work / "real-size.json").read_text())["rows"]
    assert all(row["rc"] == 0 and row["peak_rss_gb"] > 0 and row["cpu_s"] > 0 for row in rows)
    assert "enrich storage: estimate" in r.stdout                  # enrich's estimate against the bytes written
    assert "generate used lego-untrained" in r.stdout               # no trained model: the untrained joint one
    assert (work / "generated.png").stat().st_size > 0
