#!/usr/bin/env bash
# The LEGO pipeline as plain `lego` commands, one per stage, with the real-data options spelled out.
# Copy it and adapt the paths; every stage resumes when rerun with the same --out.
#
#   EPIC=/data/EPIC-KITCHENS LLAVA=liuhaotian/llava-v1.5-7b-hf SD=stable-diffusion-v1-5/stable-diffusion-v1-5 \
#   bash scripts/pipeline.sh
set -euo pipefail

EPIC=${EPIC:-/data/EPIC-KITCHENS}                         # videos: $EPIC/P01/videos/P01_11.MP4
EPIC_CSV=${EPIC_CSV:-$EPIC/annotations/EPIC_100_train.csv}
EPIC_VAL_CSV=${EPIC_VAL_CSV:-$EPIC/annotations/EPIC_100_validation.csv}
LLAVA=${LLAVA:-llava-hf/llava-1.5-7b-hf}                   # any transformers LLaVA folder or hub id
SD=${SD:-stable-diffusion-v1-5/stable-diffusion-v1-5}      # SD-1.5 layout (or an InstructPix2Pix folder)
LLM=${LLM:-gpt-3.5-turbo}                                  # curate: any OpenAI-compatible server
LLM_URL=${LLM_URL:-}                                       # empty: api.openai.com (needs OPENAI_API_KEY)
WORK=${WORK:-work}
METRICS=${METRICS:-$HOME/.cache/lego-metrics}              # squeezenet1_1-b8a52dc0.pth, egovlp.pth, inception weights

# 1. Frame pairs (X at start - 0.25 s, Y at start + 0.6 (stop - start)).
lego extract --dataset epic-kitchens --annotations "$EPIC_CSV" --videos "$EPIC" \
  --out "$WORK/extracted/train-%06d.tar" --workers 8
lego extract --dataset epic-kitchens --annotations "$EPIC_VAL_CSV" --videos "$EPIC" \
  --out "$WORK/extracted/val-%06d.tar" --workers 8
lego inspect "$WORK/extracted"

# 2. Detailed descriptions from an LLM (cached: a rerun never pays twice).
lego curate "$WORK"/extracted/train-*.tar --out "$WORK/curated/train-%06d.tar" --llm "$LLM" \
  ${LLM_URL:+--base-url "$LLM_URL"} --concurrency 16

# 3. Visual instruction tuning of LLaVA (3 epochs, lr 2e-5, ZeRO-3).
torchrun --nproc_per_node 8 -m lego_cli.main tune-vllm "$WORK"/curated/train-*.tar --vllm "$LLAVA" \
  --out "$WORK/runs/llava"

# 4. Descriptions + embeddings for every sample (train and val).
lego enrich "$WORK"/curated/train-*.tar --vllm "$WORK/runs/llava/model" --out "$WORK/enriched/train-%06d.tar"
lego enrich "$WORK"/extracted/val-*.tar --vllm "$WORK/runs/llava/model" --out "$WORK/enriched/val-%06d.tar"

# 5. The diffusion model (32 per GPU x 8 GPUs x accumulation 4, lr 1e-4, EMA; the paper's 20,000
#    optimizer steps by default, --max-steps to change).
torchrun --nproc_per_node 8 -m lego_cli.main train "$WORK"/enriched/train-*.tar --base "$SD" \
  --out "$WORK/runs/lego" --val-shards "$WORK/enriched/val-000000.tar"

# 6. Generate for the validation set and score it (EgoVLP, CLIP, FID, PSNR, LPIPS, BLIP).
lego evaluate "$WORK"/enriched/val-*.tar --model "lego=$WORK/runs/lego/model" -o "$WORK/eval" \
  --lpips-weights "$METRICS/squeezenet1_1-b8a52dc0.pth" --egovlp "$METRICS/epic_mir_plus.pth" --egovlp-frames 16
echo "report: $WORK/eval/report.html"
