"""The web page with DICOM, in headless Chromium against a live `nvc serve`: a folder of DICOM
files is chosen with the folder picker, uploaded as many parts, archived; the page shows the
series (counts and dimensions only) and the downloaded archive restores the folder byte for byte.
Screenshot: test-artifacts/web-dicom-e2e.png."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))
import chromium  # noqa: E402
import nvc_live  # noqa: E402
from dicom_series import PATIENT_NAME, real_crop, write_series  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def live():
    reason = chromium.skip_reason() or nvc_live.codec_works()
    if reason:
        pytest.skip(reason)
    return nvc_live.server()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_dicom_folder_is_archived_in_the_browser(live, tmp_path):
    from playwright.sync_api import sync_playwright

    from codec import dicom

    study = tmp_path / "study"
    write_series(study / "ct", real_crop("ct_head_phantom_thick_5mm.nii.gz", (32, 24, 3)), series_number=1)
    write_series(study / "mr", np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (16, 16, 2)), 4095).astype(np.uint16),
                 modality="MR", series_number=2, description="T1")
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 1300})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(live.url + "/")
            page.get_by_label("or a DICOM folder").set_input_files(str(study))
            page.locator("#file-choice").filter(has_text="DICOM series").wait_for(timeout=20_000)
            assert "5 files" in page.locator("#file-choice").inner_text()
            page.get_by_role("button", name="Start").click()
            page.locator("#result").wait_for(state="visible", timeout=300_000)
            text = page.locator("#result-dicom").inner_text()
            assert "5 instances coded by NVC" in text and "32×24×3" in text and "T1" in text, text
            assert PATIENT_NAME.split("^")[0] not in page.content()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-dicom-e2e.png"), full_page=True)
            with page.expect_download(timeout=60_000) as info:
                page.locator("#download").click()
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
            assert not errors, errors
        finally:
            browser.close()
    assert saved.name == "study.nvc"
    report = dicom.decompress_dicom(saved, tmp_path / "back")
    assert report.ok and tree(tmp_path / "back") == {f"study/{k}": v for k, v in tree(study).items()}
