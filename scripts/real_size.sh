#!/usr/bin/env bash
# The paper's sizes through the real `lego` CLI on CPU with random weights (no download): SD-1.5
# (UNet 860 M, VAE, CLIP ViT-L/14 text encoder, conditioner at VLLM width 5120) and a LLaVA at
# Llama-2-13B's widths with 2 decoder layers. enrich 2 samples -> train 2 steps (fp32, fp32 with
# cached latents, bf16) -> generate 2 steps; prints one table: stage, exit, seconds, s/step, peak RSS.
#
#   bash scripts/real_size.sh [--work out/real-size] [--stages build-sd15,generate-plain] [--max-new-tokens 16]
#
# Not for CI, and not while others share the machine: fp32 training at this size needs ~17 GB
# (UNet + gradients + AdamW state ≈ 14 GB before activations). The models are built once into
# --work (≈ 8.5 GB on disk) and reused. Stages and what each measures: scripts/real_size.py.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$REPO/scripts/real_size.py" "$@"
