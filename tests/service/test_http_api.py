"""The HTTP API in-process (FastAPI TestClient) against a real Redis, without a worker:
submission forms, idempotency, problem details, cancellation, long-poll, metrics, auth hook."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import threading
import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.main import create_app, mount_static
from conftest import npy_bytes
from service.jobs import JobStore, Keys

PROBLEM = "application/problem+json"


@pytest.fixture
def client(service_settings):
    with TestClient(create_app(service_settings)) as test_client:
        yield test_client


@pytest.fixture
def sync_redis(service_settings):
    client = redis_lib.Redis.from_url(service_settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(sync_redis, service_settings):
    return JobStore(sync_redis, service_settings.key_prefix, service_settings.job_ttl_seconds)


def nifti1_bytes(array) -> bytes:
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(array, np.eye(4))
    return image.to_bytes()


def assert_problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body = answer.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


@functools.lru_cache(maxsize=1)
def tiny_nvc() -> bytes:
    """A valid .nvc file (uploads are checked before a job is queued)."""
    import numpy as np

    import codec

    return codec.encode(np.full((4, 4, 2), 7, np.uint16))


def queued_messages(sync_redis, queue: str) -> list[dict]:
    return [json.loads(raw) for raw in sync_redis.lrange(queue, 0, -1)]


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "storage": "ok"}}


def test_readyz_reports_unreachable_redis(service_settings):
    from conftest import free_port

    settings = service_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(settings)) as client:
        answer = client.get("/readyz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unready"
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["redis"].startswith("unreachable")
        assert client.get("/healthz").status_code == 200


def test_compress_multipart_creates_a_queued_job(client, service_settings, sync_redis, small_volume):
    payload = npy_bytes(small_volume)
    answer = client.post("/compress", files={"file": ("knee.npy", payload)}, data={"profile": "default"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"].endswith(f"/jobs/{job['id']}")
    assert job["state"] == "queued" and job["progress"] == 0
    assert job["kind"] == "compress" and job["profile"] == "default"
    assert job["input_size"] == len(payload)
    assert job["input_sha256"] == hashlib.sha256(payload).hexdigest()
    assert job["input_format"] == "npy" and job["input_name"] == "knee.npy"
    assert job["output_name"] == "knee.npy.nvc" and job["output_format"] == "nvc"
    assert job["created_at"] and job["started_at"] is None and job["error"] is None
    # the upload is in storage, byte for byte
    stored = service_settings.resolved_storage_dir / "jobs" / job["id"] / "input"
    assert stored.read_bytes() == payload
    # one Celery message for this job on the submit queue
    messages = queued_messages(sync_redis, service_settings.gpu_queue)
    assert [(m["headers"]["task"], m["headers"]["id"]) for m in messages] == [("nvc.compress", job["id"])]
    assert client.get(f"/jobs/{job['id']}").json() == job


def test_compress_raw_body_nifti_gz(client, small_volume):
    payload = gzip.compress(nifti1_bytes(small_volume))
    answer = client.post("/compress?filename=scan.nii.gz", content=payload,
                         headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["input_format"] == "nii.gz" and job["output_name"] == "scan.nii.gz.nvc" and job["profile"] == "default"


def test_compress_raw_nii_is_sniffed(client, small_volume):
    answer = client.post("/compress", content=nifti1_bytes(small_volume))
    assert answer.status_code == 202, answer.text
    assert answer.json()["input_format"] == "nii" and answer.json()["output_name"] == "volume.nii.nvc"


@pytest.mark.parametrize("given, recorded", [("archive", "archive"), ("gpu", "archive")])
def test_form_fields_after_the_file_are_read(client, small_volume, given, recorded):
    """A profile field after the file is read; `gpu`, the old name of `archive`, is accepted
    (old clients) and recorded as `archive`."""
    boundary = "XyZ"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npy\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + npy_bytes(small_volume) + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"\r\n\r\n{given}\r\n--{boundary}--\r\n"
    ).encode()
    answer = client.post("/compress", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["profile"] == recorded


@pytest.mark.parametrize(
    "kwargs, status, slug",
    [
        ({"content": b"this is not a volume at all" * 40}, 415, "unsupported-input"),
        ({"content": b""}, 400, "empty-upload"),
        ({"files": {"other": ("a.npy", b"\x93NUMPY")}}, 400, "bad-multipart"),
        ({"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data"}}, 400, "bad-multipart"),
    ],
)
def test_bad_uploads_are_4xx_problems_and_leave_nothing(client, service_settings, sync_redis, kwargs, status, slug):
    answer = client.post("/compress", **kwargs)
    body = assert_problem(answer, status)
    assert body["type"] == f"urn:nvc:problem:{slug}"
    jobs_dir = service_settings.resolved_storage_dir / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []
    assert sync_redis.keys(service_settings.key_prefix + "job:*") == []
    assert sync_redis.llen(service_settings.gpu_queue) == 0


def test_too_large_upload_is_413(service_settings, small_volume):
    settings = service_settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(settings)) as client:
        payload = npy_bytes(small_volume)
        assert len(payload) > 1000
        body = assert_problem(client.post("/compress", content=payload), 413)
        assert "1000" in body["detail"]


def test_unknown_profile_and_format_are_422(client, small_volume):
    body = assert_problem(client.post("/compress?profile=best", content=npy_bytes(small_volume)), 422)
    assert "unknown profile" in body["detail"]
    assert_problem(client.post("/compress?profile=../x", content=npy_bytes(small_volume)), 422)
    body = assert_problem(client.post("/decompress?format=tiff", content=b"NVC..."), 422)
    assert body["errors"][0]["loc"] == ["query", "format"]
    body = assert_problem(client.post("/decompress", files={"file": ("a.nvc", tiny_nvc())}, data={"format": "png"}), 422)
    assert "format must be one of" in body["detail"]


def test_decompress_job_fields(client, service_settings, sync_redis):
    answer = client.post("/decompress?format=npy", files={"file": ("brain.nii.gz.nvc", tiny_nvc())})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "decompress" and job["output_format"] == "npy" and job["input_format"] == "nvc"
    assert job["output_name"] == "brain.npy"
    default = client.post("/decompress", content=tiny_nvc()).json()
    assert default["output_format"] == "nii.gz" and default["output_name"] == "volume.nii.gz"
    tasks = [m["headers"]["task"] for m in queued_messages(sync_redis, service_settings.gpu_queue)]
    assert tasks == ["nvc.decompress", "nvc.decompress"]


def test_idempotency_key_returns_the_same_job(client, service_settings, sync_redis, small_volume):
    payload = npy_bytes(small_volume)
    first = client.post("/compress", content=payload, headers={"Idempotency-Key": "k-1"})
    again = client.post("/compress", content=payload, headers={"Idempotency-Key": "k-1"})
    other = client.post("/compress", content=payload, headers={"Idempotency-Key": "k-2"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    assert sync_redis.llen(service_settings.gpu_queue) == 2  # one message per distinct job
    body = assert_problem(client.post("/decompress", content=b"x", headers={"Idempotency-Key": "k-1"}), 422)
    assert "compress" in body["detail"]


def test_idempotency_key_in_flight_is_409(client, service_settings, sync_redis, small_volume):
    digest = hashlib.sha256(b"busy").hexdigest()
    sync_redis.set(Keys(service_settings.key_prefix).idempotency("anonymous", digest), "f" * 32)
    answer = client.post("/compress", content=npy_bytes(small_volume), headers={"Idempotency-Key": "busy"})
    assert_problem(answer, 409)
    assert answer.headers["retry-after"] == "1"


def test_failed_upload_releases_its_idempotency_key(client, small_volume):
    bad = client.post("/compress", content=b"not a volume" * 50, headers={"Idempotency-Key": "retry-me"})
    assert_problem(bad, 415)
    good = client.post("/compress", content=npy_bytes(small_volume), headers={"Idempotency-Key": "retry-me"})
    assert good.status_code == 202 and "idempotent-replayed" not in good.headers


def test_unknown_jobs_and_routes_are_404_problems(client):
    assert_problem(client.get("/jobs/" + "0" * 32), 404)
    assert_problem(client.get("/jobs/not-an-id"), 404)
    assert_problem(client.get("/jobs/" + "0" * 32 + "/result"), 404)
    assert_problem(client.delete("/jobs/" + "0" * 32), 404)
    assert_problem(client.get("/no/such/route"), 404)
    assert_problem(client.put("/compress"), 405)
    body = assert_problem(client.get("/jobs/" + "0" * 32 + "?wait=-1"), 422)
    assert "wait" in body["detail"]


def test_result_of_an_unfinished_job_is_409(client, small_volume):
    job = client.post("/compress", content=npy_bytes(small_volume)).json()
    answer = client.get(f"/jobs/{job['id']}/result")
    body = assert_problem(answer, 409)
    assert body["state"] == "queued" and answer.headers["retry-after"] == "1"


def test_cancel_a_queued_job_deletes_its_objects(client, service_settings, small_volume):
    job = client.post("/compress", content=npy_bytes(small_volume)).json()
    folder = service_settings.resolved_storage_dir / "jobs" / job["id"]
    assert folder.is_dir()
    answer = client.delete(f"/jobs/{job['id']}")
    assert answer.status_code == 200
    assert answer.json()["state"] == "cancelled" and answer.json()["finished_at"]
    assert not folder.exists()
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"
    assert_problem(client.get(f"/jobs/{job['id']}/result"), 409)
    # cancelling again is harmless
    assert client.delete(f"/jobs/{job['id']}").json()["state"] == "cancelled"


def test_delete_of_a_succeeded_job_removes_its_result(client, service_settings, store, small_volume):
    job = client.post("/compress", content=npy_bytes(small_volume)).json()
    out = service_settings.resolved_storage_dir / "jobs" / job["id"] / "output.nvc"
    out.write_bytes(b"coded")
    store.transition(job["id"], "running", ["queued"], started_at=time.time())
    store.transition(job["id"], "succeeded", ["running"], finished_at=time.time(), progress=1.0,
                     output_key=f"jobs/{job['id']}/output.nvc", output_size=5)
    download = client.get(f"/jobs/{job['id']}/result")
    assert download.status_code == 200 and download.content == b"coded"
    assert 'filename="volume.npy.nvc"' in download.headers["content-disposition"]
    deleted = client.delete(f"/jobs/{job['id']}").json()
    assert deleted["state"] == "succeeded" and deleted["result_deleted"] is True
    assert not out.exists()
    assert_problem(client.get(f"/jobs/{job['id']}/result"), 410)


def test_long_poll_returns_when_the_job_finishes(client, store, small_volume):
    job = client.post("/compress", content=npy_bytes(small_volume)).json()

    def finish_later() -> None:
        time.sleep(0.4)
        store.transition(job["id"], "running", ["queued"], started_at=time.time())
        time.sleep(0.2)
        store.transition(job["id"], "failed", ["running"], finished_at=time.time(), error="boom")

    thread = threading.Thread(target=finish_later)
    start = time.monotonic()
    thread.start()
    answer = client.get(f"/jobs/{job['id']}?wait=20")
    elapsed = time.monotonic() - start
    thread.join()
    assert answer.json()["state"] == "failed" and answer.json()["error"] == "boom"
    assert 0.5 < elapsed < 10.0  # woken by the event, not by the 20 s timeout
    # a finished job answers at once; an active one waits at most `wait`
    start = time.monotonic()
    assert client.get(f"/jobs/{job['id']}?wait=20").json()["state"] == "failed"
    assert time.monotonic() - start < 1.0
    queued = client.post("/compress", content=npy_bytes(small_volume)).json()
    start = time.monotonic()
    assert client.get(f"/jobs/{queued['id']}?wait=0.5").json()["state"] == "queued"
    assert 0.4 < time.monotonic() - start < 8.0


def test_metrics_report_jobs_bytes_and_queue_depth(client, service_settings, store, small_volume):
    payload = npy_bytes(small_volume)
    jobs = [client.post("/compress", content=payload).json() for _ in range(3)]
    client.delete(f"/jobs/{jobs[0]['id']}")
    store.observe("job_duration", "compress,total", 0.7)
    text = client.get("/metrics").text
    assert 'nvc_jobs_active{state="queued"} 2.0' in text
    assert 'nvc_jobs_active{state="running"} 0.0' in text
    assert 'nvc_jobs_total{kind="compress",state="queued"} 3.0' in text
    assert 'nvc_jobs_total{kind="compress",state="cancelled"} 1.0' in text
    assert f'nvc_bytes_in_total{{kind="compress"}} {float(3 * len(payload))}' in text
    assert f'nvc_queue_depth{{queue="{service_settings.gpu_queue}"}} 3.0' in text
    assert 'nvc_job_duration_seconds_bucket{kind="compress",le="1.0",phase="total"} 1.0' in text
    assert 'nvc_job_duration_seconds_bucket{kind="compress",le="0.5",phase="total"} 0.0' in text
    assert 'nvc_http_requests_total{method="POST",route="/compress",status="202"} 3.0' in text


def test_api_keys_gate_jobs_and_scope_them_to_their_owner(service_settings, small_volume):
    settings = service_settings.model_copy(update={"api_keys": ["alpha-key", "beta-key"]})
    with TestClient(create_app(settings)) as client:
        body = assert_problem(client.post("/compress", content=npy_bytes(small_volume)), 401)
        assert "API key" in body["detail"]
        assert_problem(client.post("/compress", content=b"x", headers={"X-API-Key": "wrong"}), 401)
        job = client.post("/compress", content=npy_bytes(small_volume),
                          headers={"Authorization": "Bearer alpha-key"}).json()
        assert job["state"] == "queued"
        assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "alpha-key"}).status_code == 200
        assert_problem(client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "beta-key"}), 404)
        assert_problem(client.delete(f"/jobs/{job['id']}", headers={"X-API-Key": "beta-key"}), 404)
        assert client.get("/healthz").status_code == 200  # operations stay open


def test_cors_when_configured(service_settings):
    settings = service_settings.model_copy(update={"cors_origins": ["https://portal.example"]})
    with TestClient(create_app(settings)) as client:
        answer = client.options("/compress", headers={"Origin": "https://portal.example",
                                                      "Access-Control-Request-Method": "POST"})
        assert answer.headers["access-control-allow-origin"] == "https://portal.example"
        got = client.get("/healthz", headers={"Origin": "https://portal.example"})
        assert "location" in got.headers["access-control-expose-headers"].lower()


def test_settings_parse_comma_lists(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("NVC_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("NVC_API_KEYS", "k1,k2")
    monkeypatch.setenv("NVC_STORAGE_BACKEND", "s3")
    settings = Settings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_keys == ["k1", "k2"] and settings.storage_backend == "s3"
    monkeypatch.setenv("NVC_STORAGE_BACKEND", "ftp")
    with pytest.raises(ValueError):
        Settings()


def test_web_page_is_mounted_when_present(tmp_path):
    from fastapi import FastAPI

    (tmp_path / "index.html").write_text("<h1>NVC</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    app = FastAPI()
    mount_static(app, tmp_path)
    with TestClient(app) as client:
        assert client.get("/").text == "<h1>NVC</h1>"
        assert client.get("/static/app.js").text == "console.log(1)"
    bare = FastAPI()
    mount_static(bare, tmp_path / "absent")
    assert [r.path for r in bare.routes if getattr(r, "path", "") == "/"] == []


def test_unreachable_redis_is_503_not_500(service_settings, small_volume):
    from conftest import free_port

    settings = service_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(settings)) as client:
        answer = client.post("/compress", content=npy_bytes(small_volume), headers={"Idempotency-Key": "x"})
        body = assert_problem(answer, 503)
        assert "Redis" in body["detail"] and answer.headers["retry-after"] == "5"
        assert_problem(client.get("/jobs/" + "a" * 32), 503)


def test_unreachable_storage_is_503(service_settings, small_volume):
    settings = service_settings.model_copy(
        update={"storage_backend": "s3", "s3_endpoint_url": "http://127.0.0.1:9", "s3_access_key": "a",
                "s3_secret_key": "b"}
    )
    with TestClient(create_app(settings)) as client:
        body = assert_problem(client.post("/compress", content=npy_bytes(small_volume)), 503)
        assert "storage" in body["detail"]
        assert client.get("/readyz").json()["checks"]["storage"].startswith("unreachable")
