"""Worker tasks run in-process against a real Redis, real local storage and the real codec:
the job life cycle, verification, failures with clear errors, cancellation, redelivery."""

from __future__ import annotations

import gzip
import time
import uuid

import numpy as np
import pytest
import redis as redis_lib

from conftest import npy_bytes
from nvc.commands.serve import plan_workers
from service.jobs import JobStore, new_record
from service.storage import job_prefix
from worker import attempt, lifecycle, runtime, verify


@pytest.fixture
def rt(service_settings):
    handles = runtime.configure(service_settings)
    yield handles
    handles.store.r.close()
    runtime.reset()


def submit(rt, kind: str, payload: bytes, fmt: str, **fields) -> str:
    """What the API does on submission: store the upload, create a queued record."""
    job_id = uuid.uuid4().hex
    key = f"{job_prefix(job_id)}input"
    writer = rt.storage.open_writer(key)
    writer.write(payload)
    writer.commit()
    defaults = {"output_format": "nvc", "profile": "default"} if kind == "compress" else {"output_format": "nii.gz"}
    defaults.update(fields)
    rt.store.create(new_record(job_id, kind, "anonymous", rt.settings.job_ttl_seconds, input_key=key,
                               input_format=fmt, input_size=len(payload), **defaults))
    return job_id


def result_bytes(rt, job_id: str) -> bytes:
    record = rt.store.get(job_id)
    return b"".join(rt.storage.iter_chunks(record["output_key"]))


@pytest.mark.usefixtures("require_codec")
def test_compress_then_decompress_round_trip(rt, small_volume, tmp_path):
    import codec

    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy")
    assert lifecycle.run_job(job_id, "compress", "w1@test") == "succeeded"
    job = rt.store.get(job_id)
    assert job["state"] == "succeeded" and job["progress"] == 1.0
    assert job["worker"] == "w1@test" and job["device"] == "cpu" and job["attempts"] == 1
    assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
    assert job["codec_seconds"] > 0 and job["verify_seconds"] > 0
    assert job["shape"] == list(small_volume.shape) and job["dtype"] == "uint16"
    data = result_bytes(rt, job_id)
    assert job["output_size"] == len(data)
    info = codec.info(data)
    assert job["bits_per_voxel"] == pytest.approx(info["bits_per_voxel"])
    assert job["voxel_sha256"] == info["sha256"]
    assert np.array_equal(codec.decode(data), small_volume)
    # the upload is gone once the job succeeded; the result stays
    assert [p.name for p in (rt.storage.root / "jobs" / job_id).iterdir()] == ["output.nvc"]

    for fmt in ("npy", "nii", "nii.gz"):
        back = submit(rt, "decompress", data, "nvc", output_format=fmt)
        assert lifecycle.run_job(back, "decompress", "w1@test") == "succeeded"
        out = tmp_path / f"out.{fmt}"
        out.write_bytes(result_bytes(rt, back))
        restored = codec.read_volume(out).array
        assert restored.dtype == small_volume.dtype and np.array_equal(restored, small_volume)
        record = rt.store.get(back)
        # a decompress job keeps its upload, the .nvc the slice routes show, beside the result
        assert sorted(p.name for p in (rt.storage.root / "jobs" / back).iterdir()) == ["input", f"output.{fmt}"]
        # the codec checks the voxel SHA-256 while decoding; the worker then reads the written file
        # back and checks the stored object, and that time is the job's verify_seconds
        assert record["verify_seconds"] > 0
        assert record["voxel_sha256"] == info["sha256"] and record["shape"] == list(small_volume.shape)


@pytest.mark.usefixtures("require_codec")
def test_nifti_gz_input_keeps_its_header(rt, small_volume, tmp_path):
    import nibabel as nib

    import codec

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    payload = gzip.compress(nib.Nifti1Image(small_volume, affine).to_bytes())
    job_id = submit(rt, "compress", payload, "nii.gz")
    assert lifecycle.run_job(job_id, "compress", "w") == "succeeded"
    back = submit(rt, "decompress", result_bytes(rt, job_id), "nvc", output_format="nii.gz")
    assert lifecycle.run_job(back, "decompress", "w") == "succeeded"
    out = tmp_path / "back.nii.gz"
    out.write_bytes(result_bytes(rt, back))
    image = nib.load(out)
    assert np.array_equal(np.asarray(image.dataobj), small_volume)
    assert np.allclose(image.affine, affine)
    assert np.array_equal(codec.read_volume(out).array, small_volume)


@pytest.mark.usefixtures("require_codec")
@pytest.mark.parametrize(
    "kind, payload, fmt, message",
    [
        ("compress", npy_bytes(np.zeros((8, 8, 4), np.float32)), "npy", "unsupported input"),
        ("compress", b"\x93NUMPY\x01\x00garbage", "npy", "unsupported input"),
        ("decompress", b"definitely not an nvc file" * 20, "nvc", "not a valid .nvc file"),
    ],
)
def test_bad_input_fails_with_a_clear_error(rt, kind, payload, fmt, message):
    job_id = submit(rt, kind, payload, fmt)
    assert lifecycle.run_job(job_id, kind, "w") == "failed"
    job = rt.store.get(job_id)
    assert job["state"] == "failed" and job["error"].startswith(message) and job["finished_at"]
    assert not (rt.storage.root / "jobs" / job_id).exists()


@pytest.mark.usefixtures("require_codec")
def test_truncated_nvc_fails(rt, small_volume):
    import codec

    data = codec.encode(small_volume)
    job_id = submit(rt, "decompress", data[: len(data) // 2], "nvc")
    assert lifecycle.run_job(job_id, "decompress", "w") == "failed"
    assert rt.store.get(job_id)["error"].startswith("not a valid .nvc file")


@pytest.mark.usefixtures("require_codec")
def test_unknown_profile_fails_the_job(rt, small_volume):
    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy", profile="no-such-profile")
    assert lifecycle.run_job(job_id, "compress", "w") == "failed"
    assert "no-such-profile" in rt.store.get(job_id)["error"]


@pytest.mark.usefixtures("require_codec")
def test_verification_mismatch_fails_the_job(rt, small_volume, monkeypatch):
    import codec
    from codec import files

    real = files.read_volume  # the encoder keeps reading the true file through codec.files

    def read_one_voxel_off(src):  # as if the encoder had coded other voxels than the file holds
        vf = real(src)
        vf.array = vf.array.copy()
        vf.array[0, 0, 0] += 1
        return vf

    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy")
    monkeypatch.setattr(codec, "read_volume", read_one_voxel_off, raising=False)  # what the worker checks against
    assert lifecycle.run_job(job_id, "compress", "w") == "failed"
    job = rt.store.get(job_id)
    assert job["error"].startswith("verification failed") and "do not match" in job["error"]
    assert not (rt.storage.root / "jobs" / job_id).exists()


@pytest.mark.usefixtures("require_codec")
def test_cancelled_or_finished_jobs_are_skipped(rt, small_volume):
    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy")
    rt.store.transition(job_id, "cancelled", ["queued"], finished_at=time.time())
    assert lifecycle.run_job(job_id, "compress", "w") == "cancelled"
    assert "started_at" not in rt.store.get(job_id)
    assert lifecycle.run_job(uuid.uuid4().hex, "compress", "w") == "missing"


@pytest.mark.usefixtures("require_codec")
def test_cancel_while_running_stops_the_codec_and_deletes_objects(rt, small_volume, monkeypatch):
    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy")
    original_check = attempt.Progress.check
    seen = []

    def cancel_on_first_progress(self, value=None):
        seen.append(value)
        if len(seen) == 2:  # the API's DELETE lands while the encoder runs
            rt.store.transition(job_id, "cancelled", ["queued", "running"], finished_at=time.time())
        return original_check(self, value)

    monkeypatch.setattr(attempt.Progress, "check", cancel_on_first_progress)
    assert lifecycle.run_job(job_id, "compress", "w") == "cancelled"
    assert rt.store.get(job_id)["state"] == "cancelled"
    assert not (rt.storage.root / "jobs" / job_id).exists()


@pytest.mark.usefixtures("require_codec")
def test_redelivered_job_runs_again_and_gives_up_after_max_attempts(rt, small_volume):
    job_id = submit(rt, "compress", npy_bytes(small_volume), "npy")
    # a worker took it and died: the record says running, attempt 1
    rt.store.transition(job_id, "running", ["queued"], started_at=time.time(), attempts=1, worker="dead@host")
    assert lifecycle.run_job(job_id, "compress", "w2") == "succeeded"
    job = rt.store.get(job_id)
    assert job["attempts"] == 2 and job["worker"] == "w2"

    poison = submit(rt, "compress", npy_bytes(small_volume), "npy")
    rt.store.transition(poison, "running", ["queued"], attempts=rt.settings.max_attempts)
    assert lifecycle.run_job(poison, "compress", "w3") == "failed"
    assert "gave up after 3 attempts" in rt.store.get(poison)["error"]


def test_progress_callback_forms_and_cancellation(service_settings):
    client = redis_lib.Redis.from_url(service_settings.redis_url, decode_responses=True)
    store = JobStore(client, service_settings.key_prefix, 60)
    job_id = uuid.uuid4().hex
    store.create(new_record(job_id, "compress", "anonymous", 60))
    store.transition(job_id, "running", ["queued"])
    progress = attempt.Progress(store, job_id, 0.5, 0.9, interval=0.0)
    progress(0.5)
    assert store.get(job_id)["progress"] == pytest.approx(0.7)
    progress(3, 4)
    assert store.get(job_id)["progress"] == pytest.approx(0.8)
    progress(done=1, total=1)
    assert store.get(job_id)["progress"] == pytest.approx(0.9)
    throttled = attempt.Progress(store, job_id, 0.0, 1.0, interval=60)
    throttled(0.1)
    throttled(0.2)  # within the interval: not written
    assert store.get(job_id)["progress"] == pytest.approx(0.1)
    store.transition(job_id, "cancelled", ["running"])
    with pytest.raises(attempt.JobCancelled):
        progress(0.6)
    assert store.get(job_id)["progress"] == pytest.approx(0.1)  # a cancelled job's progress is frozen
    client.close()


def test_voxel_digest_ignores_layout():
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    assert verify.voxel_digest(array) == verify.voxel_digest(np.asfortranarray(array))
    assert verify.voxel_digest(array) == verify.voxel_digest(array.astype(">i2"))
    assert verify.voxel_digest(array) != verify.voxel_digest(array.astype(np.int32))


def test_worker_plan_one_process_per_gpu_or_cpu_fallback(service_settings):
    s = service_settings
    gpus = plan_workers(s, cpu=False, gpus=None, processes=1, queues=None, env={"CUDA_VISIBLE_DEVICES": "0,1,3"})
    assert [(n, q, e["CUDA_VISIBLE_DEVICES"]) for n, q, e in gpus] == [
        ("gpu0@%h", [s.gpu_queue], "0"), ("gpu1@%h", [s.gpu_queue], "1"), ("gpu3@%h", [s.gpu_queue], "3")]
    assert len(plan_workers(s, cpu=False, gpus=1, processes=1, queues=None, env={"CUDA_VISIBLE_DEVICES": "2,5"})) == 1
    cpu = plan_workers(s, cpu=False, gpus=None, processes=2, queues=None, env={"CUDA_VISIBLE_DEVICES": ""})
    assert [(n, q) for n, q, _ in cpu] == [("cpu0@%h", [s.cpu_queue, s.gpu_queue]), ("cpu1@%h", [s.cpu_queue, s.gpu_queue])]
    assert all(e == {"CUDA_VISIBLE_DEVICES": "", "NVC_DEVICE": "cpu"} for _, _, e in cpu)
    forced = plan_workers(s, cpu=True, gpus=None, processes=1, queues="only-this", env={"CUDA_VISIBLE_DEVICES": "0"})
    assert [(n, q) for n, q, _ in forced] == [("cpu0@%h", ["only-this"])]
