"""Jobs never stay `running` for ever, and a job store that lost its data says so.

Why the API runs this and not the workers: a worker that died (OOM-killed with its whole
process group, a node that vanished, a frozen VM) cannot report its own death, and its Celery
message sits unacknowledged in Redis until the broker's visibility timeout (hours) puts it
back. Every running attempt stamps `heartbeat_at` on its record every few seconds (a thread
in the worker, see worker/attempt.py). Every NVC_WATCHDOG_SECONDS the API looks at the running
jobs (the `<prefix>running` index kept by the transition script) and:

- a job whose heartbeat is older than NVC_HEARTBEAT_TIMEOUT_SECONDS is put back to `queued`
  and its task published again, or failed with a message once it has had NVC_MAX_ATTEMPTS;
- a job running longer than its time limit (NVC_TASK_TIME_LIMIT_SECONDS, plus the hard-kill
  grace and one heartbeat timeout, so a live worker always reports its own timeout first) is
  failed with a message.

Each change is a compare-and-set guarded by the attempt id the record carries, so several API
replicas can run this at once, and a presumed-dead attempt that comes back finds another
attempt (or a final state) on the record and stops without touching storage.

The epoch: one random value kept in Redis (`<prefix>epoch`). An API process remembers the
value it saw; a different or missing value later means Redis came back without its data
(restarted without persistence), and a lookup of a job that is gone says so instead of a
bare "not found".
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import anyio

from service.errors import lost_worker_message, requeue_failed_message, time_limit_message
from service.queue import HARD_LIMIT_GRACE_SECONDS, publish
from service.storage import job_prefix

log = logging.getLogger("nvc.watchdog")


async def remember_epoch(services) -> str | None:
    """Note this process's view of the job store's epoch (creating one if there is none)."""
    if getattr(services, "store_epoch", None) is None:
        key = services.jobs.keys.epoch
        await services.redis.set(key, uuid.uuid4().hex, nx=True)
        services.store_epoch = await services.redis.get(key)
    return services.store_epoch


async def store_was_reset(services) -> bool:
    """True when the job store's epoch changed since this process first saw it."""
    seen = getattr(services, "store_epoch", None)
    if seen is None:
        return False
    key = services.jobs.keys.epoch
    current = await services.redis.get(key)
    if current is None:
        await services.redis.set(key, uuid.uuid4().hex, nx=True)
    return current != seen


async def _fail(services, job_id: str, guard: dict | None, error: str) -> bool:
    done, _ = await services.jobs.transition(job_id, "failed", ["running"], guard=guard, finished_at=time.time(),
                                             error=error)
    if done:
        try:
            await anyio.to_thread.run_sync(services.storage.delete_prefix, job_prefix(job_id))
        except Exception as exc:  # the orphan sweep gets them later
            log.warning("job %s: could not delete its objects (%s)", job_id, exc)
    return done


async def check_running(services, now: float | None = None) -> dict[str, list[str]]:
    """One watchdog pass; returns the ids it re-queued and failed."""
    settings = services.settings
    keys = services.jobs.keys
    now = time.time() if now is None else now
    outcome: dict[str, list[str]] = {"requeued": [], "failed": []}
    for job_id in await services.redis.zrange(keys.running, 0, -1):
        record: dict[str, Any] | None = await services.jobs.get(job_id)
        if record is None or record["state"] != "running":
            await services.redis.zrem(keys.running, job_id)
            continue
        guard = {"attempt_id": record["attempt_id"]} if record.get("attempt_id") else None
        started = record.get("started_at") or now
        beat = record.get("heartbeat_at") or started
        attempts = int(record.get("attempts") or 0)
        limit = settings.task_time_limit_seconds + HARD_LIMIT_GRACE_SECONDS + settings.heartbeat_timeout_seconds
        if now - started > limit:
            error = time_limit_message(settings)
            if await _fail(services, job_id, guard, error):
                outcome["failed"].append(job_id)
            continue
        silent = now - beat
        if silent <= settings.heartbeat_timeout_seconds:
            continue
        if attempts >= settings.max_attempts:
            error = lost_worker_message(silent, attempts)
            if await _fail(services, job_id, guard, error):
                outcome["failed"].append(job_id)
            continue
        done, _ = await services.jobs.transition(job_id, "queued", ["running"], guard=guard, progress=0.0)
        if not done:
            continue
        try:
            await anyio.to_thread.run_sync(
                publish, services.celery, record["kind"], job_id, record.get("queue") or settings.resolved_submit_queue
            )
        except Exception as exc:
            await services.jobs.transition(job_id, "failed", ["queued"], finished_at=time.time(),
                                           error=requeue_failed_message(exc))
            outcome["failed"].append(job_id)
            continue
        log.warning("job %s: no heartbeat from %s for %.0f s; queued again (attempt %d of %d next)", job_id,
                    record.get("worker"), silent, attempts + 1, settings.max_attempts)
        outcome["requeued"].append(job_id)
    return outcome


async def watchdog(services) -> None:
    """Run `check_running` every NVC_WATCHDOG_SECONDS until cancelled."""
    interval = services.settings.watchdog_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            await remember_epoch(services)
            outcome = await check_running(services)
            if outcome["requeued"] or outcome["failed"]:
                log.info("watchdog: re-queued %d, failed %d", len(outcome["requeued"]), len(outcome["failed"]))
        except Exception as exc:
            log.warning("watchdog pass failed: %s", exc)
