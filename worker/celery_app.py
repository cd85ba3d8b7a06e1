"""The Celery application: Redis broker, no result backend, settings for not losing jobs.

Why these settings:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after the
  task returns, and a worker process that dies mid-job (OOM, SIGKILL, GPU fault) puts it back
  on the queue, so another worker runs the job again (bounded by NVC_MAX_ATTEMPTS).
- `worker_prefetch_multiplier = 1` and concurrency 1: a worker reserves one job at a time,
  so a long job never holds others hostage in its prefetch buffer.
- the broker visibility timeout must exceed the longest job, or Redis redelivers a job that
  is still running.
- no result backend: job state lives in our own Redis records (app/jobs.py).

The API imports this module only to publish tasks by name; it never imports `worker.tasks`
(and so never imports torch).
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

TASK_COMPRESS = "nvc.compress"
TASK_DECOMPRESS = "nvc.decompress"


def make_celery(settings: Settings, *, with_tasks: bool = False) -> Celery:
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    celery = Celery("nvc", broker=broker, include=["worker.tasks"] if with_tasks else [])
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
        task_time_limit=settings.task_time_limit_seconds + 60,
        task_soft_time_limit=settings.task_time_limit_seconds,
    )
    return celery


#: The app `celery -A worker.celery_app worker` runs (tasks registered).
app = make_celery(get_settings(), with_tasks=True)
