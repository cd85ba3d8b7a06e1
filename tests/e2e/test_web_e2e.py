"""The web page, end to end in headless Chromium against a live `nvc serve`.

A real volume (the smallest of ../shared/data) is chosen in the page, uploaded, followed to
success and downloaded through the page's link; the downloaded .nvc must match the job's
SHA-256 and decode, locally, to exactly the voxels of the source. A screenshot of the
finished page is kept as a test artefact: test-artifacts/web-e2e.png (path printed).

The slice viewer: a real CT is compressed in the page, the slider is moved with the keyboard
and the mouse wheel, and the image the page shows (its PNG bytes and the pixels the browser
decoded from them) must equal the source volume's slice rendered with the same window by the
documented rendering (codec/render.py), pixel for pixel. Screenshot:
test-artifacts/web-viewer-e2e.png.
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
    assert page.locator("#status").inner_text() == "Done."  # the job status (the viewer has its own)
    assert float(page.locator("#upload-progress").evaluate("e => e.value")) == 1.0
    ratio = page.locator("#result-ratio").inner_text()
    bpv = float(page.locator("#result-bpv").inner_text())
    assert ": 1 vs the upload" in ratio and "vs the raw voxels" in ratio
    assert 0 < bpv < 16
    import socket

    assert socket.gethostname() not in page.locator("body").inner_text()  # no worker host names on the page

    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("link", name="Download mr_phantom_t1_3d_lowres.nii.gz.nvc", exact=True).click()
    download = info.value
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-e2e.png"
    page.screenshot(path=str(shot), full_page=True)  # the finished job: progress, ratio, bits/voxel, recent list
    print(f"\nscreenshot of the finished page: {shot}")
    assert shot.stat().st_size > 10_000
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.name == "mr_phantom_t1_3d_lowres.nii.gz.nvc"

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
    assert "is not a .nii, .nii.gz, .npy, .nvc, .dcm, .zip or .tar file" in page.get_by_role("alert").inner_text()
    assert page.get_by_role("button", name="Start").is_disabled()


def _shown_slice(page) -> tuple[bytes, list[int], int, int]:
    """The PNG bytes behind the viewer's <img>, and the red channel of the pixels the browser shows."""
    data = page.evaluate("""async () => {
        const img = document.getElementById("slice-image");
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        const red = new Array(rgba.length / 4);
        for (let i = 0; i < red.length; i++) red[i] = rgba[4 * i];
        return {png: Array.from(bytes), red, w: canvas.width, h: canvas.height};
    }""")
    return bytes(data["png"]), data["red"], data["w"], data["h"]


def _wait_for_slice(page, z: int, window: str) -> None:
    page.wait_for_function(
        "([z, w]) => { const i = document.getElementById('slice-image');"
        " return i.dataset.z === String(z) && i.dataset.window === w && i.complete && i.naturalWidth > 0; }",
        arg=[z, window], timeout=180_000,
    )


def test_the_slice_viewer_shows_the_source_slice_with_the_chosen_window(page, live):
    import io

    import numpy as np
    from PIL import Image

    import codec
    from codec import render

    if not nvc_live.CT.is_file():
        pytest.skip(f"{nvc_live.CT} is not here (the shared data set)")
    source = codec.read_volume(nvc_live.CT)
    depth = source.array.shape[2]
    page.get_by_label("Choose a file").set_input_files(str(nvc_live.CT))
    page.get_by_role("button", name="Start").click()
    page.locator("#viewer").wait_for(state="visible", timeout=300_000)
    assert page.locator("#error").is_hidden()

    # the statement of the check, the checksums on demand, the sizes as bars
    verified = page.locator("#verified").inner_text()
    assert verified.startswith("Verified lossless") and "matched" in verified
    job_id = page.locator("#download").get_attribute("data-job-id")
    with urllib.request.urlopen(f"{live.url}/jobs/{job_id}") as response:
        job = json.load(response)
    assert job["finished_at"][:19] in verified.replace("Z", "")  # ISO date
    hashes = page.locator("#hashes")
    assert hashes.is_hidden()
    page.get_by_text("Show the SHA-256 checksums").click()
    assert job["voxel_sha256"] in hashes.inner_text() and job["output_sha256"] in hashes.inner_text()
    sizes = page.locator("#sizes li")
    assert sizes.count() == 3
    assert [sizes.nth(i).locator(".size-name").inner_text() for i in range(3)] == ["Upload", ".nvc", "Raw voxels"]
    assert "worker" not in page.locator("#status").inner_text().lower()

    # the middle slice comes first, with the automatic window
    _wait_for_slice(page, depth // 2, "auto")
    # choose a CT window, then move the slider with the keyboard: End, then three steps back
    page.get_by_label("Window").select_option("soft_tissue")
    slider = page.get_by_label("Slice", exact=True)
    slider.focus()
    page.keyboard.press("End")
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    z = depth - 4
    _wait_for_slice(page, z, "soft_tissue")
    caption = page.locator("#slice-caption").inner_text()
    assert f"Slice {z + 1} of {depth}" in caption
    assert f"{z * source.spacing[2]:.1f} mm from the first slice" in caption and "soft tissue" in caption

    window, rescale = render.choose_window(source.array[:, :, z], render.rescale_of(source.nifti_header), "soft_tissue")
    expect = render.render(source.array[:, :, z], window, rescale)
    png, red, w, h = _shown_slice(page)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and np.array_equal(np.asarray(image), expect)
    assert (h, w) == expect.shape
    assert np.array_equal(np.asarray(red, dtype=np.uint8).reshape(h, w), expect)  # what the browser displays
    assert 0.05 < float((expect > 0).mean()) < 0.95  # a real slice: body and air, not a blank image

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-viewer-e2e.png"
    page.locator("#result").screenshot(path=str(shot))
    print(f"\nscreenshot of the slice viewer: {shot}")
    assert shot.stat().st_size > 20_000

    # the mouse wheel over the image moves one slice
    page.locator("#slice-image").hover()
    page.mouse.wheel(0, -120)
    _wait_for_slice(page, z - 1, "soft_tissue")
    window, rescale = render.choose_window(source.array[:, :, z - 1], render.rescale_of(source.nifti_header),
                                           "soft_tissue")
    png, _, _, _ = _shown_slice(page)
    with Image.open(io.BytesIO(png)) as image:
        assert np.array_equal(np.asarray(image), render.render(source.array[:, :, z - 1], window, rescale))
