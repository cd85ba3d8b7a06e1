"""A DICOM series costs (almost) what the same volume costs from NIfTI: issue 12's 2 % bound."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("pydicom")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "ct_head_phantom_thick_5mm.nii.gz"


@pytest.mark.slow
def test_head_ct_series_within_two_percent_of_nifti():
    if not DATA.exists():
        pytest.skip(f"real data not available at {DATA}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from dicom_vs_nifti import measure

    r = measure(DATA)  # also checks both round trips, every DICOM file byte for byte
    assert r["files"] == 28 and r["dicom_header_bytes"] > 0
    assert r["dicom_nvc_bytes"] <= 1.02 * r["nifti_nvc_bytes"], r
