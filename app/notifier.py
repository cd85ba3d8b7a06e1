"""The API's notification loop: delivers due job-end notifications (`service.notify`). Every API
process runs one; claims keep them from delivering the same notification at once."""

from __future__ import annotations

import asyncio
import logging

from app.schemas import job_from_record
from service.notify import deliver_due

log = logging.getLogger("nvc.notify")
IDLE_SECONDS = 0.5


def job_view(record: dict) -> dict:
    """The job as GET /jobs/{id} shows it (the body of a notification)."""
    return job_from_record(record).model_dump(mode="json", exclude={"notifications"})


async def notifier(services) -> None:
    while True:
        try:
            attempted = await deliver_due(services, job_view)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notification delivery failed")
            attempted = 0
        if not attempted:
            await asyncio.sleep(IDLE_SECONDS)
