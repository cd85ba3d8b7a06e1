"""openapi/openapi.json is generated from the app; this fails when it drifts from the code."""

from __future__ import annotations

import json

from app.export_openapi import DEFAULT_PATH, main, render


def test_committed_openapi_matches_the_app():
    assert DEFAULT_PATH.exists(), "openapi/openapi.json is missing: run `python -m app.export_openapi`"
    assert DEFAULT_PATH.read_text() == render(), "openapi/openapi.json is stale: run `python -m app.export_openapi`"


def test_check_mode_detects_drift(tmp_path):
    stale = tmp_path / "openapi.json"
    stale.write_text(render().replace('"/compress"', '"/compress-old"'))
    assert main(["--check", "--path", str(stale)]) == 1
    assert main(["--path", str(stale)]) == 0
    assert main(["--check", "--path", str(stale)]) == 0


def test_document_covers_the_api_contract():
    doc = json.loads(DEFAULT_PATH.read_text())
    paths = doc["paths"]
    assert set(paths) >= {"/compress", "/decompress", "/jobs/{job_id}", "/jobs/{job_id}/result", "/healthz",
                          "/readyz", "/metrics"}
    assert set(paths["/jobs/{job_id}"]) == {"get", "delete"}
    for route in ("/compress", "/decompress"):
        post = paths[route]["post"]
        assert "202" in post["responses"] and "Location" in post["responses"]["202"]["headers"]
        assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/octet-stream"}
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in post["parameters"])
        for code, response in post["responses"].items():
            if code[0] in "45":
                assert list(response["content"]) == ["application/problem+json"]
    job = doc["components"]["schemas"]["Job"]["properties"]
    assert job["state"]["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    for field in ("progress", "created_at", "started_at", "finished_at", "input_size", "output_size",
                  "bits_per_voxel", "worker", "error"):
        assert field in job
