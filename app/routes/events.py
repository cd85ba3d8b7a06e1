"""GET /jobs/{id}/events: the job's state changes as Server-Sent Events, for portals that keep a
connection open instead of polling. Each event is the job as GET /jobs/{id} shows it (`event:
state`); the stream ends after a terminal state; a comment every 15 s keeps proxies from
closing an idle stream."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path
from fastapi.responses import StreamingResponse

from app.auth import current_owner
from app.deps import Services, get_services
from app.problems import PROBLEM_MEDIA_TYPE
from app.schemas import ProblemDetails, job_from_record
from service.jobs import TERMINAL_STATES

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

    async def stream():
        pubsub = services.redis.pubsub()
        try:
            await pubsub.subscribe(services.jobs.keys.events(job_id))
            last = None
            while True:
                record = await services.jobs.get(job_id)  # after subscribing: no change is missed
                if record is None:
                    return
                view = (record["state"], record.get("progress"))
                if view != last:
                    last = view
                    yield _event(record)
                if record["state"] in TERMINAL_STATES:
                    return
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    message = None
                if message is None:
                    yield b": keep-alive\n\n"
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
