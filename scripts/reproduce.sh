#!/usr/bin/env bash
# Reproduce the paper's Table 1 row for LEGO from the authors' released assets, and print our
# numbers beside the paper's.
#
#   scripts/reproduce.sh ego4d          # or: epickitchen
#
# What it does, with the authors' settings throughout:
#   1. `lego import checkpoint` their diffusion checkpoint (EMA weights, as they sampled with);
#   2. `lego import dataset` the test split (their `val` JSON, frames, descriptions and the VLLM
#      features H_i / H_t they released), so no VLLM has to run;
#   3. `lego evaluate --model`: generate every test sample (100 Euler-ancestral steps, guidance 7.5 /
#      1.5, seed 0, 256 px, their post-processing: min-max stretch, uint8, JPEG) and score it with
#      their metric settings: LPIPS on [0, 1] inputs (SqueezeNet), the dataset's EgoVLP checkpoint and
#      clip length (Ego4D: egovlp.pth, 4 frames; EPIC-KITCHENS: epic_mir_plus.pth, 16 frames), and
#      BLIP captions scored with EgoVLP's text encoder;
#   4. print the table: ours beside the paper's Table 1 figures.
# With VLLM=DIR (their LLaVA in the original layout) it is imported too and asked their question,
# "How does the person properly {} that is displayed in the video frame?", instead of using the
# released descriptions and features.
#
# Inputs (environment; defaults follow the authors' README layout):
#   DATA      the authors' dataset root (LEGO_Data: {ego4d,epickitchen}_val.json, EgoGen/...)
#   FEATURES  their vllm_features/ folder                                   [DATA/../vllm_features]
#   CKPT      their checkpoint [DATA/../{ego4d,epickitchen}_diffusion_with_vllm_feature.ckpt]
#   METRICS   folder with egovlp.pth, epic_mir_plus.pth, squeezenet1_1-b8a52dc0.pth,
#             weights-inception-2015-12-05-6726825d.pth, distilbert-base-uncased/
#   WORK      where everything is written                                    [work/reproduce-DATASET]
#   BASE      --base for `lego import checkpoint` (SD-1.5's configs are the default)
#   VLLM, VISION_TOWER           their LLaVA (original layout) and its CLIP tower folder: re-describe
#   CLIP_MODEL, BLIP_B, BLIP_L   CLIP and the two BLIP captioners (hub ids or folders)
#   STEPS, SIZE, LIMIT           generation steps / size (the paper: 100 / 256), the first N samples
#   TRUST_PICKLE=1               let `lego import checkpoint` unpickle the Lightning file fully
#   EVAL_ARGS                    more `lego evaluate` options (e.g. --device cuda:1 --batch-size 64)
set -euo pipefail

DATASET=${1:-}
case "$DATASET" in
  ego4d) EGOVLP_FILE=egovlp.pth; EGOVLP_FRAMES=4 ;;
  epickitchen) EGOVLP_FILE=epic_mir_plus.pth; EGOVLP_FRAMES=16 ;;
  *) echo "usage: scripts/reproduce.sh ego4d|epickitchen (see the comments at the top for the inputs)" >&2; exit 2 ;;
esac
: "${DATA:?set DATA to the dataset root the authors released (LEGO_Data)}"
FEATURES=${FEATURES:-$(dirname "$DATA")/vllm_features}
CKPT=${CKPT:-$(dirname "$DATA")/${DATASET}_diffusion_with_vllm_feature.ckpt}
METRICS=${METRICS:-$(dirname "$DATA")/metrics}
WORK=${WORK:-work/reproduce-$DATASET}
LEGO=${LEGO:-lego}
for path in "$DATA" "$FEATURES" "$CKPT" "$METRICS"; do
  [ -e "$path" ] || { echo "reproduce.sh: $path not found (see the comments at the top of this script)" >&2; exit 2; }
done
mkdir -p "$WORK"

# 1. Their diffusion model.
import_args=()
[ -n "${BASE:-}" ] && import_args+=(--base "$BASE")
[ "${TRUST_PICKLE:-0}" = 1 ] && import_args+=(--trust-pickle)
[ -f "$WORK/model/model_index.json" ] || \
  $LEGO -q import checkpoint "$CKPT" --out "$WORK/model" "${import_args[@]}" >&2

# 2. Their test split (the `val` JSON), with their descriptions and VLLM features.
dataset_args=()
[ -n "${LIMIT:-}" ] && dataset_args+=(--limit "$LIMIT")
$LEGO -q import dataset "$DATA" --split val --dataset "$DATASET" --features "$FEATURES" \
  --out "$WORK/shards/val-%06d.tar" "${dataset_args[@]}" >&2

# (Optional) their VLLM, asking their question: new descriptions and embeddings.
shards=("$WORK"/shards/val-*.tar)
if [ -n "${VLLM:-}" ]; then
  vllm_args=()
  [ -n "${VISION_TOWER:-}" ] && vllm_args+=(--vision-tower "$VISION_TOWER")
  [ -f "$WORK/llava/config.json" ] || $LEGO -q import vllm "$VLLM" --out "$WORK/llava" "${vllm_args[@]}" >&2
  $LEGO -q enrich "${shards[@]}" --vllm "$WORK/llava" --out "$WORK/enriched/val-%06d.tar" \
    --question "How does the person properly {} that is displayed in the video frame?" >&2
  shards=("$WORK"/enriched/val-*.tar)
fi

# 3. Generate and score, the authors' way.
# shellcheck disable=SC2086  # EVAL_ARGS is a list of options
$LEGO -q evaluate "${shards[@]}" --model "lego=$WORK/model" -o "$WORK/eval" --json \
  --steps "${STEPS:-100}" --size "${SIZE:-256}" --guidance 7.5 --image-guidance 1.5 --seed 0 \
  --authors-postprocess --lpips-net squeeze --lpips-authors-range \
  --lpips-weights "$METRICS/squeezenet1_1-b8a52dc0.pth" \
  --fid-weights "$METRICS/weights-inception-2015-12-05-6726825d.pth" \
  --egovlp "$METRICS/$EGOVLP_FILE" --egovlp-frames "$EGOVLP_FRAMES" \
  --egovlp-tokenizer "$METRICS/distilbert-base-uncased" --blip-text-encoder egovlp \
  --clip-model "${CLIP_MODEL:-openai/clip-vit-large-patch14}" \
  --blip-model "b=${BLIP_B:-Salesforce/blip-image-captioning-base}" \
  --blip-model "l=${BLIP_L:-Salesforce/blip-image-captioning-large}" \
  ${EVAL_ARGS:-} > "$WORK/eval.json"

# 4. Ours beside the paper's.
PYTHON=${PYTHON:-python3}
"$PYTHON" - "$DATASET" "$WORK/eval.json" <<'EOF'
import json
import sys

# The paper's Table 1, row "LEGO" (arXiv:2312.03849v2 / ECCV 2024, "Comparison with prior image
# manipulation approaches"), one dict per dataset. None: not copied in yet; fill each from the
# paper, keeping this comment's source, and the row prints beside ours.
PAPER = {
    "ego4d": {"egovlp": None, "egovlp_plus": None, "clip": None, "fid": None, "psnr": None, "lpips": None,
              "blip_b": None, "blip_l": None},
    "epickitchen": {"egovlp": None, "egovlp_plus": None, "clip": None, "fid": None, "psnr": None, "lpips": None,
                    "blip_b": None, "blip_l": None},
}
LOWER_IS_BETTER = {"fid", "lpips"}

dataset, path = sys.argv[1], sys.argv[2]
summary = json.load(open(path))
columns, rows = summary["table"]["columns"], summary["table"]["rows"]
ours = dict(zip(columns, rows[0]))
n = ours.get("n")


def cell(value):
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


print(f"LEGO on {dataset}, {n} test samples (the authors' checkpoint, settings and post-processing)")
print(f"{'metric':<14}{'ours':>12}{'paper':>12}")
for metric, paper in PAPER[dataset].items():
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    print(f"{metric + ' ' + arrow:<14}{cell(ours.get(metric)):>12}{cell(paper):>12}")
if all(v is None for v in PAPER[dataset].values()):
    print("(the paper's figures are not in scripts/reproduce.sh yet: copy them from Table 1 of arXiv:2312.03849)")
EOF
