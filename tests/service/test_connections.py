"""Connections against a real API process (issue 8 cases 5 and 6): long-polls share one Redis
subscription and are bounded (429, never 503 while Redis is up); request headers are bounded in
size (431, bytes not kept) and in time (a connection that never finishes them is closed). Real
sockets, a real uvicorn process served as `nvc api` serves it (app/server.py)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from conftest import npy_bytes


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def queued_job(client: httpx.Client) -> str:
    """A job that stays queued (the stack runs no worker)."""
    answer = client.post("/compress", content=npy_bytes(np.zeros((8, 8, 8), np.uint8)))
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def concurrent_long_polls(url: str, job_id: str, n: int, wait: float) -> list[httpx.Response]:
    answers: list = [None] * n

    def poll(i: int) -> None:
        with httpx.Client(base_url=url, timeout=wait + 60) as c:
            answers[i] = c.get(f"/jobs/{job_id}", params={"wait": wait})

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(wait + 90)
    return answers


def test_sixty_long_polls_from_one_key_share_one_subscription(service_settings, make_stack):
    """Issue 8 case 5: more than about 50 concurrent `?wait=40` from one key answered 503 "Redis
    is not reachable" (a pub/sub connection each: "Too many connections")."""
    import redis

    stack = make_stack(service_settings)
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=60) as client:
        job_id = queued_job(client)
        r = redis.Redis.from_url(service_settings.redis_url)
        clients_before = r.info("clients")["connected_clients"]
        during: list[int] = []
        sampler = threading.Thread(target=lambda: [during.append(r.info("clients")["connected_clients"])
                                                   or time.sleep(0.25) for _ in range(24)])
        sampler.start()
        answers = concurrent_long_polls(url, job_id, 60, wait=8)
        sampler.join()
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * 60, statuses
        assert all(a.json()["state"] == "queued" for a in answers)
        # a bounded pool plus one subscription, not a connection per waiting request (other
        # tests may share this Redis, hence the margin)
        growth = max(during) - clients_before
        assert growth <= getattr(service_settings, "redis_max_connections", 32) + 8, (growth, during)
        r.close()


def test_long_polls_beyond_the_limit_are_429_with_retry_after(service_settings, make_stack):
    stack = make_stack(service_settings.model_copy(update={"max_long_polls": 10}))
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=60) as client:
        job_id = queued_job(client)
        answers = concurrent_long_polls(url, job_id, 25, wait=6)
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 10 and 429 in statuses, statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.headers["retry-after"] and "NVC_MAX_LONG_POLLS" in refused.json()["detail"]
        assert client.get(f"/jobs/{job_id}").status_code == 200  # a plain GET is never limited by it


def _send_slowly(port: int, total: int, piece: int, results: list, i: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(60)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        while sent < total:
            s.sendall(b"a" * piece)
            sent += piece
        results[i] = ("sent all", s.recv(4096))
    except OSError as exc:  # the server answered and closed: the rest cannot be sent
        try:
            results[i] = ("closed", s.recv(4096))
        except OSError:
            results[i] = ("closed", repr(exc).encode())
    finally:
        s.close()


def test_request_headers_are_bounded_in_size_and_memory(service_settings, make_stack):
    """Issue 8 case 6: 64 MB request headers were accepted before authentication, and 8 unfinished
    64 MB headers took the API from 277 to 846 MB."""
    stack = make_stack(service_settings)
    url = stack.start_api()
    port = int(url.rsplit(":", 1)[1])
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        big = client.get("/healthz", headers={"X-Big": "a" * (service_settings.max_header_bytes + 1)})
        assert big.status_code == 431 and "NVC_MAX_HEADER_BYTES" in big.json()["detail"]
        assert client.get("/healthz", headers={"X-Fine": "a" * 8000}).status_code == 200
    rss_before = rss_bytes(stack.api_proc.pid)
    results: list = [None] * 8
    threads = [threading.Thread(target=_send_slowly, args=(port, 64 * 2**20, 1 << 20, results, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    growth = rss_bytes(stack.api_proc.pid) - rss_before
    # the server stopped each one early: it answered 431 and closed (the rest could not be sent)
    assert all(r is not None and r[0] == "closed" for r in results), results
    assert any(b"431" in r[1] for r in results), results
    assert growth < 64 * 2**20, f"the API grew by {growth / 2**20:.0f} MiB"


def test_connections_that_never_finish_their_headers_are_closed(service_settings, make_stack):
    stack = make_stack(service_settings.model_copy(update={"header_timeout_seconds": 2.0}))
    url = stack.start_api()
    port = int(url.rsplit(":", 1)[1])
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: ")  # and never the end of the headers
        s.settimeout(60)
        socks.append(s)
    start = time.monotonic()
    for s in socks:
        assert s.recv(4096) == b""  # closed by the server
        s.close()
    assert time.monotonic() - start < 30
    with httpx.Client(base_url=url, timeout=30) as client:  # and the API still answers
        assert client.get("/healthz").status_code == 200


def test_a_large_body_right_after_the_headers_is_not_mistaken_for_large_headers(service_settings, make_stack):
    stack = make_stack(service_settings)
    url = stack.start_api()
    port = int(url.rsplit(":", 1)[1])
    body = npy_bytes(np.zeros((128, 128, 64), np.uint16))  # 2 MiB, sent with the headers in one write
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(60)
    s.sendall(b"POST /compress HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
