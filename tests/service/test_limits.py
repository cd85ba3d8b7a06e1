"""Limits from settings: per-key rate limit and active jobs (429 with Retry-After), upload size
(413 while streaming, not after), declared volume size (413 from the header), request and
upload timeouts (504 / 408). The streaming and timeout checks run against a real uvicorn
process over raw sockets, so what is measured is what a client on the network sees."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from conftest import REPO, free_port, npy_bytes, settings_env, stop_process, wait_until

PROBLEM = "application/problem+json"


def problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    return answer.json()


def test_rate_limit_is_per_key_with_retry_after(service_settings):
    settings = service_settings.model_copy(
        update={"api_keys": ["key-a", "key-b"], "rate_limit_per_minute": 60, "rate_limit_burst": 5}
    )
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    missing = "/jobs/" + "0" * 32
    with TestClient(create_app(settings)) as client:
        for _ in range(5):
            assert client.get(missing, headers=a).status_code == 404
        limited = client.get(missing, headers=a)
        body = problem(limited, 429)
        assert body["type"] == "urn:nvc:problem:rate-limited" and "60 requests per minute" in body["detail"]
        assert limited.headers["retry-after"] == "1"  # one token per second
        assert client.get(missing, headers=b).status_code == 404  # another key has its own budget
        assert client.get("/healthz").status_code == 200  # operations are not limited
        assert problem(client.post("/compress", content=b"x", headers=a), 429)  # submissions count too
        time.sleep(float(limited.headers["retry-after"]) + 0.1)
        assert client.get(missing, headers=a).status_code == 404  # the bucket refilled


def test_active_jobs_per_key_are_limited_before_the_upload_is_read(service_settings, small_volume):
    settings = service_settings.model_copy(update={"max_active_jobs": 2, "api_keys": ["key-a", "key-b"]})
    a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    payload = npy_bytes(small_volume)
    jobs_dir = settings.resolved_storage_dir / "jobs"
    import redis

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        with TestClient(create_app(settings)) as client:
            # a refused upload frees its reservation at once
            assert problem(client.post("/compress", content=b"not a volume" * 40, headers=a), 415)
            first = client.post("/compress", content=payload, headers=a).json()
            second = client.post("/compress", content=payload, headers=a).json()
            refused = client.post("/compress", content=payload, headers=a)
            body = problem(refused, 429)
            assert body["type"] == "urn:nvc:problem:too-many-jobs" and "2 queued or running" in body["detail"]
            assert int(refused.headers["retry-after"]) >= 1
            assert sorted(p.name for p in jobs_dir.iterdir()) == sorted([first["id"], second["id"]])  # nothing stored
            assert len(r.keys(settings.key_prefix + "job:*")) == 2
            assert client.post("/compress", content=payload, headers=b).status_code == 202  # per key
            # an idempotent replay of an existing job is not a new job
            replay_key = {"Idempotency-Key": "same", **b}
            assert client.post("/compress", content=payload, headers=replay_key).status_code == 202
            assert client.post("/compress", content=payload, headers=replay_key).status_code == 202
            assert client.delete(f"/jobs/{first['id']}", headers=a).json()["state"] == "cancelled"
            assert client.post("/compress", content=payload, headers=a).status_code == 202  # finished jobs free slots
            problem(client.post("/compress", content=payload, headers=a), 429)
    finally:
        r.close()


# ----------------------------------------------------------------------------- live API over sockets


class LiveAPI:
    """uvicorn running the app with `settings`, readiness by /healthz (Redis may be hung on purpose)."""

    def __init__(self, settings, log_path):
        self.port = free_port()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning"],
                env=settings_env(settings), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: httpx.get(self.url + "/healthz", timeout=2).status_code == 200, 60, what="uvicorn")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def close(self) -> None:
        stop_process(self.proc)


def read_response(sock: socket.socket, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def stream_until_answered(sock: socket.socket, head: bytes, chunks, chunked: bool) -> int:
    """Send `head` then the chunks until the server answers (or closes); returns bytes sent."""
    sock.sendall(head)
    sent = 0
    for chunk in chunks:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
        try:
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def npy_header(shape, descr: str = "|u1") -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def nifti1_header(shape, datatype: int = 4, bitpix: int = 16) -> bytes:
    """A NIfTI-1 single-file header (352 bytes) for `shape`."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    struct.pack_into("<8h", hdr, 40, *dims)
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352.0)
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr)


@pytest.fixture
def live(service_settings, tmp_path):
    settings = service_settings.model_copy(update={
        "max_upload_bytes": 4 * 1024 * 1024, "max_volume_bytes": 64 * 1024 * 1024, "request_timeout_seconds": 2.0,
    })
    api = LiveAPI(settings, tmp_path / "api.log")
    yield api, settings
    api.close()


@pytest.mark.slow
def test_upload_limits_are_enforced_while_streaming(live):
    api, settings = live
    payload = os.urandom(64 * 1024)
    total = 256 * 1024 * 1024  # what the client would send if nobody stopped it

    # 1. no Content-Length (chunked): 413 once the limit is passed, long before the body ends
    with api.connect() as sock:
        head = (b"POST /compress HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n")
        chunks = [npy_header((4096, 4096, 2))] + [payload] * (total // len(payload))  # declares 32 MiB
        sent = stream_until_answered(sock, head, iter(chunks), chunked=True)
        status, headers, body = read_response(sock)
    assert status == 413 and headers["content-type"] == PROBLEM and b"larger than the limit" in body
    assert sent < 32 * 1024 * 1024, f"{sent} bytes were accepted for a {settings.max_upload_bytes}-byte limit"

    # 2. a header that declares a volume over NVC_MAX_VOLUME_BYTES: 413 from the header
    with api.connect() as sock:
        head = (b"POST /compress HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n")
        chunks = [nifti1_header((2048, 2048, 512))] + [payload] * (total // len(payload))
        sent = stream_until_answered(sock, head, iter(chunks), chunked=True)
        status, headers, body = read_response(sock)
    assert status == 413 and b"volume-too-large" in body and b"(2048, 2048, 512)" in body
    assert sent < 32 * 1024 * 1024

    # 3. a declared Content-Length over the limit is refused before any body byte is read
    with api.connect() as sock:
        sock.sendall(b"POST /compress HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        status, _, body = read_response(sock)
    assert status == 413

    # nothing of the refused uploads was kept
    jobs = settings.resolved_storage_dir / "jobs"
    wait_until(lambda: not jobs.exists() or not any(jobs.iterdir()), 10, what="partial uploads to be removed")


@pytest.mark.slow
def test_a_stalled_upload_is_a_408(live):
    api, settings = live
    with api.connect() as sock:
        sock.sendall(b"POST /compress HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n" + nifti1_header((8, 8, 8)))
        start = time.monotonic()
        status, headers, body = read_response(sock, timeout=30)  # and then send nothing more
        waited = time.monotonic() - start
    assert status == 408 and headers["content-type"] == PROBLEM and b"stalled" in body
    assert settings.request_timeout_seconds - 0.5 < waited < settings.request_timeout_seconds + 10
    jobs = settings.resolved_storage_dir / "jobs"
    wait_until(lambda: not jobs.exists() or not any(jobs.iterdir()), 10, what="the partial upload to be removed")


class Blackhole:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.slow
def test_a_hung_dependency_is_a_504_not_a_hung_request(service_settings, tmp_path):
    hole = Blackhole()
    settings = service_settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{hole.port}/0", "request_timeout_seconds": 2.0,
        "key_prefix": f"hung-{uuid.uuid4().hex[:6]}:",
    })
    api = LiveAPI(settings, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            for method, path in [("GET", "/jobs/" + "a" * 32), ("DELETE", "/jobs/" + "a" * 32),
                                 ("POST", "/compress")]:
                start = time.monotonic()
                answer = client.request(method, path, content=nifti1_header((8, 8, 8)) if method == "POST" else None)
                waited = time.monotonic() - start
                body = problem(answer, 504)
                assert body["type"] == "urn:nvc:problem:request-timeout" and answer.headers["retry-after"] == "5"
                assert waited < 15, f"{method} {path} took {waited:.1f} s"
            assert client.get("/healthz").status_code == 200
    finally:
        api.close()
        hole.close()


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_load_three_keys_against_tight_limits(service_settings, make_stack, tmp_path):
    """Three clients (one key each) push 12 volumes apiece with 5 in flight, against a limit of 3
    active jobs per key and a small rate budget: the service answers 429 with Retry-After, the SDK
    waits and retries with the same Idempotency-Key, and every volume ends as exactly one job of
    its own key with a verified result."""
    import numpy as np
    import redis

    from app.auth import owner_of_key
    from nvc.sdk import Client
    from nvc.sdk.retry import RetryPolicy

    keys = [f"load-key-{i}" for i in range(3)]
    settings = service_settings.model_copy(update={
        "api_keys": keys, "max_active_jobs": 3, "rate_limit_per_minute": 600, "rate_limit_burst": 20,
    })
    stack = make_stack(settings)
    stack.start_worker()
    url = stack.start_api()
    retries: dict[str, list[str]] = {key: [] for key in keys}
    results: dict[str, list] = {}

    def run(key: str, index: int) -> None:
        folder = tmp_path / f"in-{index}"
        folder.mkdir()
        rng = np.random.default_rng(index)
        paths = []
        for j in range(12):
            volume = (rng.integers(0, 40, (24, 20, 6)) + 300 + j).astype(np.uint16)
            path = folder / f"v{j}.npy"
            np.save(path, volume)
            paths.append(path)
        with Client(url, api_key=key, poll_interval=0.2, retry=RetryPolicy(max_attempts=20, max_backoff=5),
                    on_retry=lambda attempt, reason, delay: retries[key].append(reason)) as client:
            results[key] = list(client.compress_many(paths, concurrency=5, dest_dir=tmp_path / f"out-{index}",
                                                     timeout=300))

    threads = [threading.Thread(target=run, args=(key, i)) for i, key in enumerate(keys)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    elapsed = time.monotonic() - start
    for key in keys:
        assert len(results[key]) == 12 and all(r.ok and r.verified for r in results[key]), results[key]
    limited = sum(1 for reasons in retries.values() for reason in reasons if reason == "HTTP 429")
    assert limited > 0, retries  # the limits were reached, and honoured
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    owners = [r.hget(k, "owner") for k in r.scan_iter(settings.key_prefix + "job:*")]
    states = [r.hget(k, "state") for k in r.scan_iter(settings.key_prefix + "job:*")]
    r.close()
    assert sorted(owners) == sorted(owner_of_key(k) for k in keys for _ in range(12))  # one job per volume
    assert set(states) == {"succeeded"}
    metrics = httpx.get(url + "/metrics").text
    print(f"load: 36 jobs from 3 keys in {elapsed:.1f} s, {limited} answers were 429 and retried")
    assert 'status="429"' in metrics
