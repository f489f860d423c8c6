#!/usr/bin/env bash
# Gather the wheels gpu.sh installs on a GPU machine that has no network and a CUDA torch but none
# of diffusers, transformers, deepspeed, webdataset: the Python packages the benchmark imports and
# everything they need, minus torch and what torch itself depends on (the machine has those).
# Versions are this checkout's environment's (.venv), so the GPU runs what the tests ran.
#
#   bash scripts/bench/gpu_wheels.sh [--out gpu-wheels] [--python-version 3.11] [--find-links DIR]...
#                                    [--max-mb 60] [--dry-run] [--check]
#
# Wheels only: pure Python, or manylinux x86-64 for --python-version (the GPU machine's Python).
# DeepSpeed publishes only an sdist: its pure-Python wheel is built here (`pip wheel`, no compiler,
# cached by pip after the first time). --find-links DIR looks in DIR first (a wheel cache; with
# --no-index nothing is downloaded). Writes OUT/requirements.txt (exact pins) for gpu.sh and fails
# when the folder exceeds --max-mb (--check: only that, on an existing OUT). OUT is git-ignored:
# never commit wheels.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
OUT=$REPO/gpu-wheels
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
MAX_MB=60
DRY=0
CHECK=0
NO_INDEX=()
LINKS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    --find-links) LINKS+=(--find-links "$2"); shift 2 ;;
    --no-index) NO_INDEX=(--no-index); shift ;;
    --max-mb) MAX_MB=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

check_size() {
"$PY" - "$OUT" "$MAX_MB" <<'EOF'
import sys
from pathlib import Path

out, limit = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(out.glob("*.whl"), key=lambda p: -p.stat().st_size)
total = sum(p.stat().st_size for p in wheels) / 1e6
for p in wheels[:8]:
    print(f"  {p.stat().st_size / 1e6:6.1f} MB  {p.name}", file=sys.stderr)
print(f"{len(wheels)} wheels, {total:.1f} MB in {out} (limit {limit:g} MB)")
if total > limit:
    sys.exit(f"gpu_wheels.sh: {total:.1f} MB is over the {limit:g} MB limit")
EOF
}
if [ "$CHECK" = 1 ]; then check_size; exit; fi

# The closure of what scripts/bench/gpu.py imports, pinned to the installed versions. torch, its
# CUDA libraries and its own dependencies are left out: gpu.sh installs over the machine's torch.
pins=$("$PY" - <<'EOF'
import re
from importlib import metadata

from packaging.requirements import Requirement

ROOTS = ["diffusers", "transformers", "deepspeed", "webdataset", "accelerate", "safetensors", "tqdm", "numpy",
         "pillow", "pyyaml", "packaging"]
TORCH_SIDE = {"torch", "triton", "filelock", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2",
              "markupsafe", "fsspec", "setuptools"}
# Needed only to download from the Hub (hf-xet) or by command-line tools (typer, rich): nothing the
# benchmark imports (checked: it runs with them blocked), and 6 MB of the 60.
NOT_NEEDED = {"hf-xet", "typer", "rich", "pygments", "markdown-it-py", "mdurl", "shellingham"}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


seen, pins = set(), []


def walk(name):
    key = norm(name)
    if key in seen or key in TORCH_SIDE or key in NOT_NEEDED or key.startswith(("nvidia-", "cuda-")):
        return
    seen.add(key)
    dist = metadata.distribution(name)
    pins.append(f"{dist.metadata['Name']}=={dist.version}")
    for req in map(Requirement, dist.requires or []):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            walk(req.name)


for root in ROOTS:
    walk(root)
print("\n".join(sorted(pins, key=str.lower)))
EOF
)
binary=$(echo "$pins" | grep -vi '^deepspeed==' || true)
deepspeed=$(echo "$pins" | grep -i '^deepspeed==' || true)
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
           --platform manylinux_2_34_x86_64 --platform linux_x86_64)

echo "$(echo "$pins" | wc -l) packages for Python $PYVER, linux x86-64 -> $OUT" >&2
if [ "$DRY" = 1 ]; then
  echo "$pins"
  echo "# pip download --no-deps --only-binary=:all: ${PLATFORMS[*]} --python-version $PYVER --implementation cp" \
       "-d $OUT ${LINKS[*]} ${NO_INDEX[*]} <the pins above but deepspeed>"
  echo "# pip wheel --no-deps -w $OUT ${LINKS[*]} ${NO_INDEX[*]} $deepspeed"
  exit 0
fi

mkdir -p "$OUT"
rm -f "$OUT"/*.whl          # the folder is this script's: what a previous run gathered must not count
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYVER" \
  --implementation cp -d "$OUT" "${LINKS[@]}" "${NO_INDEX[@]}" $binary
if [ -n "$deepspeed" ]; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps -w "$OUT" "${LINKS[@]}" "${NO_INDEX[@]}" "$deepspeed"
fi
echo "$pins" > "$OUT/requirements.txt"

check_size
