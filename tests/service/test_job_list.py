"""GET /jobs: the caller's jobs, newest first, paged, filtered by state, never another key's."""

from __future__ import annotations

import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from app.main import create_app
from conftest import npy_bytes
from service.jobs import JobStore

ALPHA, BETA = {"Authorization": "Bearer alpha-key"}, {"Authorization": "Bearer beta-key"}


@pytest.fixture
def client(service_settings):
    settings = service_settings.model_copy(update={"api_keys": ["alpha-key", "beta-key"], "max_active_jobs": 0})
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def store(service_settings):
    client = redis_lib.Redis.from_url(service_settings.redis_url, decode_responses=True)
    yield JobStore(client, service_settings.key_prefix, service_settings.job_ttl_seconds)
    client.close()


def submit(client, small_volume, headers, name: str) -> str:
    answer = client.post("/compress", files={"file": (name, npy_bytes(small_volume))}, headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def all_pages(client, headers, **params) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        answer = client.get("/jobs", params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append([job["id"] for job in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_lists_only_the_callers_jobs_newest_first_in_pages(client, small_volume):
    mine = [submit(client, small_volume, ALPHA, f"a{i}.npy") for i in range(7)]
    theirs = submit(client, small_volume, BETA, "b.npy")
    pages = all_pages(client, ALPHA, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [job_id for page in pages for job_id in page] == mine[::-1]
    assert all_pages(client, BETA) == [[theirs]]
    first = client.get("/jobs", headers=ALPHA).json()["jobs"][0]
    assert first["id"] == mine[-1] and first["input_name"] == "a6.npy" and first["state"] == "queued"
    assert client.get("/jobs").status_code == 401


def test_filters_by_state(client, store, small_volume):
    ids = [submit(client, small_volume, ALPHA, f"s{i}.npy") for i in range(5)]
    for job_id in ids[:2]:
        store.transition(job_id, "running", ["queued"], started_at=time.time())
    store.transition(ids[0], "failed", ["running"], finished_at=time.time(), error="x")
    assert all_pages(client, ALPHA, state="queued", limit=2) == [[ids[4], ids[3]], [ids[2]]]
    assert all_pages(client, ALPHA, state=["running", "failed"]) == [[ids[1], ids[0]]]
    assert all_pages(client, ALPHA, state="succeeded") == [[]]
    assert client.get("/jobs", params={"state": "lost"}, headers=ALPHA).status_code == 422


def test_expired_records_drop_out_and_bad_cursors_are_422(client, store, small_volume, service_settings):
    ids = [submit(client, small_volume, ALPHA, f"e{i}.npy") for i in range(3)]
    store.r.delete(store.keys.job(ids[1]))  # as if its TTL ran out
    assert all_pages(client, ALPHA) == [[ids[2], ids[0]]]
    answer = client.get("/jobs", params={"cursor": "not-a-cursor"}, headers=ALPHA)
    assert answer.status_code == 422 and "cursor" in answer.json()["detail"]
    assert client.get("/jobs", params={"limit": 0}, headers=ALPHA).status_code == 422


def test_the_sdk_lists_jobs_page_by_page(client, small_volume):
    from nvc.sdk import Client

    ids = [submit(client, small_volume, ALPHA, f"k{i}.npy") for i in range(3)]
    with Client("http://testserver", api_key="alpha-key", transport=client._transport) as sdk:
        first, cursor = sdk.list_jobs(limit=2)
        rest, end = sdk.list_jobs(limit=2, cursor=cursor)
        queued, _ = sdk.list_jobs(state=["queued", "running"])
    assert [j.id for j in first + rest] == ids[::-1] and end is None
    assert {j.id for j in queued} == set(ids)
