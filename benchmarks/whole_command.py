"""Whole-command speed and memory: `nvc compress` / `nvc decompress` against tomoz in Python.

    PYTHONPATH=. python benchmarks/whole_command.py [--repeat 3] [--data ../shared/data] [--tmp DIR]

Two checks from issue 9, each a fresh process measured with /usr/bin/time (wall seconds and
peak RSS), repeated and interleaved (nvc, tomoz, nvc, tomoz, ...), medians printed:

1. a 512x512x280 CT: ct_head_phantom_thin_1mm stacked with its mirror image along z, written
   as a .nii; `nvc compress` and `nvc decompress` (to .nii) against a Python process that
   imports tomoz, reads the same .nii with nibabel, encodes and writes the stream (resp.
   reads the stream, decodes and writes the .nii);
2. `nvc decompress` of the MR phantom against a Python process that imports tomoz and
   decodes the same volume.

Every output is checked voxel for voxel against the input. The load (`uptime`) is printed:
other processes on the machine slow both codecs alike, which is why runs are interleaved.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

TOMOZ_ENCODE = """
import sys, numpy as np, nibabel as nib, tomoz
img = nib.load(sys.argv[1]); a = np.asarray(img.dataobj.get_unscaled())
zyx = np.ascontiguousarray(a.transpose(2, 1, 0))
open(sys.argv[2], "wb").write(tomoz.encode(zyx))
"""
TOMOZ_DECODE = """
import sys, numpy as np, nibabel as nib, tomoz
ref = nib.load(sys.argv[1])
zyx = tomoz.decode(open(sys.argv[2], "rb").read())
nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), ref.affine, ref.header), sys.argv[3])
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    h = float(wall.group(1) or 0)
    seconds = h * 3600 + float(wall.group(2)) * 60 + float(wall.group(3))
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    return seconds, rss


def same_voxels(a: Path, b: Path) -> bool:
    import nibabel as nib

    x = np.asarray(nib.load(str(a)).dataobj.get_unscaled())
    y = np.asarray(nib.load(str(b)).dataobj.get_unscaled())
    return x.dtype == y.dtype and np.array_equal(x, y)


def median_row(name: str, runs: list[tuple[float, float]], raw_mb: float) -> str:
    wall = statistics.median(r[0] for r in runs)
    rss = statistics.median(r[1] for r in runs)
    return f"| {name} | {wall:.2f} s | {raw_mb / wall:.1f} MB/s | {rss:.0f} MB | {', '.join(f'{r[0]:.2f}' for r in runs)} |"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--skip-large", action="store_true")
    args = ap.parse_args()
    import nibabel as nib

    py = sys.executable
    nvc = [py, "-m", "nvc.cli"]
    tmp = Path(tempfile.mkdtemp(dir=args.tmp, prefix="nvc-whole-"))
    print(f"load before: {os.getloadavg()}", flush=True)
    rows = []
    cases = []
    if not args.skip_large:
        thin = nib.load(os.path.join(args.data, "ct_head_phantom_thin_1mm.nii.gz"))
        a = np.asarray(thin.dataobj.get_unscaled())
        stacked = np.concatenate([a, a[:, :, ::-1]], axis=2)
        big = tmp / "ct_stack_512x512x280.nii"
        nib.save(nib.Nifti1Image(stacked, thin.affine, thin.header), str(big))
        cases.append(("512x512x280 CT", big, stacked.nbytes / 1e6, True))
        del a, stacked
    mr_src = nib.load(os.path.join(args.data, "mr_phantom_t1_3d_lowres.nii.gz"))
    mr = tmp / "mr_phantom.nii"
    nib.save(nib.Nifti1Image(np.asarray(mr_src.dataobj.get_unscaled()), mr_src.affine, mr_src.header), str(mr))
    cases.append(("MR phantom 128x128x96", mr, np.asarray(mr_src.dataobj.get_unscaled()).nbytes / 1e6, False))
    for label, src, raw_mb, with_encode in cases:
        nvc_file, tz_file = tmp / "x.nvc", tmp / "x.tomoz"
        out_nvc, out_tz = tmp / "out_nvc.nii", tmp / "out_tz.nii"
        enc = {"nvc": [], "tomoz": []}
        dec = {"nvc": [], "tomoz": []}
        for _ in range(args.repeat):
            enc["nvc"].append(timed([*nvc, "compress", str(src), "-o", str(nvc_file), "--force"]))
            enc["tomoz"].append(timed([py, "-c", TOMOZ_ENCODE, str(src), str(tz_file)]))
            dec["nvc"].append(timed([*nvc, "decompress", str(nvc_file), "-o", str(out_nvc), "--force"]))
            dec["tomoz"].append(timed([py, "-c", TOMOZ_DECODE, str(src), str(tz_file), str(out_tz)]))
        assert same_voxels(src, out_nvc) and same_voxels(src, out_tz), "a round trip differs"
        sizes = f"nvc {nvc_file.stat().st_size * 8 / (raw_mb * 5e5):.3f} bpv, tomoz {tz_file.stat().st_size * 8 / (raw_mb * 5e5):.3f} bpv"
        rows.append(f"\n{label} ({raw_mb:.0f} MB raw; {sizes}):\n")
        rows.append("| command | median wall | MB/s | median peak RSS | runs (s) |")
        rows.append("|---|---|---|---|---|")
        if with_encode:
            rows.append(median_row("nvc compress", enc["nvc"], raw_mb))
            rows.append(median_row("tomoz encode (python)", enc["tomoz"], raw_mb))
        rows.append(median_row("nvc decompress", dec["nvc"], raw_mb))
        rows.append(median_row("tomoz decode (python)", dec["tomoz"], raw_mb))
    print("\n".join(rows))
    print(f"\nload after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
