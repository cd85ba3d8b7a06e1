"""Celery tasks `nvc.compress` and `nvc.decompress`: run one job through `codec`.

Life of a job in a worker:
1. compare-and-set queued|running -> running (a redelivered job whose worker died is
   `running` already and runs again; a cancelled or finished one is skipped);
2. fetch the input (in place for local storage, a download for S3) into a scratch folder;
3. run the codec with a progress callback that writes progress to the job record and
   stops the job when the record says it was cancelled;
4. compress jobs: decode the new .nvc and compare the SHA-256 of the decoded voxels with
   the SHA-256 of the input's voxels; a mismatch fails the job, nothing unverified succeeds;
5. store the result and read it back (size and SHA-256 of the stored object), then
   compare-and-set running -> succeeded (if the job was cancelled meanwhile the result is
   deleted instead). Decompress jobs read the file they wrote back and compare its voxel
   SHA-256 with the one the .nvc records.

Exactly one result per job: each delivery that runs a job writes a fresh `attempt_id` on the
record, and its progress writes, heartbeats and final transition only succeed while the record
still carries that id. A redelivered message (a pool process died, or the API's watchdog
re-queued a job whose heartbeats stopped) becomes the new owner; an old attempt that wakes up
later sees `superseded` and stops without touching storage. Transient storage outages are
retried for NVC_STORAGE_RETRY_SECONDS, then the job fails with that reason.

Codec time (`codec_seconds`) and verification time (`verify_seconds`) are recorded apart
from the total so the service overhead can be measured. The codec is imported, and a tiny
volume coded, once per worker process at start-up (`worker_process_init`), never per job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from redis.exceptions import RedisError

from app.jobs import ACTIVE_STATES, JobStore
from app.settings import Settings, get_settings
from app.storage import Storage, job_prefix, make_storage
from worker.celery_app import TASK_COMPRESS, TASK_DECOMPRESS, app

log = logging.getLogger("nvc.worker")
HASH_CHUNK = 16 * 1024 * 1024


class JobCancelled(Exception):
    """The job record left `running` (cancelled) while the codec was working."""


class JobSuperseded(JobCancelled):
    """Another attempt of the same job owns the record now (this one's worker was presumed lost)."""


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

    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    # A Redis restart of a few seconds must not fail the jobs in flight: retry each command
    # with backoff (about 20 s in all) before giving up.
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, health_check_interval=30, socket_connect_timeout=5,
        socket_timeout=30, retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 14),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
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
    at most every `interval` seconds, and raises JobCancelled once the job is no longer running
    (JobSuperseded when another attempt took it over)."""

    def __init__(self, store: JobStore, job_id: str, lo: float, hi: float, interval: float, attempt_id: str = "",
                 heartbeat: Heartbeat | None = None):
        self.store, self.job_id, self.lo, self.hi, self.interval = store, job_id, lo, hi, interval
        self.attempt_id = attempt_id
        self.heartbeat = heartbeat
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
        if self.heartbeat is not None:
            self.heartbeat.raise_if_lost()
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
        try:
            state = self.store.set_progress(self.job_id, value, self.attempt_id)
        except RedisError as exc:  # a progress write is not worth failing the job for
            log.warning("job %s: progress not written (%s)", self.job_id, exc)
            return
        _raise_unless_running(state)


def _raise_unless_running(state: str) -> None:
    # 'queued': the watchdog re-queued the job, presuming this attempt's worker lost
    if state in ("superseded", "queued"):
        raise JobSuperseded("another attempt took this job over")
    if state != "running":
        raise JobCancelled(state or "deleted")


class Heartbeat:
    """While a job runs, stamp `heartbeat_at` on its record every `interval` seconds from a
    thread, so the API's watchdog can tell a live attempt from one whose worker died. It also
    notices a cancelled or superseded job between two codec progress reports."""

    def __init__(self, store: JobStore, job_id: str, attempt_id: str, interval: float):
        self.store, self.job_id, self.attempt_id, self.interval = store, job_id, attempt_id, interval
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nvc-heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                state = self.store.set_progress(self.job_id, None, self.attempt_id)
            except RedisError:
                continue
            if state != "running":
                self.lost = state
                return

    def raise_if_lost(self) -> None:
        if self.lost is not None:
            _raise_unless_running(self.lost)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def voxel_digest(array) -> str:
    """SHA-256 of a volume's voxels as the codec defines it (`codec.api.voxel_sha256`: NIfTI
    order, x fastest, little-endian), so a job's `voxel_sha256` equals `nvc info`'s SHA-256."""
    from codec.api import voxel_sha256

    return voxel_sha256(array)


# ----------------------------------------------------------------------------- storage with retries


class StorageUnavailable(Exception):
    """Object storage stayed unreachable for NVC_STORAGE_RETRY_SECONDS."""


class InputMissing(Exception):
    """The job's upload is not in storage any more."""


def _is_outage(exc: BaseException) -> bool:
    """Errors worth retrying: the store is unreachable or overloaded, not 'no such object'."""
    from app.storage import ObjectNotFound, StorageError

    if isinstance(exc, ObjectNotFound) or isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (StorageError, OSError, ConnectionError, TimeoutError)):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is part of the server extra
        return False
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError")
    return isinstance(exc, BotoCoreError)


def with_storage(rt: Runtime, what: str, fn, *args: Any) -> Any:
    """Run a storage call, retrying outages with backoff for up to NVC_STORAGE_RETRY_SECONDS."""
    deadline = time.monotonic() + rt.settings.storage_retry_seconds
    delay = 0.25
    while True:
        try:
            return fn(*args)
        except Exception as exc:
            if not _is_outage(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(
                    f"object storage was unreachable while {what} (retried for "
                    f"{rt.settings.storage_retry_seconds:g} s): {exc}"
                ) from exc
            pause = min(delay, remaining)
            log.warning("storage unreachable while %s (%s); retrying in %.1f s", what, exc, pause)
            time.sleep(pause)
            delay = min(delay * 2, 5.0)


def _cleanup(rt: Runtime, job_id: str, prefix: str | None = None) -> None:
    """Delete a job's objects, best effort: an outage here must not hide the job's real outcome
    (the API's orphan sweep removes what is left once the record expires)."""
    try:
        rt.storage.delete_prefix(prefix or job_prefix(job_id))
    except Exception as exc:
        log.warning("job %s: could not delete its objects (%s)", job_id, exc)


def _fetch_input(rt: Runtime, record: dict[str, Any], scratch: Path) -> Path:
    """A local path of the input with the extension the codec expects."""
    from app.storage import ObjectNotFound

    suffix = {"nii.gz": ".nii.gz", "nii": ".nii", "npy": ".npy", "nvc": ".nvc"}[record["input_format"]]
    target = scratch / f"input{suffix}"
    try:
        in_place = with_storage(rt, "reading the upload", rt.storage.local_path, record["input_key"])
        if in_place is not None:
            os.symlink(in_place, target)
        else:
            with_storage(rt, "downloading the upload", rt.storage.get_file, record["input_key"], target)
    except ObjectNotFound:
        raise InputMissing("the uploaded input is missing from storage (deleted or expired)") from None
    return target


def _check_declared_size(rt: Runtime, record: dict[str, Any], src: Path) -> None:
    """Re-check the upload as the API did (format, header, declared size against
    NVC_MAX_VOLUME_BYTES, inflated size against the header) before the codec reads it all."""
    from app.validate import validator_for

    validator = validator_for(record["kind"], rt.settings.max_volume_bytes)
    with open(src, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            validator.feed(chunk)
    validator.finish()


def _compress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    import numpy as np

    import codec

    job_id = record["id"]
    src = _fetch_input(rt, record, scratch)
    _check_declared_size(rt, record, src)
    dst = scratch / "output.nvc"
    encode_progress = Progress(rt.store, job_id, 0.0, 0.5, interval, attempt.id, attempt.heartbeat)
    encode_progress.check()
    start = time.perf_counter()
    codec.compress_file(src, dst, profile=record.get("profile") or "default", progress=encode_progress)
    codec_seconds = time.perf_counter() - start

    verify_progress = Progress(rt.store, job_id, 0.5, 0.95, interval, attempt.id, attempt.heartbeat)
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
    decoded_path.unlink()
    with open(dst, "rb") as handle:
        meta = codec.info(handle)
    if meta.get("sha256") != expected:
        raise VerificationError(f"the .nvc header records voxel sha256 {meta.get('sha256')}, the input's is {expected}")
    verify_seconds = time.perf_counter() - start
    verify_progress.check(0.95)
    return _store_output(rt, record, dst, meta, codec_seconds, verify_seconds, expected, attempt.output_key(record))


def _decompress(rt: Runtime, record: dict[str, Any], scratch: Path, interval: float, attempt: Attempt) -> dict[str, Any]:
    import codec
    from codec.api import voxel_sha256

    job_id = record["id"]
    src = _fetch_input(rt, record, scratch)
    with open(src, "rb") as handle:
        meta = codec.info(handle)  # a bad upload fails here, before any decoding
    if meta["raw_bytes"] > rt.settings.max_volume_bytes:
        raise codec.UnsupportedInputError(
            f"the .nvc declares {meta['raw_bytes']} bytes of voxels, more than the limit of "
            f"{rt.settings.max_volume_bytes} bytes (NVC_MAX_VOLUME_BYTES)"
        )
    dst = scratch / f"output.{record['output_format']}"
    progress = Progress(rt.store, job_id, 0.0, 0.9, interval, attempt.id, attempt.heartbeat)
    progress.check()
    start = time.perf_counter()
    codec.decompress_file(src, dst, progress=progress)  # the codec checks the voxel SHA-256 itself
    codec_seconds = time.perf_counter() - start
    progress.check(0.9)
    # and the file written from those voxels must read back to the same voxels
    start = time.perf_counter()
    written = voxel_sha256(codec.read_volume(dst).array)
    if written != meta["sha256"]:
        raise VerificationError(f"the written {record['output_format']} file reads back as voxel sha256 {written}, "
                                f"the .nvc records {meta['sha256']}")
    verify_seconds = time.perf_counter() - start
    progress.check(0.95)
    return _store_output(rt, record, dst, meta, codec_seconds, verify_seconds, meta.get("sha256"),
                         attempt.output_key(record))


def _stored_sha256(rt: Runtime, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in rt.storage.iter_chunks(key):
        digest.update(chunk)
    return digest.hexdigest()


def _store_output(
    rt: Runtime, record: dict[str, Any], path: Path, meta: dict[str, Any], codec_seconds: float,
    verify_seconds: float | None, voxel_sha256: str | None, output_key: str,
) -> dict[str, Any]:
    """Store the result, then read it back from storage: a job succeeds only with a result
    whose stored bytes have the size and SHA-256 of the verified file."""
    sha = sha256_file(path)
    size = with_storage(rt, "storing the result", rt.storage.put_file, output_key, path)
    start = time.perf_counter()
    stored_size = with_storage(rt, "checking the stored result", rt.storage.size, output_key)
    stored_sha = with_storage(rt, "reading back the stored result", _stored_sha256, rt, output_key)
    if stored_size != size or stored_sha != sha:
        raise VerificationError(
            f"the stored result ({stored_size} bytes, sha256 {stored_sha}) differs from the verified file "
            f"({size} bytes, sha256 {sha})"
        )
    if verify_seconds is not None:
        verify_seconds += time.perf_counter() - start
    bits = meta.get("bits_per_voxel")
    shape = meta.get("shape")
    return {
        "output_key": output_key,
        "output_size": size,
        "output_sha256": sha,
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

    from app.problems import Problem

    if isinstance(exc, codec.UnsupportedInputError):
        return f"unsupported input: {exc}"
    if isinstance(exc, codec.FormatError):
        return f"not a valid .nvc file: {exc}"
    if isinstance(exc, codec.CodecError):
        return f"codec error: {exc}"
    if isinstance(exc, Problem):  # the upload check of app/validate.py
        return f"unsupported input: {exc.detail}"
    if isinstance(exc, VerificationError):
        return f"verification failed: {exc}"
    if isinstance(exc, (StorageUnavailable, InputMissing)):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return time_limit_message(runtime().settings)
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory on this volume"
    return f"internal error ({type(exc).__name__}): {exc}"


def time_limit_message(settings: Settings) -> str:
    return (f"the job took longer than the time limit of {settings.task_time_limit_seconds} s "
            "(NVC_TASK_TIME_LIMIT_SECONDS) and was stopped")


@dataclass
class Attempt:
    """One delivery of a job to this worker: its id on the record, its number, its heartbeat."""

    id: str
    number: int = 1
    heartbeat: Heartbeat | None = None

    def output_key(self, record: dict[str, Any]) -> str:
        """Where this attempt stores its result. A re-run writes its own object, so an earlier
        attempt that is presumed dead but wakes up can never overwrite the result that won."""
        name = "output" if self.number == 1 else f"output.a{self.number}"
        return f"{job_prefix(record['id'])}{name}.{record['output_format']}"


def _takeover_refused(
    settings: Settings, record: dict[str, Any], hostname: str | None, now: float, redelivered: bool
) -> str | None:
    """Why this delivery must not run a job the record says is `running` (None: it may).

    A running job is re-run when its previous attempt is dead: the broker redelivered the
    message (the worker process holding it died or shut down, or it outlived the visibility
    timeout), or this very worker ran it (one job per worker process), or the attempt stopped
    sending heartbeats. Any other copy of the message while the attempt is alive and beating
    is a duplicate, dropped (the watchdog re-queues the job if that attempt dies later)."""
    if redelivered or record.get("worker") == (hostname or "unknown"):
        return None
    beat = record.get("heartbeat_at")
    if beat is None or now - beat >= settings.heartbeat_timeout_seconds:
        return None
    return f"running on {record.get('worker')} (heartbeat {now - beat:.0f} s ago)"


def run_job(job_id: str, kind: str, hostname: str | None, redelivered: bool = False) -> str:
    """Run one job; returns the state it ended in (or why it was skipped). `redelivered`: the
    broker says an earlier delivery of this message was lost."""
    rt = runtime()
    store, settings = rt.store, rt.settings
    record = store.get(job_id)
    if record is None:
        log.info("job %s: no record (expired or deleted), skipping", job_id)
        return "missing"
    if record["state"] not in ACTIVE_STATES:
        return record["state"]
    now = time.time()
    previous_attempt = {"attempt_id": record["attempt_id"]} if record.get("attempt_id") else None
    if record["state"] == "running":
        if now - (record.get("started_at") or now) >= settings.task_time_limit_seconds:
            done, _ = store.transition(job_id, "failed", ["running"], guard=previous_attempt, finished_at=now,
                                       error=time_limit_message(settings))
            if done:
                _cleanup(rt, job_id)
            return "failed"
        refused = _takeover_refused(settings, record, hostname, now, redelivered)
        if refused is not None:
            log.info("job %s is %s: duplicate delivery dropped", job_id, refused)
            return "duplicate"
    attempts = int(record.get("attempts", 0)) + 1
    if attempts > settings.max_attempts:
        done, _ = store.transition(
            job_id, "failed", [record["state"]], guard=previous_attempt, finished_at=now,
            error=f"gave up after {attempts - 1} attempts: the worker running this job was lost each time "
            "(out of memory or crashed)",
        )
        if done:
            _cleanup(rt, job_id)
        return "failed"
    started = time.time()
    attempt = Attempt(id=uuid.uuid4().hex, number=attempts)
    ok, previous = store.transition(
        job_id, "running", [record["state"]], guard=previous_attempt if record["state"] == "running" else None,
        started_at=started, worker=hostname or "unknown", device=rt.device, attempts=attempts, progress=0.0,
        attempt_id=attempt.id, heartbeat_at=started,
    )
    if not ok:
        return previous or "missing"
    if previous == "queued":
        store.observe("job_duration", f"{kind},queue", max(0.0, started - record["created_at"]))
    mine = {"attempt_id": attempt.id}

    body = _compress if kind == "compress" else _decompress
    scratch_root = settings.work_dir
    if scratch_root is not None:
        Path(scratch_root).mkdir(parents=True, exist_ok=True)
    interval = max(0.5, settings.heartbeat_timeout_seconds / 6)
    with tempfile.TemporaryDirectory(prefix=f"nvc-{job_id[:8]}-", dir=scratch_root) as scratch, \
            Heartbeat(store, job_id, attempt.id, interval) as heartbeat:
        attempt.heartbeat = heartbeat
        try:
            result = body(rt, record, Path(scratch), settings.progress_interval_seconds, attempt)
        except JobCancelled as exc:
            if isinstance(exc, JobSuperseded) or str(exc) == "succeeded":  # never touch another attempt's result
                log.info("job %s: another attempt took it over (%s); this one stops and leaves its objects alone",
                         job_id, "finished" if str(exc) == "succeeded" else "running")
                return "superseded"
            log.info("job %s stopped: %s", job_id, exc)
            _cleanup(rt, job_id)
            return "cancelled"
        except Exception as exc:
            if not isinstance(exc, (VerificationError, StorageUnavailable, InputMissing)) and not _is_codec_error(exc):
                log.exception("job %s failed", job_id)
            error = describe_failure(exc)
            finished = time.time()
            done, state = store.transition(job_id, "failed", ["running"], guard=mine, finished_at=finished,
                                           error=error)
            if done or state == "cancelled":
                _cleanup(rt, job_id)
            if done:
                store.observe("job_duration", f"{kind},total", finished - record["created_at"])
            return "failed" if done else state

    finished = time.time()
    done, state = store.transition(job_id, "succeeded", ["running"], guard=mine, finished_at=finished, progress=1.0,
                                   **result)
    if not done:
        if state in ("cancelled", "failed", ""):  # cancelled (or deleted) while we worked: drop what we wrote
            _cleanup(rt, job_id)
            return state or "missing"
        # another attempt owns the job (or finished it): remove only this attempt's own result
        log.info("job %s: another attempt took it over (it is %s); this one drops its result", job_id, state)
        if result["output_key"] != (rt.store.get(job_id) or {}).get("output_key"):
            _cleanup(rt, job_id, result["output_key"])
        return "superseded"
    _cleanup(rt, job_id, f"{job_prefix(job_id)}input")  # the upload is not needed any more
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


def _redelivered(request) -> bool:
    return bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))


@app.task(name=TASK_COMPRESS, bind=True)
def compress(self, job_id: str) -> str:
    return run_job(job_id, "compress", self.request.hostname, _redelivered(self.request))


@app.task(name=TASK_DECOMPRESS, bind=True)
def decompress(self, job_id: str) -> str:
    return run_job(job_id, "decompress", self.request.hostname, _redelivered(self.request))
