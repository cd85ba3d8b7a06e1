"""The job queues: task names, the Celery configuration, and publishing a job by name.

The API publishes with `publish` (a task *name*, never an import of `worker/`, and so never
torch); the workers build their Celery app from the same `make_celery` and register the tasks
under these names (`worker/celery_app.py`, `worker/tasks.py`).

Celery: Redis broker, no result backend, settings for not losing jobs.

Why these settings:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after the
  task returns, and a worker process that dies mid-job (OOM, SIGKILL, GPU fault) puts it back
  on the queue, so another worker runs the job again (bounded by NVC_MAX_ATTEMPTS).
- `worker_prefetch_multiplier = 1` and concurrency 1: a worker reserves one job at a time,
  so a long job never holds others hostage in its prefetch buffer.
- the broker visibility timeout must exceed the longest job, or Redis redelivers a job that
  is still running.
- no result backend: job state lives in our own Redis records (service/jobs.py).
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

#: Celery kills a task this long after its soft time limit (NVC_TASK_TIME_LIMIT_SECONDS).
HARD_LIMIT_GRACE_SECONDS = 60
TASK_COMPRESS = "nvc.compress"
TASK_DECOMPRESS = "nvc.decompress"
#: The task that runs a job of each kind (`worker/tasks.py` registers them under these names).
TASKS = {"compress": TASK_COMPRESS, "decompress": TASK_DECOMPRESS}


def task_for(kind: str) -> str:
    """The name of the task that runs a job of `kind` ("compress" or "decompress")."""
    return TASKS[kind]


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured for NVC's queues; `include`: task modules a worker loads."""
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    celery = Celery("nvc", broker=broker, include=include or [])
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.resolved_submit_queue,
        task_create_missing_queues=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_proc_alive_timeout=120,  # torch import + codec warm-up happen in the child
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,  # no pidbox traffic: nothing here uses it
        worker_hijack_root_logger=False,
        task_time_limit=settings.task_time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
        task_soft_time_limit=settings.task_time_limit_seconds,
    )
    return celery



def publish(celery: Celery, kind: str, job_id: str, queue: str) -> None:
    """Queue job `job_id` by task name on `queue` (blocking: call it from a thread in async code).
    The Celery task id is the job id, so a job and its message are easy to match in logs."""
    celery.send_task(task_for(kind), args=[job_id], queue=queue, task_id=job_id)
