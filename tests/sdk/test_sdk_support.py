"""Test support (no tests here): ``FakeNVC``, a scripted stand-in for the NVC API.

Shared by tests/sdk/test_sdk.py and tests/sdk/test_remote.py. It is a real HTTP server
(http.server in a thread on a free port) that speaks the service's job API closely enough
for the client (multipart upload, Idempotency-Key, job polling, result download,
problem+json errors) and can be told to answer 503/429 or drop the connection for the next
requests of a route. It records every attempt so tests can check what the client sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from nvc.sdk import RetryPolicy

FAST = RetryPolicy(max_attempts=5, backoff=0.01, max_backoff=0.05, jitter=0.0)


def transform(data: bytes) -> bytes:
    """What the fake server "computes" for a job: a deterministic function of the upload."""
    return hashlib.sha256(data).digest() + data[::-1]


class FakeNVC:
    """A scripted stand-in for the NVC API. ``faults[route]`` is a list consumed per request:
    ``"503"``, ``"429:<retry-after>"``, ``"409:<retry-after>"`` (same key still in progress),
    ``"drop"`` (close without answering), ``"drop-body"`` (start a result download, then cut it)."""

    def __init__(self, *, api_key: str | None = None, polls_to_finish: int = 2):
        self.api_key = api_key
        self.polls_to_finish = polls_to_finish
        self.faults: dict[str, list[str]] = {}
        self.attempts: list[dict] = []
        self.jobs: dict[str, dict] = {}
        self.by_key: dict[str, str] = {}
        self.results: dict[str, bytes] = {}
        self.redirect_to: str | None = None  # base URL that result downloads redirect to
        self.corrupt_sha = False
        self.lock = threading.Lock()
        self.max_running = 0
        self.slow: dict[str, int] = {}  # input name -> polls to finish
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_POST(self):
                server.handle(self, "POST")

            def do_DELETE(self):
                server.handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers --------------------------------------------------------------------------
    def send_json(self, h, status, body, headers=None, media="application/json"):
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", media)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def problem(self, h, status, detail, headers=None):
        self.send_json(
            h,
            status,
            {"type": "about:blank", "title": "x", "status": status, "detail": detail},
            headers,
            media="application/problem+json",
        )

    def read_body(self, h) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    @staticmethod
    def parse_multipart(body: bytes, content_type: str) -> tuple[str, bytes, dict]:
        boundary = re.search(r"boundary=([^;]+)", content_type).group(1).encode()
        fields, filename, data = {}, None, b""
        for part in body.split(b"--" + boundary)[1:-1]:
            head, _, value = part[2:].partition(b"\r\n\r\n")
            value = value[:-2]
            name = re.search(rb'name="([^"]*)"', head).group(1).decode()
            fn = re.search(rb'filename="([^"]*)"', head)
            if fn:
                filename, data = fn.group(1).decode(), value
            else:
                fields[name] = value.decode()
        return filename, data, fields

    def public(self, job: dict) -> dict:
        return {k: v for k, v in job.items() if not k.startswith("_")}

    # -- routing --------------------------------------------------------------------------
    def handle(self, h, method):
        path = urlsplit(h.path).path
        query = parse_qs(urlsplit(h.path).query)
        route = f"{method} {re.sub(r'/jobs/[0-9a-f]+', '/jobs/{id}', path)}"
        body = self.read_body(h) if method == "POST" else b""
        with self.lock:
            self.attempts.append(
                {
                    "route": route,
                    "time": time.monotonic(),
                    "key": h.headers.get("Idempotency-Key"),
                    "auth": h.headers.get("Authorization"),
                    "x_api_key": h.headers.get("X-API-Key"),
                    "size": len(body),
                }
            )
            script = self.faults.get(route) or []
            fault = script.pop(0) if script else None
        if fault == "drop":
            h.close_connection = True
            return
        if fault == "503":
            return self.problem(h, 503, "warming up")
        if fault and fault.startswith("429"):
            return self.problem(h, 429, "slow down", {"Retry-After": fault.split(":", 1)[1]})
        if fault and fault.startswith("409"):
            return self.problem(
                h,
                409,
                "a request with this Idempotency-Key is still in progress",
                {"Retry-After": fault.split(":", 1)[1]},
            )
        if self.api_key and path.startswith(("/compress", "/decompress", "/jobs")):
            if h.headers.get("Authorization") != f"Bearer {self.api_key}":
                return self.problem(h, 401, "the API key is not valid")
        if method == "POST" and path in ("/compress", "/decompress"):
            return self.submit(h, path[1:], body, query)
        m = re.fullmatch(r"/jobs/([0-9a-f]+)(/result)?", path)
        if m and method == "GET" and not m.group(2):
            return self.status(h, m.group(1))
        if m and method == "GET" and m.group(2):
            return self.result(h, m.group(1), fault)
        if m and method == "DELETE":
            job = self.jobs[m.group(1)]
            job["state"] = "cancelled"
            return self.send_json(h, 200, self.public(job))
        if path.startswith("/blob/"):
            return self.blob(h, path.rsplit("/", 1)[1], fault)
        if path == "/healthz":
            return self.send_json(h, 200, {"status": "ok"})
        return self.problem(h, 404, f"no such resource: {method} {path}")

    def submit(self, h, kind, body, query):
        ctype = h.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return self.problem(h, 415, "expected multipart")
        filename, data, fields = self.parse_multipart(body, ctype)
        key = h.headers.get("Idempotency-Key")
        with self.lock:
            if key and key in self.by_key:
                job = self.jobs[self.by_key[key]]
                return self.send_json(h, 202, self.public(job), {"Location": f"/jobs/{job['id']}"})
            if filename.endswith(".txt"):
                return self.problem(h, 415, f"{filename} is not a NIfTI, .npy or .nvc file")
            job_id = uuid.uuid4().hex
            result = transform(data)
            job = {
                "id": job_id,
                "kind": kind,
                "state": "queued",
                "progress": 0.0,
                "input_name": filename,
                "input_size": len(data),
                "input_sha256": hashlib.sha256(data).hexdigest(),
                "profile": fields.get("profile") or (query.get("profile") or [None])[0],
                "output_format": fields.get("format") or (query.get("format") or [None])[0],
                "created_at": "2025-01-01T00:00:00Z",
                "_polls": 0,
                "_need": self.slow.get(filename, self.polls_to_finish),
                "_fail": "broken" in filename,
            }
            self.jobs[job_id] = job
            self.results[job_id] = result
            if key:
                self.by_key[key] = job_id
        return self.send_json(h, 202, self.public(job), {"Location": f"/jobs/{job_id}"})

    def status(self, h, job_id):
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return self.problem(h, 404, f"no job {job_id}")
            if job["state"] in ("queued", "running"):
                job["_polls"] += 1
                if job["_polls"] >= job["_need"]:
                    if job["_fail"]:
                        job.update(state="failed", error="input is not a volume: bad header")
                    else:
                        result = self.results[job_id]
                        job.update(
                            state="succeeded",
                            progress=1.0,
                            output_size=len(result),
                            output_sha256=("0" * 64 if self.corrupt_sha else hashlib.sha256(result).hexdigest()),
                            bits_per_voxel=2.5,
                            output_name=job["input_name"] + ".out",
                        )
                else:
                    job.update(state="running", progress=job["_polls"] / job["_need"])
            running = sum(1 for j in self.jobs.values() if j["state"] == "running")
            self.max_running = max(self.max_running, running)
            return self.send_json(h, 200, self.public(job))

    def result(self, h, job_id, fault):
        job = self.jobs.get(job_id)
        if job is None or job["state"] != "succeeded":
            return self.problem(h, 409, "job has no result yet")
        if self.redirect_to:
            h.send_response(307)
            h.send_header("Location", f"{self.redirect_to}/blob/{job_id}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        return self.blob(h, job_id, fault)

    def blob(self, h, job_id, fault):
        data = self.results[job_id]
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if fault == "drop-body":
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(data)

    def keys_for(self, route: str) -> list[str | None]:
        return [a["key"] for a in self.attempts if a["route"] == route]
