#!/usr/bin/env bash
# Chain the SLURM stages with job dependencies: tune-vllm -> enrich (array) -> train -> evaluate.
# Extraction and curation are CPU/API jobs; run them first (see scripts/pipeline.sh) or add them here.
#   WORK=work LLAVA=llava-hf/llava-1.5-7b-hf SD=stable-diffusion-v1-5/stable-diffusion-v1-5 bash scripts/slurm/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-work}
export WORK LLAVA=${LLAVA:-llava-hf/llava-1.5-7b-hf} SD=${SD:-stable-diffusion-v1-5/stable-diffusion-v1-5}

tune=$(sbatch --parsable --export=ALL,DATA="$WORK/curated/train-*.tar",VLLM="$LLAVA",OUT="$WORK/runs/llava" \
  scripts/slurm/tune_vllm.sbatch)
enrich=$(sbatch --parsable --dependency=afterok:$tune --array=0-7 \
  --export=ALL,IN="$WORK/curated/train-*.tar",VLLM="$WORK/runs/llava/model",OUT="$WORK/enriched/train-%06d.tar" \
  scripts/slurm/enrich.sbatch)
train=$(sbatch --parsable --dependency=afterok:$enrich --nodes=4 \
  --export=ALL,DATA="$WORK/enriched/train-*.tar",BASE="$SD",OUT="$WORK/runs/lego" scripts/slurm/train.sbatch)
evaluate=$(sbatch --parsable --dependency=afterok:$train --gpus=1 --time=4:00:00 --job-name=lego-eval \
  --wrap="lego evaluate $WORK/enriched/val-*.tar --model lego=$WORK/runs/lego/model -o $WORK/eval")
echo "tune-vllm $tune -> enrich $enrich -> train $train -> evaluate $evaluate"
