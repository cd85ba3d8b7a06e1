"""`nvc remote compress DIR` on a folder of DICOM files: one series archive per folder, verified by
restoring it locally byte for byte; a rerun skips it (the folder's zip is deterministic)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from dicom_series import real_crop, write_series, write_structured_report  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_codec")]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_remote_compress_treats_a_dicom_folder_as_series(service_settings, make_stack, tmp_path):
    from codec import dicom

    study = tmp_path / "study"
    write_series(study / "ct", real_crop("ct_head_phantom_thick_5mm.nii.gz", (32, 24, 3)), series_number=1)
    write_series(study / "mr", np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (16, 16, 2)), 4095).astype(np.uint16),
                 modality="MR", series_number=2, syntax="implicit")
    write_structured_report(study / "sr.dcm")
    stack = make_stack(service_settings)
    stack.start_worker()
    url = stack.start_api()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nvc.cli", "remote", "compress", str(study), "--server", url, "-o", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, cwd=REPO, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    archive = out / "study.nvc"
    assert "restored=source" in err, err
    assert dicom.is_archive_file(archive)
    report = dicom.decompress_dicom(archive, tmp_path / "back")
    assert report.ok and tree(tmp_path / "back") == tree(study)
    info = dicom.archive_info(archive.read_bytes())
    assert info["instances_coded"] == 5 and info["files_verbatim"] == 1
    again = subprocess.run(cmd, capture_output=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "skip" in again.stderr.decode(), again.stderr.decode()

    # and back: the archive restores to a zip of the original files, checked against a local restore
    back = tmp_path / "zips"
    proc = subprocess.run([sys.executable, "-m", "nvc.cli", "remote", "decompress", str(archive), "--server", url,
                           "-o", str(back), "--no-progress"], capture_output=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "restored=result" in proc.stderr.decode(), proc.stderr.decode()
    import zipfile

    with zipfile.ZipFile(back / "study.zip") as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == tree(study)
