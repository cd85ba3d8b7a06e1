"""Celery tasks `nvc.compress` and `nvc.decompress`: one job each, through `worker.lifecycle`.

The worker package by concern: `runtime` (per-process handles and codec warm-up),
`lifecycle` (admission, attempts and the state machine), `attempt` (attempt id, progress,
heartbeats), `pipeline` (fetch, codec, verify, store), `artifacts` (storage with retries),
`verify` (the checks a result passes), `failures` (a failed job's `error` text). This module
only binds them to Celery. The codec is imported, and a tiny volume coded, once per worker
process at start-up (`worker_process_init`), never per job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import worker_process_init

from service.queue import TASK_COMPRESS, TASK_DECOMPRESS
from worker.celery_app import app
from worker.lifecycle import run_job
from worker.runtime import runtime, warm_up

log = logging.getLogger("nvc.worker")


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


def _redelivered(request) -> bool:
    return bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))


@app.task(name=TASK_COMPRESS, bind=True)
def compress(self, job_id: str) -> str:
    return run_job(job_id, "compress", self.request.hostname, _redelivered(self.request))


@app.task(name=TASK_DECOMPRESS, bind=True)
def decompress(self, job_id: str) -> str:
    return run_job(job_id, "decompress", self.request.hostname, _redelivered(self.request))
