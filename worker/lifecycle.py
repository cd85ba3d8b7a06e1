"""The life of one delivery of a job: may it run, take the record, run, and end it.

1. compare-and-set queued|running -> running (a redelivered job whose worker died is
   `running` already and runs again; a cancelled or finished one is skipped; a duplicate
   copy of a message whose attempt is alive is dropped; a job past its time limit or out of
   attempts fails);
2. run the pipeline (`worker/pipeline.py`) under a heartbeat, in a scratch folder;
3. compare-and-set running -> succeeded with the result's fields, or -> failed with a
   readable `error`. If the job was cancelled meanwhile its objects are deleted; if another
   attempt took it over, this one leaves that attempt's objects alone.

Every transition is guarded by the attempt id (`worker/attempt.py`), so exactly one attempt
ends a job.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from service.errors import gave_up_message, time_limit_message
from service.jobs import ACTIVE_STATES
from service.storage import job_prefix
from worker.artifacts import InputMissing, cleanup
from worker.attempt import Attempt, Heartbeat, JobCancelled, JobSuperseded, takeover_refused
from worker.failures import describe_failure, is_expected
from worker.pipeline import BODIES
from worker.runtime import Runtime, runtime

log = logging.getLogger("nvc.worker")


def run_job(job_id: str, kind: str, hostname: str | None, redelivered: bool = False) -> str:
    """Run one job; returns the state it ended in (or why it was skipped). `redelivered`: the
    broker says an earlier delivery of this message was lost."""
    rt = runtime()
    record = rt.store.get(job_id)
    if record is None:
        log.info("job %s: no record (expired or deleted), skipping", job_id)
        return "missing"
    if record["state"] not in ACTIVE_STATES:
        return record["state"]
    refused = _admit(rt, record, hostname, redelivered)
    if refused is not None:
        return refused
    attempt = _start(rt, record, kind, hostname)
    if isinstance(attempt, str):
        return attempt
    outcome = _run(rt, record, kind, attempt)
    if isinstance(outcome, str):
        return outcome
    return _succeed(rt, record, kind, attempt, outcome)


def _previous_guard(record: dict[str, Any]) -> dict[str, str] | None:
    return {"attempt_id": record["attempt_id"]} if record.get("attempt_id") else None


def _admit(rt: Runtime, record: dict[str, Any], hostname: str | None, redelivered: bool) -> str | None:
    """None when this delivery may run the job; else the state it ends in (a job past its time
    limit or out of attempts fails here) or `duplicate`."""
    store, settings, job_id = rt.store, rt.settings, record["id"]
    now = time.time()
    guard = _previous_guard(record)
    if record["state"] == "running":
        if now - (record.get("started_at") or now) >= settings.task_time_limit_seconds:
            done, _ = store.transition(job_id, "failed", ["running"], guard=guard, finished_at=now,
                                       error=time_limit_message(settings))
            if done:
                cleanup(rt, job_id)
            return "failed"
        refused = takeover_refused(settings, record, hostname, now, redelivered)
        if refused is not None:
            log.info("job %s is %s: duplicate delivery dropped", job_id, refused)
            return "duplicate"
    attempts = int(record.get("attempts", 0)) + 1
    if attempts > settings.max_attempts:
        done, _ = store.transition(job_id, "failed", [record["state"]], guard=guard, finished_at=now,
                                   error=gave_up_message(attempts - 1))
        if done:
            cleanup(rt, job_id)
        return "failed"
    return None


def _start(rt: Runtime, record: dict[str, Any], kind: str, hostname: str | None) -> Attempt | str:
    """Take the record for a new attempt (compare-and-set to `running`); the attempt, or the
    state another party left the record in."""
    job_id = record["id"]
    started = time.time()
    attempt = Attempt(id=uuid.uuid4().hex, number=int(record.get("attempts", 0)) + 1)
    guard = _previous_guard(record) if record["state"] == "running" else None
    ok, previous = rt.store.transition(
        job_id, "running", [record["state"]], guard=guard, started_at=started, worker=hostname or "unknown",
        device=rt.device, attempts=attempt.number, progress=0.0, attempt_id=attempt.id, heartbeat_at=started,
    )
    if not ok:
        return previous or "missing"
    if previous == "queued":
        rt.store.observe("job_duration", f"{kind},queue", max(0.0, started - record["created_at"]))
    return attempt


def _run(rt: Runtime, record: dict[str, Any], kind: str, attempt: Attempt) -> dict[str, Any] | str:
    """Run the pipeline under a heartbeat; its result fields, or the state the job ended in."""
    store, settings, job_id = rt.store, rt.settings, record["id"]
    scratch_root = settings.work_dir
    if scratch_root is not None:
        Path(scratch_root).mkdir(parents=True, exist_ok=True)
    interval = max(0.5, settings.heartbeat_timeout_seconds / 6)
    with tempfile.TemporaryDirectory(prefix=f"nvc-{job_id[:8]}-", dir=scratch_root) as scratch, \
            Heartbeat(store, job_id, attempt.id, interval) as heartbeat:
        attempt.heartbeat = heartbeat
        try:
            return BODIES[kind](rt, record, Path(scratch), settings.progress_interval_seconds, attempt)
        except JobCancelled as exc:
            if isinstance(exc, JobSuperseded) or str(exc) == "succeeded":  # never touch another attempt's result
                return _stale(rt, job_id, attempt, "finished" if str(exc) == "succeeded" else "running",
                              "stopped and left its objects alone")
            log.info("job %s stopped: %s", job_id, exc)
            cleanup(rt, job_id)
            return "cancelled"
        except Exception as exc:
            return _fail(rt, record, kind, attempt, exc)


def _stale(rt: Runtime, job_id: str, attempt: Attempt, state: str, what: str) -> str:
    """End an attempt that woke up to find the job owned by another (presumed lost, it was
    superseded): log it and put it on the record (`stale_attempts`, `stale_attempt_note`)."""
    note = f"attempt {attempt.number} ({attempt.id[:8]}) found another attempt owning the job (it is {state}): {what}"
    log.info("job %s: another attempt took it over: %s", job_id, note)
    try:
        rt.store.note_stale_attempt(job_id, note)
    except Exception as exc:  # the log line above is the account then
        log.warning("job %s: could not record the stale attempt (%s)", job_id, exc)
    return "superseded"


def _fail(rt: Runtime, record: dict[str, Any], kind: str, attempt: Attempt, exc: Exception) -> str:
    job_id = record["id"]
    if not is_expected(exc):
        log.exception("job %s failed", job_id)
    finished = time.time()
    error = describe_failure(exc)
    done, state = rt.store.transition(job_id, "failed", ["running"], guard={"attempt_id": attempt.id},
                                      finished_at=finished, error=error)
    if not done and state in ("running", "succeeded"):  # another attempt owns the job: its outcome stands
        if isinstance(exc, InputMissing):
            # frozen before its private link to the input existed, it woke after the owning
            # attempt's clean-up: the missing input is the supersession, not a failure of its own
            return _stale(rt, job_id, attempt, state, "superseded: the attempt that owns the job has cleaned up its "
                          "input; the job was not touched")
        return _stale(rt, job_id, attempt, state, f"stopped after its own failure ({error}); the job was not touched")
    if done or state == "cancelled":
        cleanup(rt, job_id)
    if done:
        rt.store.observe("job_duration", f"{kind},total", finished - record["created_at"])
    return "failed" if done else state


def _succeed(rt: Runtime, record: dict[str, Any], kind: str, attempt: Attempt, result: dict[str, Any]) -> str:
    store, job_id = rt.store, record["id"]
    finished = time.time()
    done, state = store.transition(job_id, "succeeded", ["running"], guard={"attempt_id": attempt.id},
                                   finished_at=finished, progress=1.0, **result)
    if not done:
        if state in ("cancelled", "failed", ""):  # cancelled (or deleted) while we worked: drop what we wrote
            cleanup(rt, job_id)
            return state or "missing"
        # another attempt owns the job (or finished it): remove only this attempt's own result
        if result["output_key"] != (store.get(job_id) or {}).get("output_key"):
            cleanup(rt, job_id, result["output_key"])
        return _stale(rt, job_id, attempt, state, "finished too and removed its own result")
    if kind != "decompress":  # a decompress job's upload is its .nvc: the slice routes show it
        cleanup(rt, job_id, f"{job_prefix(job_id)}input")  # the upload is not needed any more
    store.count_bytes("out", kind, result["output_size"])
    store.observe("job_duration", f"{kind},codec", result["codec_seconds"])
    if result.get("verify_seconds") is not None:
        store.observe("job_duration", f"{kind},verify", result["verify_seconds"])
    store.observe("job_duration", f"{kind},total", finished - record["created_at"])
    return "succeeded"
