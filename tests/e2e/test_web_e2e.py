"""The web page, end to end in headless Chromium against a live `nvc serve`.

A real volume (the smallest of ../shared/data) is chosen in the page, uploaded, followed to
success and downloaded through the page's link; the downloaded .nvc must match the job's
SHA-256 and decode, locally, to exactly the voxels of the source. A screenshot of the
finished page is kept as a test artefact: test-artifacts/web-e2e.png (path printed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))
import chromium  # noqa: E402
import nvc_live  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def live():
    reason = chromium.skip_reason() or nvc_live.codec_works()
    if reason:
        pytest.skip(reason)
    if not nvc_live.PHANTOM.is_file():
        pytest.skip(f"{nvc_live.PHANTOM} is not here (the shared data set)")
    return nvc_live.server()


@pytest.fixture(scope="module")
def browser(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 1300})
    page = context.new_page()
    messages: list[str] = []
    page.on("pageerror", lambda exc: messages.append(f"page error: {exc}"))
    page.on("console", lambda msg: messages.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.goto(live.url + "/")
    yield page
    context.close()
    script_errors = [m for m in messages if "page error" in m]
    assert not script_errors, script_errors


def test_compress_a_real_volume_in_the_browser_and_download_it(page, live, tmp_path):
    import numpy as np

    import codec

    # accessible names: every control is reachable by its label
    chooser = page.get_by_label("Choose a file")
    start = page.get_by_role("button", name="Start")
    assert start.is_disabled()
    chooser.set_input_files(str(nvc_live.PHANTOM))
    assert "will be compressed" in page.locator("#file-choice").inner_text()
    # keyboard: focus the Start button and press Enter
    start.focus()
    page.keyboard.press("Enter")

    result = page.locator("#result")
    result.wait_for(state="visible", timeout=300_000)
    assert page.locator("#error").is_hidden()
    assert page.get_by_role("status").inner_text() == "Done."
    assert float(page.locator("#upload-progress").evaluate("e => e.value")) == 1.0
    ratio = page.locator("#result-ratio").inner_text()
    bpv = float(page.locator("#result-bpv").inner_text())
    assert ": 1 vs the upload" in ratio and "vs the raw voxels" in ratio
    assert 0 < bpv < 16

    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("link", name="Download mr_phantom_t1_3d_lowres.nvc", exact=True).click()
    download = info.value
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-e2e.png"
    page.screenshot(path=str(shot), full_page=True)  # the finished job: progress, ratio, bits/voxel, recent list
    print(f"\nscreenshot of the finished page: {shot}")
    assert shot.stat().st_size > 10_000
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.name == "mr_phantom_t1_3d_lowres.nvc"

    # the file checks out against the job record and decodes to the source voxels
    job_id = page.locator("#download").get_attribute("data-job-id")
    with urllib.request.urlopen(f"{live.url}/jobs/{job_id}") as response:
        job = json.load(response)
    data = saved.read_bytes()
    assert hashlib.sha256(data).hexdigest() == job["output_sha256"]
    assert len(data) == job["output_size"]
    assert abs(job["bits_per_voxel"] - bpv) < 1e-3
    decoded = codec.decode(data)
    source = codec.read_volume(nvc_live.PHANTOM)
    source = getattr(source, "array", source[0] if isinstance(source, tuple) else source)
    assert decoded.shape == source.shape and decoded.dtype == source.dtype
    assert np.array_equal(decoded, source)

    # recent jobs of this browser: listed, and still there after a reload
    page.reload()
    row = page.locator(f"#recent tbody tr[data-job-id='{job_id}']")
    row.wait_for(timeout=10_000)
    assert "mr_phantom_t1_3d_lowres.nii.gz" in row.inner_text() and "succeeded" in row.inner_text()


def test_the_page_shows_the_servers_error_for_a_file_that_is_not_a_volume(page, tmp_path):
    fake = tmp_path / "notes.nii"
    fake.write_bytes(b"this is not a NIfTI header " * 40)
    page.get_by_label("Choose a file").set_input_files(str(fake))
    page.get_by_role("button", name="Start").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=30_000)
    assert "not a NIfTI" in alert.inner_text()
    assert page.locator("#result").is_hidden()


def test_the_page_refuses_an_unknown_file_type_before_uploading(page, tmp_path):
    other = tmp_path / "photo.png"
    other.write_bytes(b"\x89PNG....")
    page.get_by_label("Choose a file").set_input_files(str(other))
    assert "is not a .nii, .nii.gz, .npy or .nvc file" in page.get_by_role("alert").inner_text()
    assert page.get_by_role("button", name="Start").is_disabled()
