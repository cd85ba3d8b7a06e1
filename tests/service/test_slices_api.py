"""The slice routes in-process (FastAPI TestClient, real Redis, no worker): a job's record is
brought to `succeeded` by hand with a real .nvc in storage, as a worker would leave it.

- one slice of a 140-slice volume decodes one slab (of five), a whole decode reads all five;
  the PNG equals the documented rendering of the source slice; .npy is the exact slice;
- the range form, caching (a second slice of the same slab decodes nothing; If-None-Match 304),
  decompress jobs (their uploaded .nvc), and every refusal as a problem (404, 409, 410, 422)."""

from __future__ import annotations

import functools
import io
import time

import nibabel as nib
import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from PIL import Image

import codec
from service.jobs import JobStore
from app.main import create_app
from codec import format as fmt
from codec import render
from conftest import npy_bytes

PROBLEM = "application/problem+json"


@functools.lru_cache(maxsize=1)
def tall() -> tuple[np.ndarray, bytes]:
    """140 slices of a CT-like uint16 phantom (air 0, body about 1000-1500) with its NIfTI header, as .nvc."""
    rng = np.random.default_rng(11)
    x, y, z = np.meshgrid(np.arange(32), np.arange(28), np.arange(140), indexing="ij")
    body = ((x - 16) ** 2 / 180 + (y - 14) ** 2 / 120) < 1
    a = np.where(body, 1000 + 2 * z + 40 * np.sin(x / 3) + rng.integers(0, 60, x.shape), rng.integers(0, 3, x.shape))
    a = a.astype(np.uint16)
    image = nib.Nifti1Image(a, np.diag([0.8, 0.8, 1.25, 1.0]))
    raw = image.to_bytes()
    vf = codec.read_volume(raw)
    return a, codec.encode(vf.array, spacing=vf.spacing, nifti_header=vf.nifti_header)


@pytest.fixture
def client(service_settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


@pytest.fixture
def store(service_settings):
    r = redis_lib.Redis.from_url(service_settings.redis_url, decode_responses=True)
    yield JobStore(r, service_settings.key_prefix, service_settings.job_ttl_seconds)
    r.close()


def finish_compress(client, store, service_settings, headers=None) -> str:
    """A compress job whose worker 'succeeded': the .nvc stored where the worker puts it."""
    import hashlib

    a, data = tall()
    job = client.post("/compress?filename=tall.npy", content=npy_bytes(a), headers=headers or {}).json()
    key = f"jobs/{job['id']}/output.nvc"
    (service_settings.resolved_storage_dir / key).write_bytes(data)
    store.transition(job["id"], "running", ["queued"], started_at=time.time())
    store.transition(job["id"], "succeeded", ["running"], finished_at=time.time(), progress=1.0, output_key=key,
                     output_size=len(data), output_sha256=hashlib.sha256(data).hexdigest())
    return job["id"]


def problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body = answer.json()
    assert body["status"] == status and body["detail"]
    return body


@pytest.fixture
def slab_reads(monkeypatch):
    """Every slab payload the codec reads in this process, as (z0, z1)."""
    reads: list[tuple[int, int]] = []
    real = fmt.read_slab
    monkeypatch.setattr(fmt, "read_slab", lambda src, s: reads.append((s.z0, s.z1)) or real(src, s))
    return reads


def test_one_slice_decodes_one_slab_and_is_the_reference_rendering(client, store, service_settings, slab_reads):
    a, data = tall()
    slabs = codec.info(data)["slabs"][0]
    assert len(slabs) == 6  # 140 slices in 6 balanced slabs of at most 32 (codec.context.plan_slabs)
    job_id = finish_compress(client, store, service_settings)

    t0 = time.perf_counter()
    answer = client.get(f"/jobs/{job_id}/slices/70?window=soft_tissue")
    one_slice_s = time.perf_counter() - t0
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert len(slab_reads) == 1 and slab_reads[0][0] <= 70 < slab_reads[0][1]
    window, rescale = render.choose_window(a[:, :, 70], render.Rescale(), "soft_tissue")
    assert rescale.intercept == -1024  # unsigned CT without a rescale in the file
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), render.render(a[:, :, 70], window, rescale))
    h = answer.headers
    assert (h["x-slice-index"], h["x-slice-count"], h["x-slice-position-mm"]) == ("70", "140", "87.5")
    assert (h["x-window-center"], h["x-window-width"], h["x-rescale-intercept"]) == ("40", "400", "-1024")
    assert h["etag"] and "max-age" in h["cache-control"]

    # another slice of the same slab: served from the cache, nothing decoded
    before = len(slab_reads)
    auto = client.get(f"/jobs/{job_id}/slices/69")
    assert auto.status_code == 200 and len(slab_reads) == before
    w = render.auto_window(a[:, :, 69].astype(np.float64))
    with Image.open(io.BytesIO(auto.content)) as image:
        assert np.array_equal(np.asarray(image), render.render(a[:, :, 69], w))
    # the same request again with its ETag: 304, no body
    again = client.get(f"/jobs/{job_id}/slices/69", headers={"If-None-Match": auto.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get(f"/jobs/{job_id}/slices/69?window=bone").headers["etag"] != auto.headers["etag"]

    slab_reads.clear()
    t0 = time.perf_counter()
    assert np.array_equal(codec.decode(data), a)
    whole_s = time.perf_counter() - t0
    n_slabs = codec.info(data)["slab_count"]  # 6 balanced slabs of 23-24 slices (decision 0111)
    assert len(slab_reads) == n_slabs == 6
    print(f"\none slice: 1 slab decoded in {one_slice_s:.2f} s; whole volume: {n_slabs} slabs in {whole_s:.2f} s")


def test_raw_slice_and_range_are_the_exact_stored_values(client, store, service_settings, slab_reads):
    a, _ = tall()
    job_id = finish_compress(client, store, service_settings)
    one = client.get(f"/jobs/{job_id}/slices/-1?format=npy")
    assert one.status_code == 200 and one.headers["content-type"] == "application/x-npy"
    back = np.load(io.BytesIO(one.content))
    assert back.dtype == np.uint16 and np.array_equal(back, a[:, :, 139])
    assert one.headers["x-slice-index"] == "139"
    slab_reads.clear()
    rng = client.get(f"/jobs/{job_id}/slices", params={"start": 30, "stop": 66})
    assert rng.status_code == 200, rng.text
    block = np.load(io.BytesIO(rng.content))
    assert block.shape == (32, 28, 36) and np.array_equal(block, a[:, :, 30:66])
    assert sorted(slab_reads) == [(24, 48), (48, 71)]  # the slabs covering 30..65, once each
    # custom window with an explicit intercept
    png = client.get(f"/jobs/{job_id}/slices/5", params={"center": 1100, "width": 300, "intercept": 0})
    with Image.open(io.BytesIO(png.content)) as image:
        expect = render.render(a[:, :, 5], render.Window(1100, 300), render.Rescale(1.0, 0.0, True))
        assert np.array_equal(np.asarray(image), expect)


def test_a_decompress_job_shows_its_uploaded_nvc(client, store, service_settings):
    a, data = tall()
    job = client.post("/decompress?format=npy", content=data).json()
    problem(client.get(f"/jobs/{job['id']}/slices/3"), 409)  # queued: not yet
    store.transition(job["id"], "running", ["queued"], started_at=time.time())
    store.transition(job["id"], "succeeded", ["running"], finished_at=time.time(), progress=1.0)
    answer = client.get(f"/jobs/{job['id']}/slices/100?format=npy")
    assert answer.status_code == 200, answer.text
    assert np.array_equal(np.load(io.BytesIO(answer.content)), a[:, :, 100])


def test_refusals_are_problems(client, store, service_settings):
    job_id = finish_compress(client, store, service_settings)
    body = problem(client.get(f"/jobs/{job_id}/slices/140"), 422)
    assert "out of range: the volume has 140 slices (0..139)" in body["detail"]
    assert "140 slices" in problem(client.get(f"/jobs/{job_id}/slices", params={"start": 100, "stop": 141}),
                                   422)["detail"]
    problem(client.get(f"/jobs/{job_id}/slices", params={"start": 9, "stop": 9}), 422)
    problem(client.get(f"/jobs/{job_id}/slices/3?window=liver"), 422)
    problem(client.get(f"/jobs/{job_id}/slices/3?center=10"), 422)
    problem(client.get(f"/jobs/{job_id}/slices/3?center=10&width=0"), 422)
    problem(client.get(f"/jobs/{job_id}/slices/3?volume=1"), 422)
    problem(client.get("/jobs/" + "0" * 32 + "/slices/3"), 404)
    problem(client.get("/jobs/not-an-id/slices/3"), 404)
    queued = client.post("/compress", content=npy_bytes(tall()[0][:, :, :4])).json()
    busy = client.get(f"/jobs/{queued['id']}/slices/0")
    assert problem(busy, 409)["state"] == "queued" and busy.headers["retry-after"] == "1"
    store.transition(queued["id"], "failed", ["queued"], finished_at=time.time(), error="boom")
    assert "failed" in problem(client.get(f"/jobs/{queued['id']}/slices/0"), 409)["detail"]
    # the stored file vanished outside the service
    (service_settings.resolved_storage_dir / f"jobs/{job_id}/output.nvc").unlink()
    other = finish_compress(client, store, service_settings)
    (service_settings.resolved_storage_dir / f"jobs/{other}/output.nvc").unlink()
    problem(client.get(f"/jobs/{other}/slices/0"), 404)
    # deleted by its owner: gone
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    problem(client.get(f"/jobs/{job_id}/slices/0"), 410)


def test_slices_are_visible_to_their_owner_only(service_settings, store):
    settings = service_settings.model_copy(update={"api_keys": ["alpha-key", "beta-key"]})
    alpha, beta = {"Authorization": "Bearer alpha-key"}, {"Authorization": "Bearer beta-key"}
    with TestClient(create_app(settings)) as client:
        job_id = finish_compress(client, store, settings, headers=alpha)
        assert client.get(f"/jobs/{job_id}/slices/1", headers=alpha).status_code == 200
        problem(client.get(f"/jobs/{job_id}/slices/1"), 401)
        problem(client.get(f"/jobs/{job_id}/slices/1", headers=beta), 404)
        problem(client.get(f"/jobs/{job_id}/slices", params={"start": 0, "stop": 2}, headers=beta), 404)


def test_a_dicom_series_archive_shows_each_coded_volume(client, store, service_settings, tmp_path):
    """A compress job of a DICOM study leaves a series archive (format version 2): each coded
    volume of it has slices, the stored pixel values of its series' planes."""
    pytest.importorskip("pydicom")
    import hashlib

    from codec import dicom
    from codec.dicom_inputs import gather
    from dicom_series import real_crop, write_series

    ct = real_crop("ct_head_phantom_thick_5mm.nii.gz", (40, 32, 3))
    mr = np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (24, 24, 2)), 4095).astype(np.uint16)
    write_series(tmp_path / "study" / "ct", ct, series_number=1, syntax="explicit")
    write_series(tmp_path / "study" / "mr", mr, modality="MR", series_number=2, syntax="implicit", description="T1")
    archive = dicom.compress_files(gather(tmp_path / "study"))
    index = dicom.open_archive(archive)
    job = client.post("/compress", content=npy_bytes(ct)).json()
    key = f"jobs/{job['id']}/output.nvc"
    (service_settings.resolved_storage_dir / key).write_bytes(archive)
    store.transition(job["id"], "running", ["queued"], started_at=time.time())
    store.transition(job["id"], "succeeded", ["running"], finished_at=time.time(), progress=1.0, output_key=key,
                     output_size=len(archive), output_sha256=hashlib.sha256(archive).hexdigest())
    sources = {"CT": ct, "MR": mr}
    for part, volume in enumerate(index.volumes):
        source = sources[index.series[volume["series"]]["modality"]]
        for z in range(source.shape[2]):
            answer = client.get(f"/jobs/{job['id']}/slices/{z}", params={"format": "npy", "volume": part})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-slice-count"] == str(source.shape[2])
            assert np.array_equal(np.load(io.BytesIO(answer.content)), source[:, :, z])
        png = client.get(f"/jobs/{job['id']}/slices/0", params={"volume": part})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        series = index.series[volume["series"]]
        assert png.headers["x-volume-count"] == str(len(index.volumes))
        assert png.headers["x-series-modality"] == series["modality"]
        assert png.headers["x-series-uid"] == series["uid"]
        from urllib.parse import unquote

        assert unquote(png.headers["x-series-description"]) == series["description"]
    body = problem(client.get(f"/jobs/{job['id']}/slices/0", params={"volume": len(index.volumes)}), 422)
    assert f"holds {len(index.volumes)} coded volume(s)" in body["detail"]
