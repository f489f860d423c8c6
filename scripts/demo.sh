#!/usr/bin/env bash
# The main job on a fresh machine: install, then run the whole method end to end on a synthetic
# kitchen with tiny models that learn it (`lego demo`): extract -> curate -> tune-vllm -> enrich -> train ->
# generate -> evaluate. Artefacts under out/demo (or $1); a rerun skips finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} TOKENIZERS_PARALLELISM=false
exec .venv/bin/lego demo --out "${1:-out/demo}"
