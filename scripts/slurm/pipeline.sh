#!/usr/bin/env bash
# Chain the SLURM stages with job dependencies: tune-vllm -> enrich train and val (arrays) -> train
# (after the train enrich) -> evaluate (after train and the val enrich).
# Extraction and curation are CPU/API jobs; run them first (see scripts/pipeline.sh) or add them here.
#   WORK=work LLAVA=llava-hf/llava-1.5-7b-hf SD=stable-diffusion-v1-5/stable-diffusion-v1-5 bash scripts/slurm/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-work}
export WORK LLAVA=${LLAVA:-llava-hf/llava-1.5-7b-hf} SD=${SD:-stable-diffusion-v1-5/stable-diffusion-v1-5}
LEGO=${LEGO:-.venv/bin/lego}
mkdir -p logs          # the jobs' --output=logs/...: SLURM does not create the folder

# tune_vllm.sbatch reads the base model from BASE (VLLM is enrich.sbatch's: the tuned model).
tune=$(sbatch --parsable --export="ALL,DATA=$WORK/curated/train-*.tar,BASE=$LLAVA,OUT=$WORK/runs/llava" \
  scripts/slurm/tune_vllm.sbatch)
enrich=$(sbatch --parsable --dependency="afterok:$tune" --array=0-7 \
  --export="ALL,IN=$WORK/curated/train-*.tar,VLLM=$WORK/runs/llava/model,OUT=$WORK/enriched/train-%06d.tar" \
  scripts/slurm/enrich.sbatch)
# The validation frames (extracted, not curated: curation is only for tuning) need the same
# descriptions and embeddings for evaluation; this array runs beside the training one.
enrich_val=$(sbatch --parsable --dependency="afterok:$tune" --array=0-1 \
  --export="ALL,IN=$WORK/extracted/val-*.tar,VLLM=$WORK/runs/llava/model,OUT=$WORK/enriched/val-%06d.tar" \
  scripts/slurm/enrich.sbatch)
train=$(sbatch --parsable --dependency="afterok:$enrich" --nodes=4 \
  --export="ALL,DATA=$WORK/enriched/train-*.tar,BASE=$SD,OUT=$WORK/runs/lego" scripts/slurm/train.sbatch)
evaluate=$(sbatch --parsable --dependency="afterok:$train:$enrich_val" --gpus=1 --time=4:00:00 --job-name=lego-eval \
  --output="logs/%x-%j.out" \
  --wrap="$LEGO evaluate '$WORK/enriched/val-*.tar' --model 'lego=$WORK/runs/lego/model' -o '$WORK/eval'")
echo "tune-vllm $tune -> enrich $enrich + val $enrich_val -> train $train -> evaluate $evaluate"
