#!/usr/bin/env bash
# The test suite on a fresh machine: installs what it needs into .venv, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k extract).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
