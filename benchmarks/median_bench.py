"""Medians of repeated `nvc bench --json` runs: NVC against tomoz per volume (README table).

    python benchmarks/median_bench.py run1.json run2.json ...

Per volume and codec: median encode and decode MB/s over the runs, bits/voxel (identical in
every run: both codecs are deterministic), and NVC's speed ratio to tomoz; then the means the
issue-9 targets are stated in (mean MB/s, mean bits/voxel, slowest decode ratio).
"""

from __future__ import annotations

import json
import statistics
import sys


def main(paths: list[str]) -> int:
    runs = [json.load(open(p)) for p in paths]
    names = [v["name"] for v in runs[0]["volumes"]]
    cols = ("nvc_default", "tomoz")
    print(f"{len(runs)} runs; machine: {runs[0]['environment'].get('cpu', '?')}\n")
    print("| volume | shape | NVC bits/voxel | tomoz bits/voxel | NVC encode MB/s | tomoz encode MB/s | NVC decode MB/s | tomoz decode MB/s | decode ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    agg = {c: {"enc": [], "dec": [], "bpv": []} for c in cols}
    ratios = []
    for i, name in enumerate(names):
        cells = {}
        for c in cols:
            rs = [r["volumes"][i]["results"][c] for r in runs]
            if not all(x["verified"] for x in rs):
                raise SystemExit(f"{name}: {c} round trip not verified")
            cells[c] = (statistics.median(x["encode_MBps"] for x in rs), statistics.median(x["decode_MBps"] for x in rs),
                        rs[0]["bits_per_voxel"])
            agg[c]["enc"].append(cells[c][0])
            agg[c]["dec"].append(cells[c][1])
            agg[c]["bpv"].append(cells[c][2])
        ratio = cells["nvc_default"][1] / cells["tomoz"][1]
        ratios.append(ratio)
        shape = "x".join(map(str, runs[0]["volumes"][i]["shape"]))
        n, t = cells["nvc_default"], cells["tomoz"]
        print(f"| {name} | {shape} | {n[2]:.3f} | {t[2]:.3f} | {n[0]:.2f} | {t[0]:.2f} | {n[1]:.2f} | {t[1]:.2f} | {ratio:.2f}x |")
    m = {c: {k: statistics.mean(v) for k, v in agg[c].items()} for c in cols}
    n, t = m["nvc_default"], m["tomoz"]
    print(f"| **mean** | | **{n['bpv']:.3f}** | **{t['bpv']:.3f}** | **{n['enc']:.2f}** | **{t['enc']:.2f}** | **{n['dec']:.2f}** | **{t['dec']:.2f}** | min {min(ratios):.2f}x |")
    print(f"\nmean encode ratio {n['enc'] / t['enc']:.2f}x, mean decode ratio {n['dec'] / t['dec']:.2f}x, "
          f"slowest decode ratio {min(ratios):.2f}x, mean bits/voxel {n['bpv']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
