"""End to end: a real Redis, a real Celery worker process and a real uvicorn server, driven
over HTTP with httpx. A real volume is compressed, polled, downloaded, decompressed through
the API and compared voxel for voxel; the same round trip runs with the S3 backend against a
real S3-protocol server; uploads are checked to stream (bounded API memory)."""

from __future__ import annotations

import hashlib
import io
import os
import time

import httpx
import numpy as np
import pytest

from conftest import npy_bytes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_codec")]


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}", params={"wait": 10}).json()
        if job["state"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout} s"


def round_trip(client: httpx.Client, payload: bytes, name: str, out_format: str = "npy") -> tuple[dict, dict, bytes]:
    answer = client.post("/compress", files={"file": (name, payload)})
    assert answer.status_code == 202, answer.text
    assert client.get(answer.headers["location"]).json()["id"] == answer.json()["id"]
    job = wait_done(client, answer.json()["id"])
    assert job["state"] == "succeeded", job
    coded = client.get(f"/jobs/{job['id']}/result", follow_redirects=True)
    assert coded.status_code == 200
    assert len(coded.content) == job["output_size"]
    assert hashlib.sha256(coded.content).hexdigest() == job["output_sha256"]

    answer = client.post(f"/decompress?format={out_format}", content=coded.content,
                         headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 202, answer.text
    back = wait_done(client, answer.json()["id"])
    assert back["state"] == "succeeded", back
    restored = client.get(f"/jobs/{back['id']}/result", follow_redirects=True)
    assert restored.status_code == 200 and len(restored.content) == back["output_size"]
    return job, back, restored.content


def test_real_volume_round_trip_through_the_api(service_settings, make_stack, real_volume_path, tmp_path):
    import nibabel as nib

    stack = make_stack(service_settings)
    stack.start_worker()
    url = stack.start_api()
    original = np.asarray(nib.load(real_volume_path).dataobj)
    with httpx.Client(base_url=url, timeout=60) as client:
        job, back, restored = round_trip(client, real_volume_path.read_bytes(), real_volume_path.name, "nii.gz")
        out = tmp_path / "restored.nii.gz"
        out.write_bytes(restored)
        image = nib.load(out)
        decoded = np.asarray(image.dataobj)
        assert decoded.dtype == original.dtype and decoded.shape == original.shape
        assert np.array_equal(decoded, original)  # bit for bit
        assert np.allclose(image.affine, nib.load(real_volume_path).affine)

        assert job["shape"] == list(original.shape) and job["dtype"] == str(original.dtype)
        assert 0 < job["bits_per_voxel"] < 16
        assert job["worker"].startswith("test@") and job["device"] == "cpu" and job["attempts"] == 1
        assert job["codec_seconds"] > 0 and job["verify_seconds"] > 0
        assert job["input_size"] == real_volume_path.stat().st_size
        assert job["output_name"] == "mr_phantom_t1_3d_lowres.nii.gz.nvc"
        assert back["output_name"] == "volume.nii.gz" and back["voxel_sha256"] == job["voxel_sha256"]

        metrics = client.get("/metrics").text
        assert 'nvc_jobs_total{kind="compress",state="succeeded"} 1.0' in metrics
        assert 'nvc_jobs_total{kind="decompress",state="succeeded"} 1.0' in metrics
        assert 'nvc_jobs_active{state="running"} 0.0' in metrics
        assert f'nvc_bytes_out_total{{kind="compress"}} {float(job["output_size"])}' in metrics
        assert 'nvc_job_duration_seconds_count{kind="compress",phase="codec"} 1.0' in metrics

        # an upload that is not an .nvc is refused before a job exists
        refused = client.post("/decompress", content=b"\x00" * 4096)
        assert refused.status_code == 415 and refused.headers["content-type"] == "application/problem+json"
        # a well-formed upload the codec cannot code fails its job with a clear error, and the worker carries on
        wide = np.arange(4 * 4 * 4, dtype=np.uint32).reshape(4, 4, 4) * 5000  # values span more than 16 bits
        bad = client.post("/compress", content=npy_bytes(wide)).json()
        failed = wait_done(client, bad["id"], 60)
        assert failed["state"] == "failed" and failed["error"].startswith("unsupported input"), failed
        problem = client.get(f"/jobs/{bad['id']}/result")
        assert problem.status_code == 409 and problem.headers["content-type"] == "application/problem+json"


def test_s3_backend_round_trip_with_presigned_download(s3_settings, make_stack, small_volume):
    stack = make_stack(s3_settings)
    stack.start_worker(via_cli=True)  # `nvc worker`, the compose worker command
    url = stack.start_api()
    with httpx.Client(base_url=url, timeout=60) as client:
        payload = npy_bytes(small_volume)
        job, back, restored = round_trip(client, payload, "small.npy", "npy")
        assert np.array_equal(np.load(io.BytesIO(restored)), small_volume)
        redirect = client.get(f"/jobs/{job['id']}/result")
        assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_settings.s3_endpoint_url)
        streamed = client.get(f"/jobs/{job['id']}/result?redirect=false")
        assert streamed.status_code == 200 and len(streamed.content) == job["output_size"]
        assert 'filename="small.npy.nvc"' in streamed.headers["content-disposition"]
        # objects live in the bucket, the upload is gone once the job succeeded
        from service.storage import S3Storage

        storage = S3Storage(s3_settings)
        keys = sorted(o["Key"] for o in storage.client.list_objects_v2(Bucket=s3_settings.s3_bucket)["Contents"])
        assert f"jobs/{job['id']}/output.nvc" in keys and f"jobs/{job['id']}/input" not in keys
        assert client.delete(f"/jobs/{job['id']}").json()["result_deleted"] is True
        keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=s3_settings.s3_bucket).get("Contents", [])]
        assert not any(k.startswith(f"jobs/{job['id']}/") for k in keys)


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_large_upload_streams_without_buffering_in_the_api(service_settings, make_stack):
    # no worker: the job just waits in its queue; what matters is the API's memory
    stack = make_stack(service_settings)
    url = stack.start_api()
    size = 256 * 1024 * 1024
    chunk = os.urandom(1024 * 1024)
    # a valid .npy header for 256 MiB of uint8 voxels (uploads are checked), then the voxels
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (1024, 1024, 256)})
    header = buffer.getvalue()
    with httpx.Client(base_url=url, timeout=120) as client:
        client.get("/readyz")
        before = _peak_rss_kib(stack.api_proc.pid)

        def body():
            yield header
            for _ in range(size // len(chunk)):
                yield chunk

        answer = client.post("/compress", content=body(), headers={"content-type": "application/octet-stream"})
        assert answer.status_code == 202, answer.text
        assert answer.json()["input_size"] == size + len(header)
        grown_mib = (_peak_rss_kib(stack.api_proc.pid) - before) / 1024
        assert grown_mib < 64, f"API peak memory grew by {grown_mib:.0f} MiB for a 256 MiB upload"
        stored = service_settings.resolved_storage_dir / "jobs" / answer.json()["id"] / "input"
        assert stored.stat().st_size == size + len(header)
        assert client.delete(f"/jobs/{answer.json()['id']}").json()["state"] == "cancelled"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def wait_running(client: httpx.Client, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] != "queued":
            return job
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_cancel_running_job_and_survive_a_killed_worker_process(service_settings, make_stack, real_volume_path):
    stack = make_stack(service_settings)
    worker = stack.start_worker()
    url = stack.start_api()
    payload = real_volume_path.read_bytes()
    with httpx.Client(base_url=url, timeout=60) as client:
        # DELETE while running: the worker stops at its next progress report and drops the objects
        job = client.post("/compress", files={"file": ("a.nii.gz", payload)}).json()
        assert wait_running(client, job["id"])["state"] == "running"
        cancelled = client.delete(f"/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled"

        # the worker's pool process dies mid-job: the message goes back, the job runs again
        job = client.post("/compress", files={"file": ("b.nii.gz", payload)}).json()
        assert wait_running(client, job["id"])["state"] == "running"
        pool = _children(worker.pid)
        assert len(pool) == 1
        os.kill(pool[0], 9)
        done = wait_done(client, job["id"], 180)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        coded = client.get(f"/jobs/{job['id']}/result").content
        import codec
        import nibabel as nib

        assert np.array_equal(codec.decode(coded), np.asarray(nib.load(real_volume_path).dataobj))
        objects = service_settings.resolved_storage_dir / "jobs"
        assert not (objects / cancelled["id"]).exists()
        assert client.get(f"/jobs/{cancelled['id']}").json()["state"] == "cancelled"
