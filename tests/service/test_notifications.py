"""Job-end notifications and Server-Sent Events against a real API and worker: a receiver gets
exactly one valid signed POST per finished job, a refused first delivery is retried, the
per-key default applies, and targets the service must not call are refused with 422."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import npy_bytes, wait_until
from service.notify import check_target, sign, verify

SECRET = "test-callback-secret"


class Receiver:
    """An HTTP server recording every POST; paths starting with /refuse-first answer 503 to the
    first request they get."""

    def __init__(self):
        self.requests: list[dict] = []
        self.refused: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 200
                if self.path.startswith("/refuse-first") and self.path not in receiver.refused:
                    receiver.refused.add(self.path)
                    status = 503
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_job(self, job_id: str) -> list[dict]:
        return [r for r in self.requests if r["headers"].get("X-NVC-Delivery") == job_id]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def notify_settings(service_settings, **extra):
    return service_settings.model_copy(update={
        "callback_allowed_hosts": ["127.0.0.1"], "callback_allow_private": True, "callback_secret": SECRET,
        "callback_retry_seconds": 0.5, **extra,
    })


def valid(request: dict) -> bool:
    h = request["headers"]
    return verify(SECRET, h["X-NVC-Timestamp"], request["body"], h["X-NVC-Signature"])


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_one_signed_notification_per_finished_job_and_a_retry(service_settings, make_stack, receiver, small_volume):
    settings = notify_settings(service_settings)
    stack = make_stack(settings)
    stack.start_worker()
    url = stack.start_api()
    body = npy_bytes(small_volume)
    with httpx.Client(base_url=url, timeout=60) as client:
        jobs = [client.post("/compress", content=body, params={"callback_url": f"{receiver.url}/hook/{n}"}).json()
                for n in range(3)]
        retried = client.post("/compress", content=body, params={"callback_url": f"{receiver.url}/refuse-first"})
        jobs.append(retried.json())
        assert client.put("/callback", json={"callback_url": f"{receiver.url}/default"}).status_code == 200
        jobs.append(client.post("/compress", content=body).json())  # the key's default applies
        broken = client.post("/compress", content=b"\x93NUMPY\x01\x00" + b"{}".ljust(118) + b"\n",
                             params={"callback_url": f"{receiver.url}/hook/failed"})
        assert all(j["state"] == "queued" for j in jobs), jobs

        for job in jobs:
            done = client.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
            assert done["state"] == "succeeded", done
        wait_until(lambda: all(any(r["status"] == 200 for r in receiver.for_job(j["id"])) for j in jobs), 60,
                   interval=0.1, what="a delivered notification for every job")
        time.sleep(2.0)  # time for a duplicate to show up, were there one (the retry delay is 0.5 s)

        for job in jobs:
            got = receiver.for_job(job["id"])
            delivered = [r for r in got if r["status"] == 200]
            assert len(delivered) == 1 and all(valid(r) for r in got), got
            payload = json.loads(delivered[0]["body"])
            assert payload["event"] == "job.succeeded" and payload["job"]["id"] == job["id"]
            assert payload["job"]["state"] == "succeeded" and payload["job"]["output_sha256"]
            record = client.get(f"/jobs/{job['id']}").json()
            assert record["notifications"][-1]["delivered"] is True
        first, second = receiver.for_job(jobs[3]["id"])
        assert (first["status"], second["status"]) == (503, 200) and first["path"] == "/refuse-first"
        history = client.get(f"/jobs/{jobs[3]['id']}").json()["notifications"]
        assert [(d["attempt"], d["delivered"], d["outcome"]) for d in history] == [
            (1, False, "HTTP 503"), (2, True, "HTTP 200")]
        assert receiver.for_job(jobs[4]["id"])[0]["path"] == "/default"
        # a tampered body or an old timestamp does not verify
        sample = receiver.for_job(jobs[0]["id"])[0]
        h = sample["headers"]
        assert not verify(SECRET, h["X-NVC-Timestamp"], sample["body"] + b" ", h["X-NVC-Signature"])
        assert not verify(SECRET, str(int(h["X-NVC-Timestamp"]) - 3600), sample["body"],
                          sign(SECRET, str(int(h["X-NVC-Timestamp"]) - 3600), sample["body"]))
    assert broken.status_code in (415, 422)  # refused before a job existed: nothing to notify
    assert receiver.for_job(broken.json().get("id", "-")) == []


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_server_sent_events_follow_a_job_to_its_end(service_settings, make_stack, small_volume):
    stack = make_stack(service_settings)
    stack.start_worker()
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/compress", content=npy_bytes(small_volume)).json()
        states = []
        with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    states.append(json.loads(line[6:])["state"])
        assert states[-1] == "succeeded" and states[0] in ("queued", "running", "succeeded")
        order = ["queued", "running", "succeeded"]
        assert [order.index(s) for s in states] == sorted(order.index(s) for s in states)
        assert client.get("/jobs/" + "0" * 32 + "/events").status_code == 404


def test_callbacks_to_disallowed_targets_are_refused_with_422(service_settings, small_volume):
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = service_settings.model_copy(update={"callback_allowed_hosts": ["127.0.0.1", "localhost", "hooks.test"],
                                                   "callback_secret": SECRET})
    body = npy_bytes(small_volume)
    with TestClient(create_app(settings)) as client:
        for target, why in (
            ("http://127.0.0.1:9/hook", "loopback"),
            ("http://localhost/hook", "loopback"),
            ("http://example.org/hook", "allow-list"),
            ("ftp://127.0.0.1/x", "http"),
            ("http://user:pw@127.0.0.1/x", "credentials"),
        ):
            answer = client.post("/compress", content=body, params={"callback_url": target})
            assert answer.status_code == 422, (target, answer.text)
            assert why in answer.json()["detail"] and answer.json()["type"].endswith("callback-not-allowed")
        assert client.put("/callback", json={"callback_url": "http://127.0.0.1/x"}).status_code == 422
        assert client.get("/callback").json() == {"callback_url": None}


def test_every_resolved_address_is_checked(service_settings):
    settings = service_settings.model_copy(update={"callback_allowed_hosts": ["*.hooks.test", "*"]})
    from service.problems import Problem

    def resolver(answers):
        return lambda host, port: answers

    assert check_target("https://a.hooks.test/x", settings, resolver(["93.184.216.34"]))
    for answers in (["93.184.216.34", "10.0.0.7"], ["169.254.169.254"], ["::ffff:127.0.0.1"], ["fe80::1"],
                    ["192.168.1.1"], ["::1"], ["0.0.0.0"], []):
        with pytest.raises(Problem) as refused:
            check_target("https://a.hooks.test/x", settings, resolver(answers))
        assert refused.value.status == 422, answers
    closed = service_settings.model_copy(update={"callback_allowed_hosts": []})
    with pytest.raises(Problem, match="not enabled"):
        check_target("https://a.hooks.test/x", closed, resolver(["93.184.216.34"]))
