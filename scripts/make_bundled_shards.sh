#!/usr/bin/env bash
# Rebuild shards/ (the bundled sample, already extracted) from the synthetic sample videos.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python scripts/make_sample.py "$tmp/source" >/dev/null
.venv/bin/lego -q extract --dataset epic-kitchens --annotations "$tmp/source/epic-kitchens/EPIC_100_sample.csv" \
  --videos "$tmp/source/epic-kitchens/videos" --out "$tmp/shards/epic-%06d.tar"
.venv/bin/lego -q extract --dataset ego4d --annotations "$tmp/source/ego4d/fho_main.json" \
  --videos "$tmp/source/ego4d/videos" --out "$tmp/shards/ego4d-%06d.tar"
rm -f shards/*.tar
cp "$tmp"/shards/*.tar shards/
.venv/bin/lego inspect shards/
