"""Schemathesis against the running API (uvicorn + a Celery worker + Redis, API keys on):
generated requests for every operation of /openapi.json, including malformed ones; no answer
may be a 5xx, and every answer must match the document (status code declared, content type,
headers, body schema). Requests without a key must be refused (`ignored_auth`).

A real job (compressed by the worker) is handed to the job routes, so their success paths
(a Job body, a result download) are checked too, not only the 404s of random ids.

CI runs NVC_SCHEMATHESIS_EXAMPLES (default 25) examples per operation and phase; by hand e.g.
`NVC_SCHEMATHESIS_EXAMPLES=500 pytest tests/service/test_schemathesis.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from conftest import REPO, npy_bytes

pytestmark = [pytest.mark.slow]

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
    "missing_required_header",
    "unsupported_method",
]
# Not run, on purpose: positive_data_acceptance (schema-valid random bytes are not valid volumes:
# the API must refuse them), use_after_free / ensure_resource_availability (DELETE keeps the
# job record, marked cancelled or result_deleted, by design).


@pytest.mark.usefixtures("require_codec")
def test_schemathesis_finds_no_5xx_and_no_schema_mismatch(service_settings, make_stack, small_volume, tmp_path):
    pytest.importorskip("schemathesis")
    key = "st-key-" + os.urandom(8).hex()
    settings = service_settings.model_copy(update={"api_keys": [key], "rate_limit_per_minute": 0})
    stack = make_stack(settings)
    stack.start_worker()
    url = stack.start_api()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=60, headers=auth) as client:
        job = client.post("/compress", content=npy_bytes(small_volume)).json()
        done = client.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
        assert done["state"] == "succeeded", done
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.job_id" = "{job["id"]}"\n')
    examples = os.environ.get("NVC_SCHEMATHESIS_EXAMPLES", "25")
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
         "--header", f"Authorization: Bearer {key}", "--checks", ",".join(CHECKS), "--max-examples", examples,
         "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1", "--seed", "20261126",
         "--request-timeout", "30", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counts, out[-3000:]
    generated, passed = int(counts[1]), int(counts[2])
    print(f"schemathesis: {generated} generated, {passed} passed")
    if os.environ.get("NVC_SCHEMATHESIS_SHOW"):  # the full report, for a run by hand with -s
        print(out)
    assert generated == passed and generated >= 100, out[-3000:]
    document = json.loads((REPO / "openapi" / "openapi.json").read_text())
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"{operations} selected / {operations} total" in out  # every operation of the document was exercised
    assert stack.log("api").count("Traceback") == 0, stack.log("api")[-3000:]
