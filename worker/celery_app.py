"""The Celery app `celery -A worker.celery_app worker` runs: the core's configuration
(`service.queue.make_celery`) with the task module registered."""

from __future__ import annotations

from service.queue import make_celery
from service.settings import get_settings

app = make_celery(get_settings(), include=["worker.tasks"])
