#!/usr/bin/env bash
# NVC (default profile) against tomoz on every volume of ../shared/data, repeated; medians by
# benchmarks/median_bench.py. Usage: benchmarks/speed_vs_tomoz.sh [REPEATS] [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
out=${2:-benchmarks/results/speed_vs_tomoz}
mkdir -p "$out"
for i in $(seq 1 "$repeats"); do
  echo "run $i: load $(cut -d' ' -f1-3 /proc/loadavg)"
  python -m nvc.cli bench ../shared/data/*.nii.gz --profiles default --codecs tomoz -q --json "$out/run$i.json"
done
python benchmarks/median_bench.py "$out"/run*.json
