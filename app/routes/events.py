"""GET /jobs/{id}/events: the job's state changes as Server-Sent Events, for portals that keep a
connection open instead of polling. Each event is the job as GET /jobs/{id} shows it (`event:
state`); the stream ends after a terminal state; a comment every 15 s keeps proxies from
closing an idle stream. A stream takes one of the NVC_MAX_LONG_POLLS slots of the shared event
listener (429 with Retry-After when none is free)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from app.auth import current_owner
from app.deps import Services, get_services
from app.events import RECHECK_SECONDS
from app.problems import PROBLEM_MEDIA_TYPE
from app.schemas import ProblemDetails, job_from_record
from service.jobs import TERMINAL_STATES
from service.problems import Problem

router = APIRouter(tags=["jobs"])
KEEPALIVE_SECONDS = 15.0


def _event(record: dict) -> bytes:
    body = job_from_record(record).model_dump(mode="json", exclude={"notifications"})
    return f"event: state\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


@router.get(
    "/jobs/{job_id}/events",
    summary="The job's state changes as Server-Sent Events (until it ends)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {
                         "type": "object", "required": ["event", "data"],
                         "properties": {"event": {"const": "state"},
                                        "data": {"type": "string", "description": "The job (GET /jobs/{id}) as JSON"}},
                     }}},
                     "description": "`event: state` with the job as JSON, once per change"},
               **{code: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}}
                  for code in (401, 404, 422, 429, 503, 504)}},
)
async def job_events(
    job_id: Annotated[str, Path(description="Job id")],
    services: Annotated[Services, Depends(get_services)],
    owner: Annotated[str, Depends(current_owner)],
) -> StreamingResponse:
    from app.routes.jobs import _owned_job  # the one ownership check of job routes

    await _owned_job(services, job_id, owner)

    if services.events.waiting >= services.events.max_waiters:
        async with services.events.watch(job_id):  # raises the long-polls' 429 with Retry-After
            pass

    async def stream():
        # woken by the listener all long-polls share (app/events.py: one Redis connection per API
        # process, NVC_MAX_LONG_POLLS waiters at most); the record is the truth, re-read on each wake-up
        try:
            async with services.events.watch(job_id) as event:
                last = None
                idle = 0.0
                while True:
                    event.clear()
                    record = await services.jobs.get(job_id)  # after registering: no change is missed
                    if record is None:
                        return
                    view = (record["state"], record.get("progress"))
                    if view != last:
                        last, idle = view, 0.0
                        yield _event(record)
                    if record["state"] in TERMINAL_STATES:
                        return
                    try:
                        await asyncio.wait_for(event.wait(), timeout=RECHECK_SECONDS)
                    except asyncio.TimeoutError:
                        idle += RECHECK_SECONDS
                        if idle >= KEEPALIVE_SECONDS:
                            idle = 0.0
                            yield b": keep-alive\n\n"
        except Problem:  # every slot was taken between the check above and now: the stream ends
            return

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
