#!/usr/bin/env bash
# The main job on a fresh machine: install, make the bundled sample videos + annotations (both
# formats), extract them into shards, and inspect the result. Output under out/sample (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-out/sample}
LEGO=.venv/bin/lego
.venv/bin/python scripts/make_sample.py "$OUT/source" >&2
$LEGO extract --dataset epic-kitchens --annotations "$OUT/source/epic-kitchens/EPIC_100_sample.csv" \
  --videos "$OUT/source/epic-kitchens/videos" --out "$OUT/shards/epic-%06d.tar" --workers 2
$LEGO extract --dataset ego4d --annotations "$OUT/source/ego4d/fho_main.json" \
  --videos "$OUT/source/ego4d/videos" --out "$OUT/shards/ego4d-%06d.tar"
$LEGO inspect "$OUT/shards"
