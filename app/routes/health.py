"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.deps import Services, get_services
from app.metrics import CONTENT_TYPE, render
from app.schemas import Health, Readiness

router = APIRouter(tags=["operations"])
CHECK_TIMEOUT = 2.0


@router.get("/healthz", response_model=Health, summary="The API process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Redis and object storage are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is not reachable"}},
)
async def readyz(services: Services = Depends(get_services)):
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(services.redis.ping(), CHECK_TIMEOUT)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {exc.__class__.__name__}: {exc}"
    try:
        with anyio.fail_after(CHECK_TIMEOUT * 3):
            await anyio.to_thread.run_sync(services.storage.check, abandon_on_cancel=True)
        checks["storage"] = "ok"
    except TimeoutError:
        checks["storage"] = "unreachable: timed out"
    except Exception as exc:
        checks["storage"] = f"unreachable: {exc}"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "unready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Prometheus text"},
               503: {"description": "Redis is not reachable"}},
)
async def metrics(request: Request, services: Services = Depends(get_services)) -> Response:
    settings = services.settings
    queues = sorted({settings.gpu_queue, settings.cpu_queue, settings.resolved_submit_queue})
    try:
        stats, hist = await services.jobs.stats()
        pipe = services.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue)
        depths = dict(zip(queues, await pipe.execute()))
    except Exception as exc:
        return Response(f"# redis unreachable: {exc}\n", status_code=503, media_type=CONTENT_TYPE)
    return Response(render(stats, hist, depths, request.app.state.http_metrics), media_type=CONTENT_TYPE)
