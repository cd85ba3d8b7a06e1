"""The FastAPI application: `uvicorn app.main:create_app --factory` (or `nvc api`).

`create_app` builds nothing that talks to the network: Redis, storage and the Celery
publisher are opened in the lifespan, so the OpenAPI document can be generated offline.
The web page (app/static/, maintained with the SDK) is mounted when present: its files under
/static and its index.html at `/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

import nvc
from app import problems
from app.auth import KeyRing
from app.deps import Services
from app.limits import RequestTimeoutMiddleware
from app.metrics import HttpMetrics, MetricsMiddleware
from app.routes import callbacks, events, health, jobs, slices, uploads
from service.jobs import AsyncJobStore
from service.settings import Settings, get_settings
from service.storage import make_storage, sweep_orphans

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("nvc.api")

DESCRIPTION = """Lossless compression of 3-D medical volumes as asynchronous jobs.

Submit with `POST /compress` (NIfTI or .npy) or `POST /decompress` (.nvc), as multipart
field `file` or as the raw body; poll `GET /jobs/{id}` (optionally long-polling with
`?wait=`), then download `GET /jobs/{id}/result`; look at a slice with `GET /jobs/{id}/slices/{z}`
(PNG with a window, or .npy) without downloading the volume. Errors are RFC 9457 problem details."""


async def _sweeper(services: Services) -> None:
    """Delete stored objects whose job record expired, every ORPHAN_SWEEP_SECONDS."""
    interval = services.settings.orphan_sweep_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            ids = await anyio.to_thread.run_sync(
                lambda: sweep_orphans(services.storage, lambda job_id: anyio.from_thread.run(services.jobs.exists, job_id))
            )
            if ids:
                log.info("swept objects of %d expired jobs", len(ids))
        except Exception:
            log.exception("orphan sweep failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import redis.asyncio as aioredis

        from service.queue import make_celery

        if not settings.redis_url:
            raise RuntimeError("NVC_REDIS_URL is not set (use `nvc serve` to run with an embedded Redis)")
        # A bounded pool: a burst of requests waits for a free connection (up to the request
        # timeout) instead of opening one each until Redis refuses ("Too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30,
            max_connections=settings.redis_max_connections, timeout=settings.request_timeout_seconds,
        )
        client = aioredis.Redis(connection_pool=pool)
        services = Services(
            settings=settings,
            redis=client,
            jobs=AsyncJobStore(client, settings.key_prefix, settings.job_ttl_seconds),
            storage=make_storage(settings),
            celery=make_celery(settings),
        )
        from app.events import JobEvents

        services.events = JobEvents(client, services.jobs.keys.events(""), settings.max_long_polls)
        app.state.services = services
        from app.watchdog import remember_epoch, watchdog

        async def note_epoch() -> None:
            try:
                with anyio.fail_after(10):
                    await remember_epoch(services)
            except Exception as exc:  # Redis down at start-up: /readyz says so; the watchdog retries
                log.warning("job store not reachable at start-up: %s", exc)

        tasks = [asyncio.create_task(note_epoch())]  # in the background: a hung Redis does not delay start-up
        if settings.orphan_sweep_seconds > 0:
            tasks.append(asyncio.create_task(_sweeper(services)))
        if settings.watchdog_seconds > 0:
            tasks.append(asyncio.create_task(watchdog(services)))
        if settings.callback_allowed_hosts:  # job-end notifications (service/notify.py)
            from app.notifier import notifier

            tasks.append(asyncio.create_task(notifier(services)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if services.slices is not None:
                services.slices.close()
            await services.events.close()
            await client.aclose()

    app = FastAPI(
        title="NVC",
        version=nvc.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.http_metrics = HttpMetrics()
    app.state.keyring = KeyRing.from_settings(settings)
    problems.install(app)
    app.include_router(jobs.router)
    app.include_router(slices.router)
    app.include_router(uploads.router)
    app.include_router(events.router)
    app.include_router(callbacks.router)
    app.include_router(health.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["Location", "Idempotent-Replayed", "Content-Disposition", "ETag", *slices.SLICE_HEADERS],
        )
    app.add_middleware(RequestTimeoutMiddleware, timeout=settings.request_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=app.state.http_metrics)
    mount_static(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with error responses declared as application/problem+json."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        problem = {problems.PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
        for path in schema["paths"].values():
            for operation in path.values():
                for code, response in operation.get("responses", {}).items():
                    ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
                    if code[0] in "45" and ref.endswith(("/ProblemDetails", "/HTTPValidationError")):
                        response["content"] = dict(problem)
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        _document_access(schema)
        app.openapi_schema = schema
    return app.openapi_schema


#: Routes that need an API key once keys are configured (app/auth.py).
KEYED_PATHS = ("/compress", "/decompress", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/slices",
               "/jobs/{job_id}/slices/{z}", "/uploads", "/uploads/{upload_id}",
               "/jobs/{job_id}/events", "/callback")


def _document_access(schema: dict) -> None:
    """Declare the API-key schemes on the job routes, and link a submission to its job."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An API key (NVC_API_KEYS or `nvc keys create`). Not needed while the service "
                   "runs open: no key configured, e.g. `nvc serve` on 127.0.0.1."},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                         "description": "The same key in an X-API-Key header."},
    }
    for path in KEYED_PATHS:
        for operation in schema["paths"].get(path, {}).values():
            operation["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
    job_id = {"job_id": "$response.body#/id"}
    links = {
        "GetJob": {"operationId": "get_job_jobs__job_id__get", "parameters": job_id},
        "GetResult": {"operationId": "get_result_jobs__job_id__result_get", "parameters": job_id},
        "CancelJob": {"operationId": "delete_job_jobs__job_id__delete", "parameters": job_id},
    }
    for path in ("/compress", "/decompress"):
        accepted = schema["paths"].get(path, {}).get("post", {}).get("responses", {}).get("202")
        if accepted is not None:
            accepted["links"] = links


def mount_static(app: FastAPI, directory: Path = STATIC_DIR) -> None:
    """Serve the web page when app/static/index.html exists (not part of the API schema)."""
    index = directory / "index.html"
    if not index.is_file():
        return
    app.mount("/static", StaticFiles(directory=directory), name="static")

    @app.get("/", include_in_schema=False)
    async def _index() -> FileResponse:
        return FileResponse(index, media_type="text/html")
