"""SDK tests against a small real HTTP server that scripts faults (``FakeNVC`` in
tests/sdk/test_sdk_support.py). It records every attempt, so the tests check what the client
actually sent: the same idempotency key on every retry, one job per submission, the
Retry-After delay honoured, the API key, and no credentials on a cross-origin redirect.
The real service is exercised end to end in tests/e2e/test_remote_e2e.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from nvc.sdk import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    Job,
    JobFailedError,
    JobState,
    NVCConnectionError,
    RetryPolicy,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from nvc.sdk.retry import parse_retry_after

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sdk_support import FAST, FakeNVC, transform  # noqa: E402


@pytest.fixture
def server():
    with FakeNVC() as fake:
        yield fake


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(bytes(range(256)) * 4000 + b"tail")  # ~1 MB, more than one upload chunk
    return path


# -- import weight ------------------------------------------------------------------------


def test_importing_the_sdk_and_remote_cli_pulls_in_nothing_heavy():
    code = (
        "import sys, nvc.sdk, nvc.commands.remote; "
        "heavy = [m for m in ('torch', 'numpy', 'fastapi', 'celery', 'codec', 'starlette', 'redis', 'nibabel', "
        "'app', 'worker') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import nvc.sdk pulled in: {out.stdout.strip()}"


# -- retries --------------------------------------------------------------------------------


def test_503_then_202_retries_with_the_same_idempotency_key_and_makes_one_job(server, volume):
    server.faults["POST /compress"] = ["503", "503"]
    with Client(server.url, retry=FAST) as client:
        job = client.compress(volume, profile="fast")
    keys = server.keys_for("POST /compress")
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert len(server.jobs) == 1 and job.id in server.jobs
    assert job.state is JobState.queued and job.profile == "fast"
    # every attempt carried the whole file
    assert all(a["size"] > volume.stat().st_size for a in server.attempts if a["route"] == "POST /compress")


def test_dropped_connections_are_retried_and_a_repeat_returns_the_same_job(server, volume):
    server.faults["POST /compress"] = ["drop", "drop"]
    with Client(server.url, retry=FAST) as client:
        job = client.compress(volume, idempotency_key="fixed-key-1")
        again = client.compress(volume, idempotency_key="fixed-key-1")
    assert server.keys_for("POST /compress") == ["fixed-key-1"] * 4
    assert again.id == job.id and len(server.jobs) == 1


def test_409_with_retry_after_is_retried_but_other_409s_are_not(server, volume):
    server.faults["POST /compress"] = ["409:0"]
    with Client(server.url, retry=FAST) as client:
        job = client.compress(volume)
        assert len(server.keys_for("POST /compress")) == 2 and len(server.jobs) == 1
        with pytest.raises(APIError) as info:  # result of an unfinished job: 409 without Retry-After
            client.result_bytes(job)
    assert info.value.status == 409
    assert len([a for a in server.attempts if a["route"] == "GET /jobs/{id}/result"]) == 1


def test_429_honours_retry_after(server, volume):
    server.faults["POST /compress"] = ["429:1"]
    with Client(server.url, retry=FAST) as client:
        client.compress(volume)
    first, second = [a["time"] for a in server.attempts if a["route"] == "POST /compress"]
    assert second - first >= 0.95  # the 0.01 s backoff would have been far shorter
    assert len(set(server.keys_for("POST /compress"))) == 1


def test_retries_give_up_with_the_servers_detail(server, volume):
    server.faults["POST /compress"] = ["503"] * 10
    with Client(server.url, retry=FAST) as client, pytest.raises(ServiceUnavailableError) as info:
        client.compress(volume)
    assert info.value.status == 503 and info.value.detail == "warming up"
    assert len(server.keys_for("POST /compress")) == FAST.max_attempts
    assert not server.jobs


def test_client_errors_are_not_retried_and_carry_the_problem_detail(server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with Client(server.url, retry=FAST) as client, pytest.raises(APIError) as info:
        client.compress(notes)
    assert info.value.status == 415 and "notes.txt is not a NIfTI" in str(info.value)
    assert len(server.keys_for("POST /compress")) == 1


def test_unreachable_server_raises_a_connection_error_after_the_retries():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen = []
    with Client(f"http://127.0.0.1:{port}", retry=FAST, on_retry=lambda *a: seen.append(a)) as client:
        with pytest.raises(NVCConnectionError, match="gave up after 5 attempts"):
            client.get_job("abc")
    assert [a[0] for a in seen] == [1, 2, 3, 4]


def test_retry_after_and_backoff_arithmetic():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    policy = RetryPolicy(backoff=0.5, multiplier=2, max_backoff=3, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.delay(1, retry_after=7) == 7
    jittered = RetryPolicy(backoff=1, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(50))


# -- jobs, waiting, downloads ------------------------------------------------------------


def test_compress_wait_download_round_trip(server, volume, tmp_path):
    events = []
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        job = client.compress(volume, on_upload=lambda sent, total: events.append((sent, total)))
        done = client.wait(job, timeout=10, on_update=lambda j: events.append(j.state))
        out = client.download(done, tmp_path / "out.nvc")
    assert done.state is JobState.succeeded and done.progress == 1.0 and done.bits_per_voxel == 2.5
    assert out.read_bytes() == transform(volume.read_bytes())
    assert hashlib.sha256(out.read_bytes()).hexdigest() == done.output_sha256
    assert (
        events[0][1] == volume.stat().st_size
        and events[len([e for e in events if isinstance(e, tuple)]) - 1][0] == volume.stat().st_size
    )
    assert JobState.running in events and JobState.succeeded in events
    assert not list(tmp_path.glob("*.part"))


def test_download_into_a_directory_uses_the_servers_name(server, volume, tmp_path):
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        job = client.wait(client.compress(volume), timeout=10)
        out = client.download(job, tmp_path)
    assert out == tmp_path / "scan.nii.gz.out"


def test_download_restarts_after_a_cut_connection(server, volume, tmp_path):
    server.faults["GET /jobs/{id}/result"] = ["drop-body"]
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        job = client.wait(client.compress(volume), timeout=10)
        out = client.download(job, tmp_path / "r.bin")
    assert out.read_bytes() == transform(volume.read_bytes())
    assert len([a for a in server.attempts if a["route"] == "GET /jobs/{id}/result"]) == 2


def test_cross_origin_redirect_does_not_leak_the_api_key(volume, tmp_path):
    with FakeNVC(api_key="s3cret") as api, FakeNVC() as store:
        api.redirect_to = store.url
        with Client(api.url, api_key="s3cret", retry=FAST, poll_interval=0.01) as client:
            job = client.wait(client.compress(volume), timeout=10)
            store.results[job.id] = api.results[job.id]
            out = client.download(job, tmp_path / "r.bin")
        assert out.read_bytes() == transform(volume.read_bytes())
        assert all(a["auth"] == "Bearer s3cret" for a in api.attempts)
        blob = [a for a in store.attempts if a["route"].startswith("GET /blob")]
        assert len(blob) == 1 and blob[0]["auth"] is None and blob[0]["x_api_key"] is None

        async def fetch():
            async with AsyncClient(api.url, api_key="s3cret", retry=FAST) as client:
                return await client.download(job, tmp_path / "a.bin")

        assert asyncio.run(fetch()).read_bytes() == transform(volume.read_bytes())
        blob = [a for a in store.attempts if a["route"].startswith("GET /blob")]
        assert len(blob) == 2 and blob[1]["auth"] is None and blob[1]["x_api_key"] is None


def test_wrong_api_key_is_an_authentication_error(volume):
    with FakeNVC(api_key="right") as api, Client(api.url, api_key="wrong", retry=FAST) as client:
        with pytest.raises(AuthenticationError, match="not valid"):
            client.compress(volume)


def test_wait_raises_on_failure_and_on_timeout(server, tmp_path):
    broken = tmp_path / "broken.nii"
    broken.write_bytes(b"\0" * 400)
    slow = tmp_path / "slow.nii"
    slow.write_bytes(b"\1" * 400)
    server.slow["slow.nii"] = 10_000
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        with pytest.raises(JobFailedError, match="bad header"):
            client.wait(client.compress(broken), timeout=10)
        job = client.compress(slow)
        with pytest.raises(WaitTimeoutError) as info:
            client.wait(job, timeout=0.2)
        assert info.value.job.state is JobState.running
        assert client.cancel(job).state is JobState.cancelled
        failed = client.wait(client.compress(broken), timeout=10, raise_on_failure=False)
        assert failed.state is JobState.failed and failed.error


# -- batches ------------------------------------------------------------------------------


def make_inputs(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.write_bytes(bytes([i]) * (50_000 + 1000 * i))
        paths.append(path)
    return paths


def test_compress_many_yields_in_completion_order_and_reports_failures(server, tmp_path):
    paths = make_inputs(tmp_path / "in", ["slow.nii.gz", "a.nii.gz", "broken.nii.gz", "b.npy", "c.nii"])
    server.slow["slow.nii.gz"] = 25
    server.faults["POST /compress"] = ["503", "drop"]
    events = []
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        results = list(
            client.compress_many(
                paths, concurrency=3, dest_dir=tmp_path / "out", verify="sha256", on_progress=events.append
            )
        )
    assert len(results) == 5
    assert results[-1].source.name == "slow.nii.gz"  # submitted first, finished last
    by_name = {r.source.name: r for r in results}
    assert not by_name["broken.nii.gz"].ok and "bad header" in by_name["broken.nii.gz"].error
    for name, out in [("a.nii.gz", "a.nii.gz.nvc"), ("b.npy", "b.npy.nvc"), ("c.nii", "c.nii.nvc"), ("slow.nii.gz", "slow.nii.gz.nvc")]:
        result = by_name[name]
        assert result.ok and result.verified == "sha256", result.error
        assert result.output == tmp_path / "out" / out
        assert result.output.read_bytes() == transform((tmp_path / "in" / name).read_bytes())
        assert result.output_bytes == result.output.stat().st_size and result.job.bits_per_voxel == 2.5
    assert server.max_running >= 2  # jobs overlapped
    assert len(server.jobs) == 5  # the retried submission made one job
    stages = {e.stage for e in events}
    assert {"upload", "running", "download", "verify", "done", "failed"} <= stages


def test_a_result_whose_hash_does_not_match_fails_and_is_not_kept(server, tmp_path):
    server.corrupt_sha = True
    paths = make_inputs(tmp_path / "in", ["a.nii.gz"])
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        (result,) = client.compress_many(paths, dest_dir=tmp_path / "out", verify="sha256")
    assert not result.ok and "SHA-256" in result.error
    assert not (tmp_path / "out" / "a.nii.gz.nvc").exists()


def test_abandoning_a_batch_cancels_the_jobs_in_flight(server, tmp_path):
    paths = make_inputs(tmp_path / "in", ["fast.nii.gz", "s1.nii.gz", "s2.nii.gz"])
    server.slow.update({"s1.nii.gz": 10_000, "s2.nii.gz": 10_000})
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        batch = client.compress_many(paths, concurrency=3, dest_dir=tmp_path / "out", verify="sha256")
        first = next(batch)
        batch.close()  # the consumer walks away: in-flight files stop and their jobs are cancelled
    assert first.ok and first.source.name == "fast.nii.gz"
    states = {j["input_name"]: j["state"] for j in server.jobs.values()}
    assert states == {"fast.nii.gz": "succeeded", "s1.nii.gz": "cancelled", "s2.nii.gz": "cancelled"}


def test_decompress_many_names_outputs_by_format(server, tmp_path):
    paths = make_inputs(tmp_path / "in", ["x.nvc", "y.nvc"])
    with Client(server.url, retry=FAST, poll_interval=0.01) as client:
        results = list(client.decompress_many(paths, dest_dir=tmp_path / "out", format="npy", verify="sha256"))
    assert sorted(r.output.name for r in results) == ["x.npy", "y.npy"]
    assert all(r.ok for r in results)
    assert {j["output_format"] for j in server.jobs.values()} == {"npy"}
    with pytest.raises(ValueError):
        Client(server.url).decompress_many(paths, format="tiff")


# -- async ----------------------------------------------------------------------------------


def test_async_client_retries_503_then_202_and_round_trips(server, volume, tmp_path):
    server.faults["POST /compress"] = ["503", "drop"]

    async def main():
        async with AsyncClient(server.url, retry=FAST, poll_interval=0.01) as client:
            job = await client.compress(volume)
            done = await client.wait(job, timeout=10)
            path = await client.download(done, tmp_path / "a.nvc")
            return job, done, path

    job, done, path = asyncio.run(main())
    keys = server.keys_for("POST /compress")
    assert len(keys) == 3 and len(set(keys)) == 1 and len(server.jobs) == 1
    assert done.id == job.id and done.state is JobState.succeeded
    assert path.read_bytes() == transform(volume.read_bytes())


def test_async_compress_many_overlaps_and_yields_as_finished(server, tmp_path):
    paths = make_inputs(tmp_path / "in", ["slow.nii.gz", "a.nii.gz", "b.nii.gz", "broken.nii"])
    server.slow["slow.nii.gz"] = 25

    async def main():
        async with AsyncClient(server.url, retry=FAST, poll_interval=0.01) as client:
            return [
                r async for r in client.compress_many(paths, concurrency=4, dest_dir=tmp_path / "out", verify="sha256")
            ]

    results = asyncio.run(main())
    assert [r.source.name for r in results][-1] == "slow.nii.gz"
    assert sorted(r.source.name for r in results if r.ok) == ["a.nii.gz", "b.nii.gz", "slow.nii.gz"]
    assert all(r.output.read_bytes() == transform(r.source.read_bytes()) for r in results if r.ok)
    assert server.max_running >= 2


def test_async_errors_match_the_sync_ones(server, tmp_path):
    notes = tmp_path / "n.txt"
    notes.write_text("x")

    async def main():
        async with AsyncClient(server.url, retry=FAST) as client:
            with pytest.raises(APIError, match="not a NIfTI"):
                await client.compress(notes)
            with pytest.raises(APIError) as info:
                await client.get_job("0" * 32)
            return info.value

    assert asyncio.run(main()).status == 404


def test_job_model_accepts_the_services_schema_and_unknown_fields():
    job = Job.model_validate(
        {
            "id": "ab" * 16,
            "kind": "compress",
            "state": "succeeded",
            "progress": 1,
            "input_size": 1000,
            "output_size": 250,
            "shape": [4, 5, 6],
            "dtype": "uint16",
            "raw_bytes": 240,
            "ratio": 0.96,
            "upload_ratio": 4.0,
            "created_at": "2025-01-01T00:00:00Z",
            "new_field": 1,
        }
    )
    assert job.ratio == 0.96 and job.upload_ratio == 4.0 and job.voxels == 120 and job.done and job.new_field == 1


def test_sdk_models_match_the_services_openapi_schema():
    import json

    spec_path = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
    if not spec_path.is_file():
        pytest.skip("openapi/openapi.json not generated")
    schemas = json.loads(spec_path.read_text())["components"]["schemas"]
    job = schemas["Job"]
    assert set(job["properties"]) == set(Job.model_fields), "nvc.sdk.models.Job drifted from the service's Job"
    assert job["properties"]["state"]["enum"] == [s.value for s in JobState]
    assert set(job["properties"]["kind"]["enum"]) == {"compress", "decompress"}
    from nvc.sdk import Problem

    assert set(schemas["ProblemDetails"]["properties"]) <= set(Problem.model_fields)
    # a document built from the schema's example-like values validates
    sample = {name: None for name in job["properties"]}
    sample.update(
        id="0" * 32,
        kind="compress",
        state="queued",
        progress=0,
        created_at="2025-01-01T00:00:00Z",
        attempts=0,
        result_deleted=False,
    )
    assert Job.model_validate(sample).state is JobState.queued
