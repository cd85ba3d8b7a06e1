"""RFC 9457 problem details: every error the API answers is `application/problem+json`.

Why one module: handlers for our own `Problem` exception (`service.problems`: plain data, so
the service core and the workers can raise and read it without the web framework), Starlette's HTTPException (404 for
unknown routes, 405, ...), request validation errors and anything unexpected all end up in
the same shape, so clients parse one format and always get a human-readable `detail`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.problems import Problem

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("nvc.api")


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:nvc:problem:{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the problem+json exception handlers on `app`."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, slug=exc.slug, title=exc.title, instance=request.url.path,
            headers=exc.headers, **exc.extensions,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return problem_response(
            422, _describe_validation(errors), slug="invalid-request", instance=request.url.path, errors=errors
        )

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from service.storage import StorageError

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unreachable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            503, "the job store (Redis) is not reachable; try again shortly", slug="redis-unavailable",
            instance=request.url.path, headers={"Retry-After": "5"},
        )

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("storage failed on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            503, "object storage is not reachable; try again shortly", slug="storage-unavailable",
            instance=request.url.path, headers={"Retry-After": "5"},
        )

    try:
        from botocore.exceptions import BotoCoreError, ClientError

        @app.exception_handler(BotoCoreError)
        @app.exception_handler(ClientError)
        async def _s3_down(request: Request, exc: Exception) -> JSONResponse:
            return await _storage_down(request, exc)
    except ImportError:  # boto3 is only needed for the S3 backend
        pass

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "internal error; the request was not completed (see the server log)",
            slug="internal", instance=request.url.path,
        )
