"""Per-process service handles (settings, Redis, job store, storage, Celery), built at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from service.jobs import AsyncJobStore
from service.settings import Settings
from service.storage import Storage


@dataclass
class Services:
    settings: Settings
    redis: Any  # redis.asyncio.Redis
    jobs: AsyncJobStore
    storage: Storage
    celery: Any  # celery.Celery (publishing only)
    store_epoch: str | None = None  # the job store's epoch as first seen (app/watchdog.py)
    slices: Any = None  # app.slices.SliceCache, made on first use by the slice routes
    events: Any = None  # app.events.JobEvents: the one pub/sub listener long-polls share


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:  # lifespan did not run: a programming error, not a client one
        raise RuntimeError("service handles are not initialised (lifespan not run)")
    return services
