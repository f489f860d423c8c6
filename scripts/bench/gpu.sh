#!/usr/bin/env bash
# The GPU benchmark, one table at SD-1.5 size in bf16 (scripts/bench/gpu.py): training samples/s and
# MFU (ZeRO-2, cached latents, micro-batch 32), generation latency (100 steps, 3 branches) against
# diffusers' InstructPix2Pix, enrichment tokens/s with the real-width 2-layer LLaVA; and `lego
# generate`'s batching on generate.py's benchmark model (16 requests at batch 8 vs one at a time,
# peak memory with and without CPU offload). Planned for ≤ 8 minutes on one H200.
#
# On a CUDA machine without network, with a CUDA torch but none of the other packages:
#   here:  bash scripts/bench/gpu_wheels.sh            # the wheels, into gpu-wheels/ (git-ignored)
#   there: bash scripts/bench/gpu.sh                   # a venv over the machine's torch, offline install, run
#
#   bash scripts/bench/gpu.sh [--wheels DIR] [--python PY] [--no-install] [--tiny] [-- gpu.py options]
#
# --python: the interpreter whose torch to use (default: python3); the venv (.venv-gpu) sees its
# packages (--system-site-packages) and gets the wheels on top, offline (--no-index).
# --no-install: run with --python as it is (its packages already there). --tiny: the tiny models on
# the CPU in bf16 (what the test suite runs, so this script cannot rot); implies --no-install
# unless --wheels is given.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=python3
WHEELS=
INSTALL=1
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --tiny) TINY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$TINY" = 1 ] && [ -z "$WHEELS" ]; then INSTALL=0; fi
WHEELS=${WHEELS:-$REPO/gpu-wheels}

if [ "$INSTALL" = 1 ]; then
  if [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "gpu.sh: no $WHEELS/requirements.txt: run scripts/bench/gpu_wheels.sh on a machine with network first" >&2
    exit 2
  fi
  "$PY" -c 'import torch' 2>/dev/null || { echo "gpu.sh: $PY has no torch: pass --python with a CUDA torch" >&2; exit 2; }
  VENV=$REPO/.venv-gpu
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
  # --no-deps: the list is the whole closure, pinned; torch and its own dependencies stay the machine's
  "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
  PY=$VENV/bin/python
fi

export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$REPO"
if [ "$TINY" = 1 ]; then
  DS_ACCELERATOR=cpu exec "$PY" scripts/bench/gpu.py --size tiny --device cpu --dtype bf16 "$@"
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: torch sees no CUDA GPU here (--tiny runs on the CPU)")'
exec "$PY" scripts/bench/gpu.py --size sd15 --device cuda --dtype bf16 "$@"
