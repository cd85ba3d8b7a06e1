"""Round-trip every volume of a corpus through the `nvc` CLI and through a partial decode.

For each .nii/.nii.gz file: `nvc compress` -> `nvc decompress` (to .nii.gz) -> compare voxels,
dtype and affine with the original (nibabel); then `codec.decode(data, slices=(a, b))` for a
slice range in the middle of the volume -> compare with the original's slices a..b-1.
Prints one line per volume and exits non-zero when anything differs.

    python benchmarks/verify_corpus.py ../shared/data/*.nii.gz
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def verify(path: Path, work: Path) -> tuple[bool, str]:
    nvc = [sys.executable, "-m", "nvc.cli"]
    packed = work / (path.name + ".nvc")
    back = work / ("back-" + path.name)
    t0 = time.perf_counter()
    subprocess.run([*nvc, "compress", str(path), "-o", str(packed), "-q"], check=True)
    t1 = time.perf_counter()
    subprocess.run([*nvc, "decompress", str(packed), "-o", str(back), "-q"], check=True)
    t2 = time.perf_counter()
    a, b = nib.load(str(path)), nib.load(str(back))
    va, vb = np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled())
    cli_ok = va.dtype == vb.dtype and np.array_equal(va, vb) and np.array_equal(a.affine, b.affine)

    import codec

    data = packed.read_bytes()
    z = va.shape[2]
    lo, hi = z // 3, max(z // 3 + 1, (2 * z) // 3)
    part = codec.decode(data, slices=(lo, hi))
    part_ok = part.dtype == va.dtype and np.array_equal(part, va[:, :, lo:hi])
    bpv = 8 * len(data) / va.size
    line = (
        f"{path.name}: CLI round trip {'ok' if cli_ok else 'DIFFERS'}, decode(slices=({lo}, {hi})) "
        f"{'ok' if part_ok else 'DIFFERS'}; {bpv:.3f} bits/voxel; compress {t1 - t0:.1f}s, decompress {t2 - t1:.1f}s"
    )
    return cli_ok and part_ok, line


def main(argv: list[str]) -> int:
    files = [Path(p) for p in argv]
    if not files:
        print(__doc__)
        return 2
    ok_all = True
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            ok, line = verify(path, Path(tmp))
            ok_all &= ok
            print(line, flush=True)
    print("all verified" if ok_all else "SOME ROUND TRIPS DIFFER")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
