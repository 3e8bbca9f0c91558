#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one call, each section under its own timeout, results in one folder:
#
#   bash benchmarks/gpu.sh [--out DIR] [--device cuda] [--budget SECONDS] [--dry-run]
#
#   1. env       versions, the GPU, flash-attn / nvidia-ml-py, which project packages import
#   2. classify  eager: LeMeViT-tiny/small/base, 224 px, batch 256, fp16 + bf16, flash-attn on/off, vs the paper
#   3. segment   `segment` end to end on a generated 16k x 16k scene vs the model alone on the same tiles,
#                with the share of wall time the GPU was busy (nvidia-ml-py); eager, bf16 (--precision auto),
#                --batch-size auto (a whole tile row of 37 tiles if it fits)
#   4. classify  compiled (torch.compile), tiny first, as long as the budget lasts
#   5. report    DIR/results.json and DIR/results.md (paste the tables into benchmarks/README.md)
#
# The default budget (540 s) fits a 10-minute device command; each section gets a share of it and is cut by
# `timeout`, so one hung section still leaves the others' results. `--device cpu --dry-run` runs everything at
# toy sizes on the CPU in well under a minute (tests/test_fastpath.py does).
#
# The device image: torch, timm, lightning, einops and nvidia-ml-py are there; rasterio, geopandas, shapely,
# pyogrio, torchgeo and segmentation-models-pytorch may not be, and the machine has no network. `classify`
# needs none of them (the models load from the source tree). For `segment`, carry wheels and install offline:
#
#   # here, once (wheels for the device's Python; check it with `python -V` there, 3.11 assumed):
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       -d wheels/ rasterio shapely pyogrio geopandas torchgeo segmentation-models-pytorch affine typer rich
#   # (wheels/ must be git-ignored and under the 64 MiB the device tool carries; drop what the image has)
#   # there, before this script (or pass --install to let it do this):
#   pip install --no-index --find-links wheels/ rasterio shapely pyogrio geopandas affine typer rich
#   pip install --no-index --find-links wheels/ --no-deps torchgeo segmentation-models-pytorch
#   pip install --no-deps --no-build-isolation -e .
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
DEVICE=cuda
BUDGET=540
DRY=()
INSTALL=0
PY=${PYTHON:-python}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --dry-run) DRY=(--dry-run); shift ;;
    --install) INSTALL=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
share() { local s=$(( $(left) * $1 / 100 )); (( s < 5 )) && s=5; echo "$s"; }

if (( INSTALL )); then
  "$PY" -m pip install --no-index --find-links wheels/ rasterio shapely pyogrio geopandas affine typer rich \
    && "$PY" -m pip install --no-index --find-links wheels/ --no-deps torchgeo segmentation-models-pytorch \
    && "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || echo "install failed: segment will report what is missing" >&2
fi

run() {  # run SECONDS SECTION ARGS...: one section under a timeout, its log beside the results
  local seconds=$1; shift
  echo "== $* (timeout ${seconds}s, ${DEVICE})" >&2
  timeout --kill-after=10 "$seconds" "$PY" benchmarks/gpu.py "$@" --out "$OUT" --device "$DEVICE" "${DRY[@]}" \
    > >(tee "$OUT/$1.log") 2>&1
  local rc=$?
  (( rc == 124 || rc == 137 )) && echo "$1: timed out after ${seconds}s" | tee -a "$OUT/$1.log" >&2
  return 0
}

run 60 env
"$PY" -c "import rasterio, geopandas, torchgeo, segmentation_models_pytorch" 2>/dev/null \
  || echo "segment needs the project installed: see the header of benchmarks/gpu.sh (or pass --install)" >&2
run "$(share 25)" classify --compile eager
mv "$OUT/classify.json" "$OUT/classify_eager.json" 2>/dev/null
run "$(share 55)" segment --compile off  # eager: compiling LeMeViT + UperNet would eat the section's time
if [[ ${#DRY[@]} -eq 0 ]]; then
  run "$(share 95)" classify --compile compiled
  mv "$OUT/classify.json" "$OUT/classify_compiled.json" 2>/dev/null
fi
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for name in ("classify_eager", "classify_compiled"):
    path = out / f"{name}.json"
    if path.exists():
        rows += json.loads(path.read_text())
if rows:
    (out / "classify.json").write_text(json.dumps(rows, indent=2))
EOF
"$PY" benchmarks/gpu.py report --out "$OUT" --device "$DEVICE"
echo "results: $OUT/results.md, $OUT/results.json ($(( $(date +%s) - START )) s)" >&2
