#!/usr/bin/env bash
# Bench NVC against JPEG-LS, JPEG 2000, HTJ2K, JPEG XL (e7, e9) and tomoz on every volume of the
# development corpus (../shared/data next to the repo, or $NVC_DATA), in one run on the same data.
# Writes benchmarks/results/bench.json, benchmarks/results/bench.md and the chart docs/img/bench.png.
#   bash benchmarks/run_bench.sh                       # default profile, default codecs
#   PROFILES=default,gpu CODECS=jpegls,jxl_e7 bash benchmarks/run_bench.sh smallest.nii.gz ...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${NVC_DATA:-../shared/data}"
PROFILES="${PROFILES:-default}"
CODECS="${CODECS:-jpegls,j2k,htj2k,jxl_e7,jxl_e9,tomoz}"
OUT="${OUT:-benchmarks/results}"
if [ "$#" -gt 0 ]; then files=("$@"); else files=("$DATA"/*.nii.gz); fi
if [ ! -e "${files[0]}" ]; then echo "run_bench.sh: no volumes found in $DATA" >&2; exit 1; fi
mkdir -p "$OUT"
if [ -x .venv/bin/nvc ]; then NVC=.venv/bin/nvc; else NVC=nvc; fi
"$NVC" bench "${files[@]}" --profiles "$PROFILES" --codecs "$CODECS" --json "$OUT/bench.json" --md "$OUT/bench.md" \
  --plot "${PLOT:-docs/img/bench.png}"
