"""Error texts that the API and the workers both write into a job's `error`.

Why here: the same failure (a job past its time limit, a worker lost too often) is noticed
either by the worker itself or by the API's watchdog (`app/watchdog.py`), and the user should
read one sentence for it whichever side saw it first.
"""

from __future__ import annotations

from service.settings import Settings


def time_limit_message(settings: Settings) -> str:
    """A job ran longer than NVC_TASK_TIME_LIMIT_SECONDS."""
    return (f"the job took longer than the time limit of {settings.task_time_limit_seconds} s "
            "(NVC_TASK_TIME_LIMIT_SECONDS) and was stopped")


def gave_up_message(attempts: int) -> str:
    """Every delivery of a job so far lost its worker (a poison job: out of memory, crash)."""
    return (f"gave up after {attempts} attempts: the worker running this job was lost each time "
            "(out of memory or crashed)")


def lost_worker_message(silent_seconds: float, attempts: int) -> str:
    """The watchdog gave up on a job whose worker stopped sending heartbeats, attempts exhausted."""
    return (f"the worker running this job stopped responding (no heartbeat for {silent_seconds:.0f} s) and the job "
            f"has had {attempts} attempts: giving up")


def requeue_failed_message(exc: BaseException) -> str:
    """A job whose worker was lost could not be published again."""
    return f"the worker was lost and the job could not be queued again: {exc}"


def queue_failed_message(exc: BaseException) -> str:
    """A new job could not be published."""
    return f"could not queue the job: {exc}"
