"""Object storage: the same behaviour from the local-folder backend and from the S3 backend
against a real S3-protocol server (moto's standalone server)."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from service.storage import LocalStorage, ObjectNotFound, S3Storage, StorageError, make_storage, sweep_orphans


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    settings = request.getfixturevalue("s3_settings")
    return S3Storage(settings)


def test_writer_streams_many_chunks_and_reads_back(storage):
    # 12 MiB in 1 MiB chunks: more than two 5 MiB S3 parts, so a real multipart upload
    chunks = [os.urandom(1024 * 1024) for _ in range(12)]
    writer = storage.open_writer("jobs/abc/input")
    for chunk in chunks:
        writer.write(chunk)
    assert writer.commit() == 12 * 1024 * 1024
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert storage.size("jobs/abc/input") == 12 * 1024 * 1024
    got = hashlib.sha256()
    for part in storage.iter_chunks("jobs/abc/input", 300_000):
        assert len(part) <= 300_000
        got.update(part)
    assert got.hexdigest() == expected


def test_small_object_and_files(storage, tmp_path):
    writer = storage.open_writer("jobs/j1/input")
    writer.write(b"hello ")
    writer.write(b"world")
    assert writer.commit() == 11
    out = tmp_path / "copy.bin"
    storage.get_file("jobs/j1/input", out)
    assert out.read_bytes() == b"hello world"

    src = tmp_path / "result.nvc"
    src.write_bytes(b"\x00\x01" * 5000)
    assert storage.put_file("jobs/j1/output.nvc", src) == 10000
    assert b"".join(storage.iter_chunks("jobs/j1/output.nvc")) == src.read_bytes()


def test_abort_leaves_nothing(storage):
    writer = storage.open_writer("jobs/j2/input")
    writer.write(os.urandom(6 * 1024 * 1024))  # S3: one part already uploaded
    writer.abort()
    with pytest.raises(ObjectNotFound):
        storage.size("jobs/j2/input")
    assert [job for job, _ in storage.list_job_prefixes() if job == "j2"] == []


def test_missing_objects_raise_not_found(storage, tmp_path):
    with pytest.raises(ObjectNotFound):
        storage.size("jobs/none/output.nvc")
    with pytest.raises(ObjectNotFound):
        list(storage.iter_chunks("jobs/none/output.nvc"))
    with pytest.raises(ObjectNotFound):
        storage.get_file("jobs/none/output.nvc", tmp_path / "x")


def test_delete_prefix_removes_only_that_job(storage):
    for key in ("jobs/a/input", "jobs/a/output.nvc", "jobs/ab/input"):
        w = storage.open_writer(key)
        w.write(b"x")
        w.commit()
    assert storage.delete_prefix("jobs/a/") == 2
    with pytest.raises(ObjectNotFound):
        storage.size("jobs/a/input")
    assert storage.size("jobs/ab/input") == 1
    assert {job for job, _ in storage.list_job_prefixes()} == {"ab"}
    assert storage.delete_prefix("jobs/a/") == 0


def test_keys_cannot_escape(storage):
    for bad in ("../etc/passwd", "/abs", "jobs//x", "jobs/../x", ""):
        with pytest.raises(StorageError):
            storage.open_writer(bad)


def test_sweep_deletes_objects_of_expired_jobs_only(storage):
    for job in ("live", "dead", "fresh"):
        w = storage.open_writer(f"jobs/{job}/input")
        w.write(b"1")
        w.commit()
    ages = {job: stamp for job, stamp in storage.list_job_prefixes()}
    now = max(ages.values()) + 100
    swept = sweep_orphans(storage, lambda job: job == "live", min_age_seconds=50, now=now)
    assert sorted(swept) == ["dead", "fresh"]
    assert {job for job, _ in storage.list_job_prefixes()} == {"live"}
    # an upload younger than min_age is kept even without a record
    w = storage.open_writer("jobs/new/input")
    w.write(b"1")
    w.commit()
    assert sweep_orphans(storage, lambda job: job == "live", min_age_seconds=3600) == []
    assert "new" in {job for job, _ in storage.list_job_prefixes()}


def test_check(storage):
    storage.check()


def test_local_storage_reads_in_place(tmp_path):
    storage = LocalStorage(tmp_path / "o")
    w = storage.open_writer("jobs/x/input")
    w.write(b"abc")
    w.commit()
    assert storage.local_path("jobs/x/input").read_bytes() == b"abc"
    assert storage.presigned_url("jobs/x/input", "a.bin", "application/octet-stream") is None


def test_s3_presigned_url_downloads_with_filename(s3_settings):
    storage = make_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    w = storage.open_writer("jobs/p/output.nvc")
    w.write(b"payload-bytes")
    w.commit()
    url = storage.presigned_url("jobs/p/output.nvc", "scan.nvc", "application/octet-stream")
    answer = httpx.get(url)
    assert answer.status_code == 200
    assert answer.content == b"payload-bytes"
    assert 'filename="scan.nvc"' in answer.headers["content-disposition"]


def test_s3_prefix_and_bucket_creation(s3_settings):
    settings = s3_settings.model_copy(update={"s3_prefix": "tenant-a/", "s3_bucket": s3_settings.s3_bucket + "-p"})
    storage = S3Storage(settings)
    w = storage.open_writer("jobs/q/input")
    w.write(b"z")
    w.commit()
    keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=settings.s3_bucket)["Contents"]]
    assert keys == ["tenant-a/jobs/q/input"]
    assert [job for job, _ in storage.list_job_prefixes()] == ["q"]


def test_s3_unreachable_is_a_storage_error(service_settings):
    settings = service_settings.model_copy(
        update={"storage_backend": "s3", "s3_endpoint_url": "http://127.0.0.1:9", "s3_access_key": "a",
                "s3_secret_key": "b"}
    )
    storage = S3Storage(settings)
    storage.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageError):
        storage.check()
