"""Export of a DICOM archive to standard lossless transfer syntaxes, read back by pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("imagecodecs")

from codec import dicom  # noqa: E402
from codec.dicom_export import TRANSFER_SYNTAXES  # noqa: E402
from codec.dicom_inputs import gather  # noqa: E402
from dicom_series import real_crop, write_series, write_structured_report  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    ct = real_crop("ct_head_phantom_thick_5mm.nii.gz", (40, 32, 3)).astype(np.int32)
    write_series(root / "ct", (ct - 1024).astype(np.int16), series_number=1, syntax="big")
    mr = np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (32, 24, 2)), 4095).astype(np.uint16)
    write_series(root / "mr", mr, modality="MR", series_number=2, syntax="implicit", bits_stored=12, junk_high_bits=True)
    write_series(root / "s8", (ct[:17, :13, :2] // 16 - 64).clip(-128, 127).astype(np.int8), series_number=3)
    from pydicom.data import get_testdata_file

    for name in ("SC_rgb.dcm", "MR_small_bigendian.dcm", "rtdose.dcm", "JPEG-LL.dcm"):
        path = get_testdata_file(name)
        if path:
            shutil.copy(path, root / name)
    write_structured_report(root / "sr.dcm")
    return root


@pytest.fixture(scope="module")
def archive(study) -> bytes:
    return dicom.compress_files(gather(study))


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_export_reads_back_with_identical_pixels(study, archive, tmp_path, syntax):
    out = tmp_path / syntax
    report = dicom.decompress_dicom(archive, out, transfer_syntax=syntax)
    assert report.ok, report.failed
    ai = dicom.open_archive(archive)
    coded = {f["name"] for f in ai.files if f["storage"] == "coded"}
    uid = TRANSFER_SYNTAXES[syntax]
    for f in ai.files:
        original, exported = study / f["name"], out / f["name"]
        if f["name"] not in coded:
            assert exported.read_bytes() == original.read_bytes()  # verbatim files are written as they were
            continue
        a, b = pydicom.dcmread(original), pydicom.dcmread(exported)
        if f["pixels"]["bits_allocated"] > 16 and syntax != "explicit-little":
            assert exported.read_bytes() == original.read_bytes()  # 32-bit: kept, and said so
            assert any(f["name"] in p for p in report.problems)
            continue
        assert b.file_meta.TransferSyntaxUID == uid
        np.testing.assert_array_equal(b.pixel_array, a.pixel_array, err_msg=f"{f['name']} ({syntax})")
        assert b.PatientName == a.PatientName and b.SOPInstanceUID == a.SOPInstanceUID


def test_unknown_syntax_is_refused_before_any_work(archive, tmp_path):
    from codec.errors import UnsupportedInputError

    with pytest.raises(UnsupportedInputError, match="jpegls"):
        dicom.decompress_dicom(archive, tmp_path / "x", transfer_syntax="jpeg-xl")
    assert not (tmp_path / "x").exists()
