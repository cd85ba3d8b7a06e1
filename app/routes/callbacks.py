"""Job-end notifications, HTTP side: the per-key default callback (PUT/GET/DELETE /callback) and
the callback of a submission (`callback_url`, checked before the upload is read). Delivery,
signing and the address checks are `service.notify`."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from app.auth import current_owner
from app.deps import Services, get_services
from app.problems import PROBLEM_MEDIA_TYPE
from app.schemas import ProblemDetails
from service.notify import check_target

router = APIRouter(tags=["notifications"])
Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(get_services)]
PROBLEMS = {code: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in (401, 422, 429, 503, 504)}


class Callback(BaseModel):
    callback_url: str | None = Field(
        default=None, max_length=2048,
        description="Receives a signed POST (X-NVC-Signature, X-NVC-Timestamp) when each job of this key ends.")


async def checked(services: Services, url: str) -> str:
    """`url` when the service may call it (allow-list, public addresses), else a 422 problem."""
    return await anyio.to_thread.run_sync(check_target, url, services.settings)


async def job_callback(services: Services, owner: str, url: str | None) -> str | None:
    """The callback of a new job: the one given (checked), else the key's default."""
    if url:
        return await checked(services, url)
    return await services.redis.get(services.jobs.keys.callback_default(owner))


@router.put("/callback", response_model=Callback, summary="Set this key's default callback_url", responses=PROBLEMS)
async def put_callback(body: Callback, services: Svc, owner: Owner) -> Callback:
    key = services.jobs.keys.callback_default(owner)
    if body.callback_url:
        await services.redis.set(key, await checked(services, body.callback_url))
    else:
        await services.redis.delete(key)
    return Callback(callback_url=body.callback_url or None)


@router.get("/callback", response_model=Callback, summary="This key's default callback_url", responses=PROBLEMS)
async def get_callback(services: Svc, owner: Owner) -> Callback:
    return Callback(callback_url=await services.redis.get(services.jobs.keys.callback_default(owner)))


@router.delete("/callback", status_code=204, response_class=Response, summary="Remove this key's default callback",
               responses=PROBLEMS)
async def delete_callback(services: Svc, owner: Owner) -> Response:
    await services.redis.delete(services.jobs.keys.callback_default(owner))
    return Response(status_code=204)
