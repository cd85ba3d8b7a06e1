"""One delivery of a job to this worker: its attempt id, progress writes and heartbeats.

Exactly one result per job: each delivery that runs a job writes a fresh `attempt_id` on the
record, and its progress writes, heartbeats and final transition only succeed while the record
still carries that id. A redelivered message (a pool process died, or the API's watchdog
re-queued a job whose heartbeats stopped) becomes the new owner; an old attempt that wakes up
later learns from its next progress write or heartbeat that it was superseded, and stops.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from service.jobs import JobStore
from service.settings import Settings
from service.storage import job_prefix

log = logging.getLogger("nvc.worker")


class JobCancelled(Exception):
    """The job record left `running` (cancelled) while the codec was working."""


class JobSuperseded(JobCancelled):
    """Another attempt of the same job owns the record now (this one's worker was presumed lost)."""


def raise_unless_running(state: str) -> None:
    """Stop this attempt when the record says its job is no longer its own to run."""
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
            raise_unless_running(self.lost)


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
        raise_unless_running(state)


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

    def progress(self, store: JobStore, job_id: str, lo: float, hi: float, interval: float) -> Progress:
        """A progress callback for the stretch [lo, hi] of this attempt's job."""
        return Progress(store, job_id, lo, hi, interval, self.id, self.heartbeat)


def takeover_refused(
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
