"""Celery tasks `nvc.compress` and `nvc.decompress`: run one job through `codec`.

Life of a job in a worker:
1. compare-and-set queued|running -> running (a redelivered job whose worker died is
   `running` already and runs again; a cancelled or finished one is skipped);
2. fetch the input (in place for local storage, a download for S3) into a scratch folder;
3. run the codec with a progress callback that writes progress to the job record and
   stops the job when the record says it was cancelled;
4. compress jobs: decode the new .nvc and compare the SHA-256 of the decoded voxels with
   the SHA-256 of the input's voxels; a mismatch fails the job, nothing unverified succeeds;
5. store the result, then compare-and-set running -> succeeded (if the job was cancelled
   meanwhile the result is deleted instead).

Codec time (`codec_seconds`) and verification time (`verify_seconds`) are recorded apart
from the total so the service overhead can be measured. The codec is imported, and a tiny
volume coded, once per worker process at start-up (`worker_process_init`), never per job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from app.jobs import ACTIVE_STATES, JobStore
from app.settings import Settings, get_settings
from app.storage import Storage, job_prefix, make_storage
from worker.celery_app import TASK_COMPRESS, TASK_DECOMPRESS, app

log = logging.getLogger("nvc.worker")
HASH_CHUNK = 16 * 1024 * 1024


class JobCancelled(Exception):
    """The job record left `running` (cancelled) while the codec was working."""


class VerificationError(Exception):
    """The decoded result does not reproduce the input voxels."""


@dataclass
class Runtime:
    """Per-process handles (built after the pool forks: no shared sockets)."""

    settings: Settings
    store: JobStore
    storage: Storage
    device: str
    pid: int


_runtime: Runtime | None = None


def detect_device() -> str:
    """'cuda:0 (<name>)' when this process sees a GPU (pinned by CUDA_VISIBLE_DEVICES), else 'cpu'."""
    if os.environ.get("NVC_DEVICE", "auto") == "cpu":  # the codec's own switch
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    except Exception:  # no torch / broken driver: the CPU is the fallback
        pass
    return "cpu"


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        settings = _runtime.settings if _runtime is not None else get_settings()
        if not settings.redis_url:
            raise RuntimeError("NVC_REDIS_URL is not set")
        configure(settings)
    return _runtime


def configure(settings: Settings) -> Runtime:
    """Use `settings` (instead of the environment) in this process, e.g. when embedding or testing."""
    global _runtime
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=30)
    _runtime = Runtime(
        settings=settings,
        store=JobStore(client, settings.key_prefix, settings.job_ttl_seconds),
        storage=make_storage(settings),
        device=detect_device(),
        pid=os.getpid(),
    )
    return _runtime


def warm_up() -> None:
    """Import the codec and code a tiny volume, so the first real job pays no start-up cost."""
    import numpy as np

    import codec

    volume = (np.arange(8 * 8 * 4, dtype=np.uint16) % 251).reshape(8, 8, 4)
    decoded = codec.decode(codec.encode(volume))
    if not np.array_equal(decoded, volume):
        raise VerificationError("codec warm-up round trip is not lossless")


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    rt = runtime()
    if rt.settings.warmup:
        start = time.perf_counter()
        try:
            warm_up()
            log.info("codec ready on %s in %.2f s", rt.device, time.perf_counter() - start)
        except Exception:  # jobs will report the codec's own error
            log.exception("codec warm-up failed")


class Progress:
    """Codec progress callback: maps the codec's fraction into [lo, hi] of the job, writes it
    at most every `interval` seconds, and raises JobCancelled once the job is no longer running."""

    def __init__(self, store: JobStore, job_id: str, lo: float, hi: float, interval: float):
        self.store, self.job_id, self.lo, self.hi, self.interval = store, job_id, lo, hi, interval
        self._last = 0.0

    @staticmethod
    def fraction(*args: Any, **kwargs: Any) -> float:
        """Accept `cb(fraction)` and `cb(done, total)` (positional or keyword)."""
        values = list(args) + [v for k, v in kwargs.items() if k in ("done", "total", "fraction", "value")]
        if len(values) >= 2 and values[1]:
            return float(values[0]) / float(values[1])
        if values:
            return float(values[0])
        return 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        try:
            frac = min(1.0, max(0.0, self.fraction(*args, **kwargs)))
        except (TypeError, ValueError, ZeroDivisionError):
            frac = 0.0
        now = time.monotonic()
        if now - self._last < self.interval and frac < 1.0:
            return
        self._last = now
        self.check(self.lo + (self.hi - self.lo) * frac)

    def check(self, value: float | None = None) -> None:
        value = self.lo if value is None else value
        state = self.store.set_progress(self.job_id, value)
        if state != "running":
            raise JobCancelled(state or "deleted")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def voxel_digest(array) -> str:
    """SHA-256 of a volume's voxels: C order, little-endian, independent of the file layout."""
    import numpy as np

    arr = np.asarray(array)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha256()
    flat = arr.reshape(-1)
    step = max(1, HASH_CHUNK // max(1, arr.itemsize))
    for start in range(0, flat.size, step):
        digest.update(flat[start : start + step].tobytes())
    return digest.hexdigest()


def _fetch_input(rt: Runtime, record: dict[str, Any], scratch: Path) -> Path:
    """A local path of the input with the extension the codec expects."""
    suffix = {"nii.gz": ".nii.gz", "nii": ".nii", "npy": ".npy", "nvc": ".nvc"}[record["input_format"]]
    target = scratch / f"input{suffix}"
    in_place = rt.storage.local_path(record["input_key"])
    if in_place is not None:
        os.symlink(in_place, target)
    else:
        rt.storage.get_file(record["input_key"], target)
    return target


def _compress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float) -> dict[str, Any]:
    import numpy as np

    import codec

    job_id = record["id"]
    src = _fetch_input(rt, record, scratch)
    dst = scratch / "output.nvc"
    encode_progress = Progress(rt.store, job_id, 0.0, 0.5, interval)
    encode_progress.check()
    start = time.perf_counter()
    codec.compress_file(src, dst, profile=record.get("profile") or "default", progress=encode_progress)
    codec_seconds = time.perf_counter() - start

    verify_progress = Progress(rt.store, job_id, 0.5, 0.95, interval)
    verify_progress.check()
    start = time.perf_counter()
    decoded_path = scratch / "verify.npy"
    codec.decompress_file(dst, decoded_path, progress=verify_progress)
    decoded = np.load(decoded_path, mmap_mode="r")
    original = codec.read_volume(src)
    original = np.asarray(getattr(original, "array", original))
    if original.shape != decoded.shape or original.dtype != decoded.dtype:
        raise VerificationError(
            f"decoded volume is {decoded.dtype}{decoded.shape}, input was {original.dtype}{original.shape}"
        )
    expected, got = voxel_digest(original), voxel_digest(decoded)
    if expected != got:
        raise VerificationError(f"decoded voxels do not match the input (sha256 {got} != {expected})")
    del decoded, original
    verify_seconds = time.perf_counter() - start
    verify_progress.check(0.95)

    meta = codec.info(dst.read_bytes())
    return _store_output(rt, record, dst, meta, codec_seconds, verify_seconds, voxel_sha256=meta.get("sha256"))


def _decompress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float) -> dict[str, Any]:
    import codec

    job_id = record["id"]
    src = _fetch_input(rt, record, scratch)
    meta = codec.info(src.read_bytes())  # a bad upload fails here, before any decoding
    dst = scratch / f"output.{record['output_format']}"
    progress = Progress(rt.store, job_id, 0.0, 0.95, interval)
    progress.check()
    start = time.perf_counter()
    codec.decompress_file(src, dst, progress=progress)  # the codec checks the voxel SHA-256 itself
    codec_seconds = time.perf_counter() - start
    progress.check(0.95)
    return _store_output(rt, record, dst, meta, codec_seconds, None, voxel_sha256=meta.get("sha256"))


def _store_output(
    rt: Runtime, record: dict[str, Any], path: Path, meta: dict[str, Any], codec_seconds: float,
    verify_seconds: float | None, voxel_sha256: str | None,
) -> dict[str, Any]:
    output_key = f"{job_prefix(record['id'])}output.{record['output_format']}"
    size = rt.storage.put_file(output_key, path)
    bits = meta.get("bits_per_voxel")
    shape = meta.get("shape")
    return {
        "output_key": output_key,
        "output_size": size,
        "output_sha256": sha256_file(path),
        "voxel_sha256": voxel_sha256,
        "bits_per_voxel": float(bits) if bits is not None else None,
        "shape": [int(s) for s in shape] if shape is not None else None,
        "dtype": str(meta["dtype"]) if meta.get("dtype") is not None else None,
        "codec_seconds": round(codec_seconds, 6),
        "verify_seconds": round(verify_seconds, 6) if verify_seconds is not None else None,
    }


def describe_failure(exc: BaseException) -> str:
    """The `error` text of a failed job: what went wrong, in words a user can act on."""
    import codec

    if isinstance(exc, codec.UnsupportedInputError):
        return f"unsupported input: {exc}"
    if isinstance(exc, codec.FormatError):
        return f"not a valid .nvc file: {exc}"
    if isinstance(exc, codec.CodecError):
        return f"codec error: {exc}"
    if isinstance(exc, VerificationError):
        return f"verification failed: {exc}"
    if isinstance(exc, SoftTimeLimitExceeded):
        return "the job took longer than the time limit and was stopped"
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory on this volume"
    return f"internal error ({type(exc).__name__}): {exc}"


def run_job(job_id: str, kind: str, hostname: str | None) -> str:
    """Run one job; returns the state it ended in (or why it was skipped)."""
    rt = runtime()
    store, settings = rt.store, rt.settings
    record = store.get(job_id)
    if record is None:
        log.info("job %s: no record (expired or deleted), skipping", job_id)
        return "missing"
    if record["state"] not in ACTIVE_STATES:
        return record["state"]
    attempts = int(record.get("attempts", 0)) + 1
    if attempts > settings.max_attempts:
        store.transition(
            job_id, "failed", ACTIVE_STATES, finished_at=time.time(),
            error=f"gave up after {attempts - 1} attempts: the worker running this job was lost each time "
            "(out of memory or crashed)",
        )
        rt.storage.delete_prefix(job_prefix(job_id))
        return "failed"
    started = time.time()
    ok, previous = store.transition(
        job_id, "running", ACTIVE_STATES, started_at=started, worker=hostname or "unknown", device=rt.device,
        attempts=attempts, progress=0.0,
    )
    if not ok:
        return previous or "missing"
    if previous == "queued":
        store.observe("job_duration", f"{kind},queue", max(0.0, started - record["created_at"]))

    body = _compress if kind == "compress" else _decompress
    scratch_root = settings.work_dir
    if scratch_root is not None:
        Path(scratch_root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"nvc-{job_id[:8]}-", dir=scratch_root) as scratch:
        try:
            result = body(rt, record, Path(scratch), settings.progress_interval_seconds)
        except JobCancelled as exc:
            log.info("job %s stopped: %s", job_id, exc)
            rt.storage.delete_prefix(job_prefix(job_id))
            return "cancelled"
        except Exception as exc:
            if not isinstance(exc, (VerificationError,)) and not _is_codec_error(exc):
                log.exception("job %s failed", job_id)
            error = describe_failure(exc)
            finished = time.time()
            done, state = store.transition(job_id, "failed", ["running"], finished_at=finished, error=error)
            rt.storage.delete_prefix(job_prefix(job_id))
            if done:
                store.observe("job_duration", f"{kind},total", finished - record["created_at"])
            return "failed" if done else state

    finished = time.time()
    done, state = store.transition(job_id, "succeeded", ["running"], finished_at=finished, progress=1.0, **result)
    if not done:  # cancelled (or deleted) while we worked: drop what we wrote
        rt.storage.delete_prefix(job_prefix(job_id))
        return state or "missing"
    try:
        rt.storage.delete_prefix(f"{job_prefix(job_id)}input")  # the upload is not needed any more
    except Exception:
        log.warning("job %s: could not delete its input object", job_id, exc_info=True)
    store.count_bytes("out", kind, result["output_size"])
    store.observe("job_duration", f"{kind},codec", result["codec_seconds"])
    if result.get("verify_seconds") is not None:
        store.observe("job_duration", f"{kind},verify", result["verify_seconds"])
    store.observe("job_duration", f"{kind},total", finished - record["created_at"])
    return "succeeded"


def _is_codec_error(exc: BaseException) -> bool:
    try:
        import codec

        return isinstance(exc, codec.CodecError)
    except Exception:
        return False


@app.task(name=TASK_COMPRESS, bind=True)
def compress(self, job_id: str) -> str:
    return run_job(job_id, "compress", self.request.hostname)


@app.task(name=TASK_DECOMPRESS, bind=True)
def decompress(self, job_id: str) -> str:
    return run_job(job_id, "decompress", self.request.hostname)
