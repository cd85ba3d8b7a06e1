"""Does a DICOM series cost more than the same volume from NIfTI? (issue 12: within 2 %)

For each NIfTI volume: write it as a CT/MR series with a realistic scanner header (one file
per slice, private tags; tests/dicom_series.py), archive the folder with `codec.dicom`, code the
NIfTI with `codec.compress_file`, check both round trips, and print the sizes. Header bytes
count on both sides (the NIfTI header in SRCH, every DICOM file's header in DHDR).

    python benchmarks/dicom_vs_nifti.py ../shared/data/ct_head_phantom_thick_5mm.nii.gz [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the series builder shared with the tests


def measure(nifti: Path, profile: str = "default") -> dict:
    import numpy as np

    from codec import dicom
    from codec.api import info
    from codec.dicom_inputs import gather
    from codec.files import compress_bytes, read_volume
    from dicom_series import write_series

    vf = read_volume(nifti)
    vol = np.asarray(vf.array)
    modality = "MR" if Path(nifti).name.startswith("mr") else "CT"
    spacing = tuple(vf.spacing[:3]) if vf.spacing and len(vf.spacing) >= 3 else (1.0, 1.0, 1.0)
    t0 = time.perf_counter()
    nvc = compress_bytes(Path(nifti).read_bytes(), profile=profile)
    t_nifti = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        write_series(folder, vol, modality=modality, spacing=spacing, description=Path(nifti).name)
        files = gather(folder)
        dicom_bytes = sum(len(f.data) for f in files)
        t0 = time.perf_counter()
        archive = dicom.compress_files(files, profile=profile)
        t_dicom = time.perf_counter() - t0
        report = dicom.decompress_dicom(archive, Path(tmp) / "back")
        assert report.ok, report.failed
        for f in files:
            assert (Path(tmp) / "back" / f.name).read_bytes() == f.data, f.name
    d = dicom.archive_info(archive)
    return {
        "volume": Path(nifti).name,
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "files": d["files"],
        "dicom_input_bytes": dicom_bytes,
        "nifti_nvc_bytes": len(nvc),
        "nifti_bits_per_voxel": 8 * len(nvc) / vol.size,
        "dicom_nvc_bytes": len(archive),
        "dicom_bits_per_voxel": 8 * len(archive) / vol.size,
        "dicom_volume_bytes": d["volume_bytes"],
        "dicom_header_bytes": d["header_bytes"],
        "dicom_index_bytes": d["index_bytes"],
        "excess_percent": 100.0 * (len(archive) - len(nvc)) / len(nvc),
        "nifti_header_kept_bytes": info(nvc)["source_header_bytes"],
        "encode_s_nifti": t_nifti,
        "encode_s_dicom": t_dicom,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [measure(p, args.profile) for p in args.files]
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("| volume | shape | files | DICOM in | NIfTI .nvc | DICOM .nvc (volume + headers + index) | bits/voxel NIfTI / DICOM | excess |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {tuple(r['shape'])} | {r['files']} | {r['dicom_input_bytes']} | {r['nifti_nvc_bytes']} | "
              f"{r['dicom_nvc_bytes']} ({r['dicom_volume_bytes']} + {r['dicom_header_bytes']} + {r['dicom_index_bytes']}) | "
              f"{r['nifti_bits_per_voxel']:.4f} / {r['dicom_bits_per_voxel']:.4f} | {r['excess_percent']:+.2f} % |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
