"""Hostile requests that are not about file formats: object keys and file names that try to
leave the storage root, uploads validated before a job is queued (each refusal a 4xx problem
that says why), and the voxel digest a job reports agreeing with `nvc info`."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.main import create_app
from conftest import npy_bytes
from service.storage import LocalStorage, StorageError, _check_key

PROBLEM = "application/problem+json"


# ----------------------------------------------------------------------------- storage keys


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(key=st.lists(st.sampled_from(list("ab./\\\x00 -_%~:") + ["..", "jobs", "%2e%2e"]), max_size=20).map("".join))
def test_no_object_key_leaves_the_storage_root(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("root", numbered=True)
    storage = LocalStorage(root)
    try:
        path = storage._path(key)
    except StorageError:
        return
    assert path.resolve().is_relative_to(root.resolve()), (key, path)
    assert ".." not in key.split("/") and "\\" not in key and "\x00" not in key


@pytest.mark.parametrize("key", ["../etc/passwd", "jobs/../../x", "/etc/passwd", "jobs//x", "jobs/./x", "jobs/x/..",
                                 "jobs\\..\\x", "jobs/a\x00b", "", "jobs/%2e%2e/x" + "/.." * 1, "a" * 600])
def test_escaping_keys_are_refused(tmp_path, key):
    with pytest.raises(StorageError):
        _check_key(key)
        LocalStorage(tmp_path)._path(key)


def test_a_symlink_planted_in_the_root_cannot_lead_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("patient list")
    storage = LocalStorage(root)
    (root / "jobs").mkdir(parents=True)
    os.symlink(outside, root / "jobs" / "evil")
    with pytest.raises(StorageError, match="outside the storage folder"):
        storage.local_path("jobs/evil/secret")
    with pytest.raises(StorageError):
        storage.delete_prefix("jobs/evil/")
    assert (outside / "secret").read_text() == "patient list"


# ----------------------------------------------------------------------------- the upload route


@pytest.fixture
def client(service_settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


def _npz() -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((4, 4, 4), np.uint16))
    return buf.getvalue()


def nifti1(shape, datatype=512, bitpix=16, vox_offset=352.0, data=b"") -> bytes:
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, *([1.0] * 8))
    struct.pack_into("<f", hdr, 108, vox_offset)
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr) + data


@pytest.mark.parametrize("route, body, status, words", [
    ("/compress", b"<html>not a scan</html>" * 20, 415, "not a NIfTI"),
    ("/compress", b"PK\x03\x04" + bytes(500), 422, "broken zip"),  # a zip is a DICOM series upload
    ("/compress", _npz(), 415, ".npz"),
    ("/compress", npy_bytes(np.zeros((4, 4, 4), np.float32)), 422, "float32 is not supported"),
    ("/compress", npy_bytes(np.zeros((4, 4, 4), np.complex64)), 422, "complex"),
    ("/compress", npy_bytes(np.zeros((2, 2, 2, 2, 2), np.uint8)), 422, "5-D"),
    ("/compress", npy_bytes(np.zeros((4, 4, 4), np.uint16))[:-10], 422, "truncated npy"),
    ("/compress", nifti1((8, 8, 8), 16, 32, data=bytes(2048)), 422, "float32"),
    ("/compress", nifti1((8, 8, 8), data=bytes(100)), 422, "truncated nii"),
    ("/compress", gzip.compress(nifti1((8, 8, 8), data=bytes(1024)))[:-6], 422, "broken gzip"),
    ("/compress", nifti1((64, 64, 64), vox_offset=10.0, data=bytes(1024)), 422, "vox_offset"),
    ("/decompress", npy_bytes(np.zeros((4, 4, 4), np.uint16)), 415, "not an .nvc"),
    ("/decompress", b"\x89NVC\r\n\x1a\n\x04\x00\x00\x00" + bytes(64), 422, "version 4"),
    ("/decompress", b"\x89NVC\r\n\x1a\n\x02\x00\x00\x00" + bytes(64), 422, "DICOM archive"),  # version 2
])
def test_bad_uploads_are_refused_before_a_job_exists(client, service_settings, route, body, status, words):
    import redis

    answer = client.post(route, content=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM and words in answer.json()["detail"], answer.json()
    jobs = service_settings.resolved_storage_dir / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())
    r = redis.Redis.from_url(service_settings.redis_url)
    assert r.keys(service_settings.key_prefix + "job:*") == [] and r.llen(service_settings.gpu_queue) == 0
    r.close()


def test_an_accepted_upload_records_what_its_header_declares(client, small_volume):
    job = client.post("/compress", content=gzip.compress(nifti1(small_volume.shape, data=small_volume.tobytes("F"))))
    assert job.status_code == 202, job.text
    body = job.json()
    assert body["input_format"] == "nii.gz" and body["shape"] == list(small_volume.shape) and body["dtype"] == "uint16"


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd.nvc"), ("..\\..\\windows\\scan.nii.gz", "scan.nii.gz.nvc"),
    ("/abs/brain.npy", "brain.npy.nvc"), ("a\x00b.nii", "a_00b.nii.nvc"), ("..", "volume.npy.nvc"),
    ("x;rm -rf /.nii", "nii.nvc"), ("$(reboot).npy", "reboot_.npy.nvc"),
])
def test_file_names_never_become_paths(client, service_settings, small_volume, name, expected):
    answer = client.post("/compress", files={"file": (name, npy_bytes(small_volume))})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["output_name"] == expected
    files = [p for p in service_settings.resolved_storage_dir.rglob("*") if p.is_file()]
    assert files == [service_settings.resolved_storage_dir / "jobs" / job["id"] / "input"]


# ----------------------------------------------------------------------------- voxel digests


@pytest.mark.usefixtures("require_codec")
def test_job_voxel_sha256_is_the_codec_definition(service_settings):
    """The worker's digest is the codec's (NIfTI order): on a non-cubic volume a C-order digest
    differs, and the job's value equals both `nvc info`'s SHA-256 and codec.api.voxel_sha256."""
    import hashlib
    import uuid

    import codec
    from service.jobs import new_record
    from service.storage import job_prefix
    from codec.api import voxel_sha256
    from worker import attempt, lifecycle, runtime, verify

    volume = (np.arange(9 * 7 * 5, dtype=np.uint16) % 211).reshape(9, 7, 5)
    assert voxel_sha256(volume) != hashlib.sha256(np.ascontiguousarray(volume).tobytes()).hexdigest()
    rt = runtime.configure(service_settings)
    try:
        job_id = uuid.uuid4().hex
        key = f"{job_prefix(job_id)}input"
        writer = rt.storage.open_writer(key)
        writer.write(npy_bytes(np.asfortranarray(volume)))
        writer.commit()
        rt.store.create(new_record(job_id, "compress", "anonymous", 60, input_key=key, input_format="npy",
                                   output_format="nvc", profile="default"))
        assert lifecycle.run_job(job_id, "compress", "w") == "succeeded"
        record = rt.store.get(job_id)
        coded = b"".join(rt.storage.iter_chunks(record["output_key"]))
        assert record["voxel_sha256"] == voxel_sha256(volume) == codec.info(coded)["sha256"]
        assert verify.voxel_digest(volume) == voxel_sha256(volume)
    finally:
        rt.store.r.close()
        runtime.reset()


def _nvc_cases() -> dict[str, tuple[bytes, int, str]]:
    """The .nvc uploads of issue 8 that the worker refused after a 202: each must be a 4xx now."""
    import struct

    import codec
    from codec import format as fmt

    rng = np.random.default_rng(0)
    data = codec.encode(np.cumsum(rng.integers(-3, 4, size=(64, 48, 40)), axis=0).astype(np.int16))
    pos, found = fmt.PREAMBLE.size, {}
    while pos < len(data):
        tag, length = fmt.CHUNK_HEAD.unpack_from(data, pos)
        found[tag] = (pos, length)
        pos += fmt.CHUNK_OVERHEAD + length

    def forged(tag: bytes, where: int, form: str, value) -> bytes:
        off, length = found[tag]
        out = bytearray(data)
        struct.pack_into(form, out, off + 12 + where, value)
        body = bytes(out[off + 12 : off + 12 + length])
        struct.pack_into("<I", out, off + 12 + length, fmt.crc32c(body, fmt.crc32c(bytes(out[off : off + 12]))))
        return bytes(out)

    header = fmt.Header(dtype=np.dtype("uint8"), shape=(2**10, 2**10, 2**11), spacing=None, sha256=bytes(32))
    constant = fmt.build(header, [(7, 7, 0, None, [], [])], [])
    return {
        "model blob version 33": (forged(fmt.TAG_MODL, 0, "<B", 33), 422, "model blob version 33"),
        "model not shipped": (forged(fmt.TAG_MODL, 3, "<B", ord("z")), 422, "not shipped"),
        "forged width 174762": (forged(fmt.TAG_HEAD, 8, "<Q", 174762), 413, "working memory"),
        "160-byte constant 2 GiB volume": (constant, 413, "limit"),
    }


@pytest.mark.parametrize("name", ["model blob version 33", "model not shipped", "forged width 174762",
                                  "160-byte constant 2 GiB volume"])
def test_nvc_uploads_the_worker_would_refuse_are_refused_at_upload(client, service_settings, name, monkeypatch):
    body, status, words = _nvc_cases()[name]
    if name == "forged width 174762":
        # The 40-slice test volume is coded as two balanced 20-slice slabs (decision 0111; it was
        # 32 + 8), so the forged width makes each slab 20 x 48 x 174762 voxels: 2.01 GB of engine
        # working memory, just under the 2 GiB default. A 1 GiB working-memory budget puts it
        # over: the upload must then be refused, as the worker would refuse it.
        monkeypatch.setenv("NVC_DECODE_MEMORY_BYTES", str(2**30))
    answer = client.post("/decompress", content=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM and words in answer.json()["detail"], answer.json()
