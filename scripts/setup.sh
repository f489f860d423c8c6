#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install lego into it.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lego-installed
want=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
# torch first and pinned: these wheels lie on local disk on the project machines, and the pair
# imports cleanly (torchvision is needed by lpips); see ../shared/ENVIRONMENT.md.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" >&2
.venv/bin/python -m pip install -q -e ".[dev]" >&2
echo "$want" > "$stamp"
