"""Access: API keys as bearer tokens, from settings and from the hashed key file of
`nvc keys`; jobs visible only to the key that made them (404 for another key, 401 without
one); revocation within a second; `nvc serve`/`nvc api` open only on localhost."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from app.auth import KeyFile, KeyRing, hash_key, owner_of_key
from app.main import create_app
from conftest import npy_bytes, wait_until
from nvc.cli import CLIError, main

PROBLEM = "application/problem+json"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    return answer.json()


def test_settings_keys_gate_every_job_route_and_scope_jobs(service_settings, small_volume):
    settings = service_settings.model_copy(update={"api_keys": ["alpha-key", "beta-key"]})
    alpha, beta = {"Authorization": "Bearer alpha-key"}, {"Authorization": "Bearer beta-key"}
    with TestClient(create_app(settings)) as client:
        job = client.post("/compress", content=npy_bytes(small_volume), headers=alpha).json()
        assert job["state"] == "queued"
        for method, path in [("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/result"),
                             ("DELETE", f"/jobs/{job['id']}"), ("POST", "/compress"), ("POST", "/decompress")]:
            answer = client.request(method, path)
            body = problem(answer, 401)
            assert answer.headers["www-authenticate"] == "Bearer" and "API key" in body["detail"]
            problem(client.request(method, path, headers={"Authorization": "Bearer nope"}), 401)
        # another key: the job does not exist for it (no id oracle)
        for method, path in [("GET", f"/jobs/{job['id']}"), ("GET", f"/jobs/{job['id']}/result"),
                             ("DELETE", f"/jobs/{job['id']}")]:
            assert problem(client.request(method, path, headers=beta), 404)["type"] == "urn:nvc:problem:job-not-found"
        assert client.get(f"/jobs/{job['id']}", headers=alpha).json()["id"] == job["id"]
        assert client.get(f"/jobs/{job['id']}", headers={"X-API-Key": "alpha-key"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        # the record keeps a digest of the key, never the key
        import redis

        r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        record = r.hgetall(f"{settings.key_prefix}job:{job['id']}")
        r.close()
        assert record["owner"] == owner_of_key("alpha-key") and "alpha-key" not in json.dumps(record)


def test_nvc_keys_cli_creates_lists_and_revokes_hashed_keys(tmp_path):
    path = tmp_path / "keys" / "api-keys.json"
    code, key, err = cli("keys", "--file", str(path), "create", "--name", "pacs-gateway")
    key = key.strip()
    assert code == 0 and key.startswith("nvc_") and len(key) > 40 and "pacs-gateway" in err
    code, out, _ = cli("keys", "--file", str(path), "create", "--name", "research", "--json")
    second = json.loads(out)
    text = path.read_text()
    assert key not in text and second["key"] not in text  # only hashes are stored
    assert hash_key(key) in text and hash_key(second["key"]) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, out, _ = cli("keys", "--file", str(path), "list", "--json")
    listed = json.loads(out)
    assert [k["name"] for k in listed] == ["pacs-gateway", "research"]
    assert listed[0]["owner"] == owner_of_key(key) and listed[0]["revoked_at"] is None
    code, _, err = cli("keys", "--file", str(path), "revoke", second["id"])
    assert code == 0 and "revoked" in err
    code, out, _ = cli("keys", "--file", str(path), "list")
    assert second["id"] in out and "research" in out
    assert [r.active for r in KeyFile(path).load()] == [True, False]
    code, _, err = cli("keys", "--file", str(path), "revoke", "k00000000")
    assert code == 1 and "no key" in err
    path.write_text('{"version": 99}')
    code, _, err = cli("keys", "--file", str(path), "list")
    assert code == 1 and "not a version 1" in err


def test_key_ring_follows_the_file_and_never_reopens(tmp_path):
    path = tmp_path / "api-keys.json"
    ring = KeyRing([], path, check_interval=0.0)
    assert not ring.required  # nothing configured: open
    token, record = KeyFile(path).create("a")
    assert ring.required and ring.lookup(token) == (record.owner, False)
    assert ring.lookup("nvc_wrong") == (None, False)
    KeyFile(path).revoke(record.id)
    assert ring.lookup(token) == (None, True)
    path.unlink()  # deleting the file does not open a process that required keys
    assert ring.required and ring.lookup(token) == (None, False)
    path.write_text("{ broken")
    assert ring.required and ring.lookup(token) == (None, False)
    both = KeyRing(["from-env"], path, check_interval=0.0)
    assert both.required and both.lookup("from-env")[0] == owner_of_key("from-env")


@pytest.mark.slow
def test_key_file_keys_against_a_live_api(service_settings, make_stack, small_volume):
    """A real uvicorn process: a key created while it runs is required at once, a revoked key is
    refused within a second, and each key sees only its own jobs."""
    stack = make_stack(service_settings)
    url = stack.start_api()
    path = service_settings.resolved_api_keys_file
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/compress", content=npy_bytes(small_volume)).status_code == 202  # open: no keys yet
        _, key_a, _ = cli("keys", "--file", str(path), "create", "--name", "a")
        _, out, _ = cli("keys", "--file", str(path), "create", "--name", "b", "--json")
        key_a, key_b = key_a.strip(), json.loads(out)
        a = {"Authorization": f"Bearer {key_a}"}
        b = {"Authorization": f"Bearer {key_b['key']}"}
        wait_until(lambda: client.post("/compress", content=npy_bytes(small_volume)).status_code == 401, 10,
                   what="the API to require keys")
        job = client.post("/compress", content=npy_bytes(small_volume), headers=a)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        assert client.get(f"/jobs/{job_id}", headers=a).status_code == 200
        assert problem(client.get(f"/jobs/{job_id}", headers=b), 404)["detail"].startswith("no job")
        assert problem(client.get(f"/jobs/{job_id}"), 401)
        assert problem(client.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer " + key_a[:-1]}), 401)
        cli("keys", "--file", str(path), "revoke", key_b["id"])
        start = time.monotonic()
        wait_until(lambda: client.get(f"/jobs/{job_id}", headers=b).status_code == 401, 10, interval=0.05,
                   what="the revoked key to be refused")
        assert time.monotonic() - start < 3.0
        assert "revoked" in client.get(f"/jobs/{job_id}", headers=b).json()["detail"]
        assert client.get(f"/jobs/{job_id}", headers=a).status_code == 200


def test_serve_is_open_only_on_localhost(service_settings, tmp_path):
    from nvc.commands.serve import access_note, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    note = access_note(service_settings, "127.0.0.1", 8000, allow_open=False)
    assert note.startswith("OPEN") and "127.0.0.1:8000" in note
    with pytest.raises(CLIError, match="refusing to serve on 0.0.0.0 without API keys"):
        access_note(service_settings, "0.0.0.0", 8000, allow_open=False)
    assert access_note(service_settings, "0.0.0.0", 8000, allow_open=True).startswith("OPEN")
    keyed = service_settings.model_copy(update={"api_keys": ["k1", "k2"]})
    assert access_note(keyed, "0.0.0.0", 8000, allow_open=False) == "API keys required (2 from NVC_API_KEYS)"
    KeyFile(service_settings.resolved_api_keys_file).create("x")
    assert "key file" in access_note(service_settings, "0.0.0.0", 8000, allow_open=False)


def test_nvc_api_refuses_an_open_network_listener(service_settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
    env.update(NVC_REDIS_URL=service_settings.redis_url, NVC_DATA_DIR=str(service_settings.data_dir))
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nvc.cli", "api", "--host", "0.0.0.0", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "refusing to serve on 0.0.0.0 without API keys" in done.stderr
