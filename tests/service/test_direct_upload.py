"""Direct-to-storage uploads against an S3-protocol server (moto's, a separate process): the
client PUTs presigned parts straight to storage, then submits the job with the upload's id; the
API checks the stored object's header. The large-file test shows the bytes never pass through
the API process (its RSS stays flat) and that the object round-trips exactly."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import npy_bytes
from test_faults import result_objects, structured_volume, wait_done  # noqa: F401

MiB = 1024 * 1024


def put_parts(session: dict, data: bytes, numbers: list[int] | None = None) -> None:
    """PUT the listed parts (all missing ones by default) to their presigned URLs, no API key."""
    size = session["part_size"]
    with httpx.Client(timeout=120) as raw:
        for part in session["parts"]:
            if numbers is not None and part["number"] not in numbers:
                continue
            chunk = data[(part["number"] - 1) * size: part["number"] * size]
            assert len(chunk) == part["size"]
            answer = raw.put(part["url"], content=chunk)
            assert answer.status_code == 200, answer.text


def start(client: httpx.Client, kind: str, size: int, filename: str = "scan.npy") -> dict:
    answer = client.post("/uploads", json={"kind": kind, "size": size, "filename": filename})
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.fixture
def s3_api(s3_settings):
    """The API in this process (TestClient) on the moto S3 server; no worker."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(s3_settings)) as client:
        yield client


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_parts_straight_to_storage_resume_and_the_job_round_trips(s3_settings, make_stack):
    stack = make_stack(s3_settings)
    stack.start_worker()
    url = stack.start_api()
    volume = structured_volume((192, 192, 80))  # 5.9 MB .npy: a 5 MiB part and a smaller last one
    data = npy_bytes(volume)
    with httpx.Client(base_url=url, timeout=60, follow_redirects=True) as client:
        session = start(client, "compress", len(data))
        assert session["part_count"] == 2 and [p["number"] for p in session["parts"]] == [1, 2]
        assert all(p["url"].startswith(s3_settings.s3_endpoint_url) for p in session["parts"])
        put_parts(session, data, [2])  # interrupted: only the last part arrived

        early = client.post("/compress", params={"upload_id": session["id"]})
        assert early.status_code == 409 and "parts 1 " in early.json()["detail"], early.text
        resumed = client.get(f"/uploads/{session['id']}").json()
        assert [p["number"] for p in resumed["stored"]] == [2]
        assert [p["number"] for p in resumed["parts"]] == [1]
        put_parts(resumed, data)

        answer = client.post("/compress", params={"upload_id": session["id"], "profile": "default"})
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["id"] == session["id"] and job["input_size"] == len(data) and job["shape"] == [192, 192, 80]
        again = client.post("/compress", params={"upload_id": session["id"]})
        assert again.status_code == 404  # one upload, one job
        done = wait_done(client, job["id"], 300)
        assert done["state"] == "succeeded", done
        import codec

        result = client.get(f"/jobs/{job['id']}/result").content  # 307 to S3, followed
        assert np.array_equal(codec.decode(result), volume)
        assert hashlib.sha256(result).hexdigest() == done["output_sha256"]


def test_the_stored_header_is_checked_before_a_job_exists(s3_api, s3_settings, small_volume):
    # not a volume at all: 415, and the object is gone
    junk = os.urandom(6 * MiB)
    session = start(s3_api, "compress", len(junk))
    put_parts(session, junk)
    answer = s3_api.post("/compress", params={"upload_id": session["id"]})
    assert answer.status_code == 415, answer.text
    from service.storage import make_storage

    storage = make_storage(s3_settings)
    assert list(storage.client.list_objects_v2(Bucket=s3_settings.s3_bucket).get("Contents", [])) == []
    assert s3_api.get(f"/jobs/{session['id']}").status_code == 404

    # a .npy whose header declares more voxels than the file holds: 422
    data = npy_bytes(small_volume)[:-100]
    session = start(s3_api, "compress", len(data))
    put_parts(session, data)
    answer = s3_api.post("/compress", params={"upload_id": session["id"]})
    assert answer.status_code == 422 and "truncated" in answer.json()["detail"], answer.text

    # an upload started for decompress cannot become a compress job; an .nvc must be an .nvc
    data = npy_bytes(small_volume)
    session = start(s3_api, "decompress", len(data), "x.nvc")
    put_parts(session, data)
    assert s3_api.post("/compress", params={"upload_id": session["id"]}).status_code == 422
    answer = s3_api.post("/decompress", params={"upload_id": session["id"]})
    assert answer.status_code == 415, answer.text

    # abandoned: DELETE drops it; sizes beyond the limit are refused up front
    session = start(s3_api, "compress", 7 * MiB)
    assert s3_api.delete(f"/uploads/{session['id']}").status_code == 204
    assert s3_api.get(f"/uploads/{session['id']}").status_code == 404
    too_big = s3_api.post("/uploads", json={"kind": "compress", "size": s3_settings.max_upload_bytes + 1})
    assert too_big.status_code == 413
    assert s3_api.post("/uploads", json={"kind": "compress", "size": 0}).status_code == 422


def test_local_storage_says_to_stream_instead(service_settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(service_settings)) as client:
        answer = client.post("/uploads", json={"kind": "compress", "size": 1000})
    assert answer.status_code == 409 and "body of POST /compress" in answer.json()["detail"]


# ----------------------------------------------------------------------------- large files


class GeneratedNpy:
    """A large uint16 .npy produced on the fly (never stored): the header, then a fixed random
    block repeated with the block number stamped into its first bytes, so every part differs and
    generating costs a copy, not random numbers."""

    BLOCK = 4 * MiB

    def __init__(self, shape: tuple[int, ...]):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<u2", "fortran_order": True, "shape": shape})
        self.header = header.getvalue()
        self.size = len(self.header) + int(np.prod(shape)) * 2
        self.block = np.random.default_rng(1).integers(0, 4096, self.BLOCK // 2, dtype=np.uint16).tobytes()

    def read(self, start: int, length: int) -> bytes:
        out = bytearray()
        pos = start
        end = min(self.size, start + length)
        while pos < end:
            if pos < len(self.header):
                piece = self.header[pos:end]
            else:
                data_pos = pos - len(self.header)
                number, within = divmod(data_pos, self.BLOCK)
                block = number.to_bytes(8, "little") + self.block[8:]
                piece = block[within: within + (end - pos)]
            out += piece
            pos += len(piece)
        return bytes(out)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def large_upload_round_trip(s3_settings, make_stack, total_bytes: int) -> dict:
    # moto assembles a multi-GB object slowly (real S3: seconds); the request may take that long
    settings = s3_settings.model_copy(update={"s3_part_bytes": 64 * MiB, "request_timeout_seconds": 900.0})
    stack = make_stack(settings)
    url = stack.start_api()
    voxels = (total_bytes - 128) // 2
    shape = (1024, 1024, voxels // (1024 * 1024))
    source = GeneratedNpy(shape)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_bytes(stack.api_proc.pid))
            time.sleep(0.1)

    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(3):  # settle: the first requests import and allocate what the API keeps
            client.get("/readyz")
        session = start(client, "compress", source.size, "big.npy")
        before = rss_bytes(stack.api_proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        sent = hashlib.sha256()
        started = time.monotonic()
        with httpx.Client(timeout=600) as raw:
            for part in session["parts"]:
                chunk = source.read((part["number"] - 1) * session["part_size"], part["size"])
                sent.update(chunk)
                assert raw.put(part["url"], content=chunk).status_code == 200
        upload_seconds = time.monotonic() - started
        started = time.monotonic()
        answer = client.post("/compress", params={"upload_id": session["id"]}, timeout=900)
        finish_seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["input_size"] == source.size and job["shape"] == list(shape)
        after = rss_bytes(stack.api_proc.pid)

    from service.storage import make_storage
    from service.submission import input_key

    storage = make_storage(settings)
    stored = hashlib.sha256()
    count = 0
    for chunk in storage.iter_chunks(input_key(job["id"]), 8 * MiB):
        stored.update(chunk)
        count += len(chunk)
    assert count == source.size and stored.hexdigest() == sent.hexdigest()
    growth = max(samples + [after]) - before
    return {"bytes": source.size, "parts": session["part_count"], "upload_s": round(upload_seconds, 1),
            "finish_s": round(finish_seconds, 1),
            "rss_before_mib": round(before / MiB, 1), "rss_peak_growth_mib": round(growth / MiB, 1)}


@pytest.mark.slow
def test_a_large_upload_never_passes_through_the_api(s3_settings, make_stack):
    """256 MiB in CI (the 2 GB run is `DIRECT_UPLOAD_TEST_BYTES=2147483648`, by hand; see
    docs/deployment.md for its figures): the API's RSS grows by less than one part's size while
    the whole file goes into storage, and the stored object equals what was sent."""
    total = int(os.environ.get("DIRECT_UPLOAD_TEST_BYTES", 256 * MiB))
    figures = large_upload_round_trip(s3_settings, make_stack, total)
    print(figures)
    assert figures["rss_peak_growth_mib"] < 32, figures  # a part is 64 MiB; the file is 256+ MiB
