"""DICOM through the service: uploads checked before a job exists, a real round trip with a
worker (zip of the original files back, byte for byte; an export), and patient privacy: after a
real run, no header value beyond modality, description, UIDs and dimensions is anywhere in the
logs, the job records, the metrics or the problem details."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pydicom")

from app.main import create_app  # noqa: E402
from dicom_series import (  # noqa: E402
    CORPUS_VERBATIM_REASONS,
    NOT_CODABLE,
    PATIENT_NAME,
    pydicom_corpus,
    real_crop,
    write_series,
    write_structured_report,
)

SECRETS = ("TESTPATIENT", "SECRET^NAME", "PID-20240311-7", "19700101", "ACC0042", "REFERRER", "Test Hospital")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("svc") / "study"
    ct = real_crop("ct_head_phantom_thick_5mm.nii.gz", (40, 32, 3))
    write_series(root / "ct", ct, series_number=1, syntax="explicit", patient_name=PATIENT_NAME)
    mr = np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (24, 24, 2)), 4095).astype(np.uint16)
    write_series(root / "mr", mr, modality="MR", series_number=2, syntax="implicit", bits_stored=12,
                 junk_high_bits=True, description="T1", patient_name=PATIENT_NAME)
    write_structured_report(root / "sr" / "report.dcm", patient_name=PATIENT_NAME)
    return root


@pytest.fixture
def client(service_settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


def _stored_input(service_settings, job_id: str) -> bytes:
    from service.storage import make_storage

    storage = make_storage(service_settings)
    return b"".join(storage.iter_chunks(f"jobs/{job_id}/input"))


def test_zip_raw_body_and_multipart_parts_are_accepted(client, service_settings, study):
    files = tree(study)
    answer = client.post("/compress?filename=study.zip", content=zip_of(files),
                         headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["input_format"] == "dicom" and job["files"] == len(files) and job["output_name"] == "study.nvc"
    parts = [("file", (f"study/{name}", content, "application/dicom")) for name, content in files.items()]
    answer = client.post("/compress", files=parts)
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["input_format"] == "dicom" and job["files"] == len(files) and job["output_name"] == "study.nvc"
    with zipfile.ZipFile(io.BytesIO(_stored_input(service_settings, job["id"]))) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == {f"study/{n}": c for n, c in files.items()}
    one = next(iter(files.values()))
    answer = client.post("/compress?filename=IM0001.dcm", content=one, headers={"content-type": "application/dicom"})
    assert answer.status_code == 202 and answer.json()["files"] == 1
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as tf:
        tf.add(study / "ct", arcname="ct")
    answer = client.post("/compress", files={"file": ("ct.tar", tbuf.getvalue())})
    assert answer.status_code == 202 and answer.json()["files"] == 3, answer.text


def tar_of(files: dict[str, bytes], mode: str = "w:gz", gzip_name: str | None = None) -> bytes:
    """A tar (`mode` "w", "w:gz" ...) of `files`; with `gzip_name` the gzip header carries that
    file name (as gzip(1) writes it), which a tar.gz sniffer has to read past."""
    buf = io.BytesIO()
    if gzip_name is not None:
        import gzip

        inner = io.BytesIO()
        with tarfile.open(fileobj=inner, mode="w") as tf:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
        with gzip.GzipFile(filename=gzip_name, mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(inner.getvalue())
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_tar_gz_raw_body_and_multipart_are_accepted(client, service_settings, study):
    """A .tar.gz / .tgz of a series is a DICOM upload like a zip or a tar (not a .nii.gz), as the
    raw body or as multipart field `file`, even when its gzip header carries a long file name."""
    files = tree(study)
    body = tar_of(files)
    answer = client.post("/compress?filename=study.tar.gz", content=body,
                         headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["input_format"] == "dicom" and job["files"] == len(files) and job["output_name"] == "study.nvc"
    assert _stored_input(service_settings, job["id"]) == body
    named = tar_of(files, gzip_name="x" * 3000 + ".tar")  # the data starts 3 kB into the gzip stream
    answer = client.post("/compress", files={"file": ("study.tgz", named)})
    assert answer.status_code == 202, answer.text
    assert answer.json()["files"] == len(files) and answer.json()["output_name"] == "study.nvc"


@pytest.mark.parametrize("body, status, words", [
    (tar_of({"notes.txt": b"hello", "b.bin": bytes(300)}), 415, "not DICOM"),
    (tar_of({"../escape.dcm": b"x" * 200}), 422, "'..'"),
    (tar_of({"a.dcm": np.random.default_rng(1).bytes(4000)})[:1000], 422, "tar"),  # truncated
], ids=["not-dicom", "escaping-name", "truncated"])
def test_bad_tar_gz_uploads_are_refused_before_a_job_exists(client, service_settings, body, status, words):
    import redis

    answer = client.post("/compress", content=body, headers={"content-type": "application/octet-stream"})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    r = redis.Redis.from_url(service_settings.redis_url)
    assert r.keys(service_settings.key_prefix + "job:*") == []


def test_tar_gz_declaring_more_than_the_limit_is_refused():
    """A tar.gz bomb: what its members declare is checked against the limit before they are inflated."""
    from service.problems import Problem
    from service.validate_dicom import CompressUploadValidator

    body = tar_of({"a.dcm": bytes(6000), "b.dcm": bytes(6000)})
    validator = CompressUploadValidator(10_000)
    validator.feed(body)
    with pytest.raises(Problem) as refused:
        validator.finish()
    assert refused.value.status == 422 and "more than the limit" in refused.value.detail


def test_nii_gz_is_still_a_volume():
    """Telling .tar.gz from .nii.gz does not change what a .nii.gz upload is."""
    import gzip

    from service.validate_dicom import CompressUploadValidator, gzip_holds_tar

    nii = real_crop("ct_head_phantom_thick_5mm.nii.gz", (8, 8, 2))
    import nibabel as nib

    raw = nib.Nifti1Image(nii, np.eye(4)).to_bytes()
    body = gzip.compress(raw, mtime=0)
    assert gzip_holds_tar(body[:300]) is False
    validator = CompressUploadValidator(10**8)
    validator.feed(body)
    assert validator.finish().format == "nii.gz"


@pytest.mark.parametrize("body, status, words", [
    (zip_of({"notes.txt": b"hello", "b.bin": bytes(300)}), 415, "not DICOM"),
    (zip_of({"../escape.dcm": b"x" * 200}), 422, "'..'"),
    (b"PK\x03\x04" + bytes(400), 422, "zip"),
    (b"plain text, not a scan\n" * 40, 415, "not a NIfTI"),
])
def test_bad_dicom_uploads_are_refused_before_a_job_exists(client, service_settings, body, status, words):
    import redis

    answer = client.post("/compress", content=body, headers={"content-type": "application/octet-stream"})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    r = redis.Redis.from_url(service_settings.redis_url)
    assert r.keys(service_settings.key_prefix + "job:*") == []


def test_archive_uploads_are_checked(client, study):
    from codec import dicom
    from codec.dicom_inputs import gather

    data = dicom.compress_files(gather(study / "mr"))
    bad = bytearray(data)
    bad[-40] ^= 0xFF
    answer = client.post("/decompress", content=bytes(bad), headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 422 and "DICOM archive" in answer.json()["detail"], answer.text
    answer = client.post("/decompress?format=nii", content=data, headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 422 and "zip" in answer.json()["detail"]
    answer = client.post("/decompress?transfer_syntax=jpegxl", content=data)
    assert answer.status_code == 422
    answer = client.post("/decompress?transfer_syntax=htj2k", content=data)
    assert answer.status_code == 202 and answer.json()["output_format"] == "zip", answer.text
    assert answer.json()["input_format"] == "nvc-dicom" and answer.json()["transfer_syntax"] == "htj2k"


def wait_done(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}", params={"wait": 10}).json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout} s"


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_series_round_trip_through_the_service_keeps_patient_data_private(service_settings, make_stack, study, tmp_path):
    import pydicom
    import redis

    stack = make_stack(service_settings)
    stack.start_worker()
    url = stack.start_api()
    files = tree(study)
    with httpx.Client(base_url=url, timeout=120) as client:
        parts = [("file", (f"study/{name}", content)) for name, content in files.items()]
        answer = client.post("/compress", files=parts)
        assert answer.status_code == 202, answer.text
        job = wait_done(client, answer.json()["id"])
        assert job["state"] == "succeeded", job
        assert job["instances_coded"] == 5 and job["files_verbatim"] == 1 and job["files"] == 6
        series = {s["modality"]: s for s in job["series"]}
        assert series["CT"]["volumes"] == [[40, 32, 3]] and series["MR"]["coded"] == 2 and series["SR"]["verbatim"] == 1
        archive = client.get(f"/jobs/{job['id']}/result").content
        assert hashlib.sha256(archive).hexdigest() == job["output_sha256"]

        answer = client.post("/decompress", content=archive, headers={"content-type": "application/octet-stream"})
        back = wait_done(client, answer.json()["id"])
        assert back["state"] == "succeeded", back
        restored = client.get(f"/jobs/{back['id']}/result")
        assert restored.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(restored.content)) as zf:
            assert {n: zf.read(n) for n in zf.namelist()} == {f"study/{n}": c for n, c in files.items()}

        answer = client.post("/decompress?transfer_syntax=jpegls", content=archive)
        exported = wait_done(client, answer.json()["id"])
        assert exported["state"] == "succeeded", exported
        with zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{exported['id']}/result").content)) as zf:
            for name, content in files.items():
                if name.startswith("sr/"):
                    continue
                a, b = pydicom.dcmread(io.BytesIO(content)), pydicom.dcmread(io.BytesIO(zf.read(f"study/{name}")))
                assert b.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
                np.testing.assert_array_equal(a.pixel_array, b.pixel_array)

        # a refused upload's problem details do not quote the header either
        refused = client.post("/compress", content=zip_of({"a.txt": PATIENT_NAME.encode() * 20}))
        assert refused.status_code == 415
        seen = [client.get(f"/jobs/{j}").text for j in (job["id"], back["id"], exported["id"])]
        seen += [client.get("/metrics").text, refused.text]
    r = redis.Redis.from_url(service_settings.redis_url)
    for key in r.keys(service_settings.key_prefix + "*"):
        kind = r.type(key).decode()
        if kind == "hash":
            seen.append(repr(r.hgetall(key)))
        elif kind == "string":
            seen.append(repr(r.get(key)))
        elif kind == "list":
            seen.append(repr(r.lrange(key, 0, -1)))
        elif kind == "zset":
            seen.append(repr(r.zrange(key, 0, -1)))
    logs = sorted(tmp_path.glob("*.log"))
    assert {p.stem for p in logs} >= {"api"} and len(logs) >= 2  # the API's and the worker's
    for log in logs:
        seen.append(log.read_text(errors="replace"))
    text = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked"
    assert re.search(r"1\.2\.826\.0\.1\.3680043\.8\.498\.1\.2\.1", text)  # what may be shown is shown


#: The part of the corpus the service test takes (see its docstring): every file up to this size
#: (None: the whole corpus).
SERVICE_CORPUS_MAX_BYTES = None


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("require_codec")
def test_corpus_round_trips_through_the_service(service_settings, make_stack):
    """The DICOM test corpus through the real HTTP API and a Celery worker: one compress job of a
    zip of it (multipart `file`), one decompress job of the archive, every file of the result
    zip compared byte for byte; the record counts the coded and verbatim files and says why.

    The whole corpus (244 files, 60 MB with pydicom-data): 76 s on the 2-core machine at load
    average 2.5-3, against 65 s at load 3-3.9 for only the files up to 1 MiB (235 files, 11 of the
    27 M values), so the per-job costs dominate and the subset would buy little; set
    SERVICE_CORPUS_MAX_BYTES to take a subset where that changes."""
    corpus = pydicom_corpus(SERVICE_CORPUS_MAX_BYTES)
    stack = make_stack(service_settings)
    stack.start_worker()
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=300) as client:
        answer = client.post("/compress", files={"file": ("corpus.zip", zip_of(corpus))})
        assert answer.status_code == 202, answer.text
        coded = wait_done(client, answer.json()["id"], timeout=1000)
        assert coded["state"] == "succeeded", coded
        assert coded["files"] == len(corpus) and coded["instances_coded"] + coded["files_verbatim"] == len(corpus)
        reasons = {r["reason"]: r["files"] for r in coded["verbatim_reasons"]}
        assert sum(reasons.values()) == coded["files_verbatim"]
        assert all(reason.startswith(NOT_CODABLE) for reason in reasons), reasons
        present = [reason for name, reason in CORPUS_VERBATIM_REASONS.items()
                   if any(n.rsplit("/", 1)[-1] == name for n in corpus)]
        for reason in set(present):
            assert reasons.get(reason) == present.count(reason), reason
        answer = client.post("/decompress", content=client.get(f"/jobs/{coded['id']}/result").content)
        assert answer.status_code == 202, answer.text
        back = wait_done(client, answer.json()["id"], timeout=1000)
        assert back["state"] == "succeeded", back
        with zipfile.ZipFile(io.BytesIO(client.get(f"/jobs/{back['id']}/result").content)) as zf:
            restored = {n: zf.read(n) for n in zf.namelist()}
    assert restored.keys() == corpus.keys()
    different = [n for n in corpus if restored[n] != corpus[n]]
    assert not different, different
