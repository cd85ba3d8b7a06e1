"""Archive every DICOM file pydicom (and pydicom-data) ships, restore it, compare byte for byte.

    python benchmarks/verify_dicom_corpus.py [--max-bytes N]

Prints files, coded instances, verbatim reasons, sizes and times; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-bytes", type=int, default=None, help="skip files larger than this")
    args = ap.parse_args(argv)
    from pydicom.data import get_testdata_files

    from codec import dicom
    from codec.dicom_inputs import InputFile

    paths = sorted(p for p in get_testdata_files() if os.path.isfile(p)
                   and (args.max_bytes is None or os.path.getsize(p) <= args.max_bytes))
    base = Path(os.path.commonpath(paths))
    files = [InputFile(Path(p).relative_to(base).as_posix(), Path(p).read_bytes()) for p in paths]
    t0 = time.perf_counter()
    data = dicom.compress_files(files)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = dicom.decompress_dicom(data, tmp)
        t2 = time.perf_counter()
        bad = [f.name for f in files if (Path(tmp) / f.name).read_bytes() != f.data] if report.ok else list(report.failed)
    info = dicom.archive_info(data)
    n_in = sum(len(f.data) for f in files)
    print(f"load average {os.getloadavg()[0]:.1f}; {len(files)} files, {n_in} bytes -> {len(data)} bytes "
          f"(ratio {n_in / len(data):.3f}); {info['instances_coded']} instances coded in {info['volumes']} volumes "
          f"({info['voxels']} voxels), {info['files_verbatim']} verbatim; compress {t1 - t0:.1f} s, restore {t2 - t1:.1f} s")
    for reason, n in sorted(info["verbatim_reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:>4}  {reason}")
    print("all byte-identical" if not bad else f"DIFFERENT: {bad[:10]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
