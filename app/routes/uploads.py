"""Direct-to-storage upload routes: POST /uploads, GET /uploads/{id}, DELETE /uploads/{id}, and
the submission of a finished upload (POST /compress or /decompress with `upload_id`). The
domain (sessions, part sizes, the stored header's check) is `service.direct_upload`; this adds
only the HTTP side."""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from app.auth import current_owner
from app.deps import Services, get_services
from app.limits import ActiveJobs
from app.problems import PROBLEM_MEDIA_TYPE
from app.schemas import Job, ProblemDetails, job_from_record
from app.watchdog import remember_epoch
from service.direct_upload import DirectUploads
from service.submission import IdempotencyClaim, build_record, enqueue, job_parameters

router = APIRouter(tags=["uploads"])
Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(get_services)]
UploadId = Annotated[str, Path(description="Upload id (32 hex digits; the job keeps it as its id).",
                               pattern="^[0-9a-f]{32}$")]


class UploadRequest(BaseModel):
    kind: Literal["compress", "decompress"] = Field(description="What the uploaded file is for.")
    size: int = Field(gt=0, description="Exact size of the file in bytes.")
    filename: str | None = Field(default=None, max_length=255, description="Name of the file (for the result's).")


class PartURL(BaseModel):
    number: int = Field(description="Part number, 1-based.")
    size: int = Field(description="Exact size this part must have.")
    url: str = Field(description="Presigned URL: PUT the part's bytes here (no API key).")


class StoredPart(BaseModel):
    number: int
    size: int


class UploadSession(BaseModel):
    id: str = Field(description="Upload id; submit with POST /compress?upload_id=ID (or /decompress).")
    kind: Literal["compress", "decompress"]
    size: int
    filename: str | None = None
    part_size: int = Field(description="Every part is this large except the last.")
    part_count: int
    expires_at: float = Field(description="Unix time after which the upload and its URLs are gone.")
    stored: list[StoredPart] = Field(description="Parts already stored (GET: what a resumed upload can skip).")
    parts: list[PartURL] = Field(description="The parts still to upload, with their URLs.")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in codes}


def direct_uploads(services: Services) -> DirectUploads:
    return DirectUploads(services.redis, services.storage, services.settings)


@router.post(
    "/uploads", status_code=201, response_model=UploadSession,
    summary="Start a direct-to-storage upload (S3 storage): presigned URLs for each part",
    responses=_problems(400, 401, 409, 413, 422, 429, 503, 504),
)
async def start_upload(body: UploadRequest, services: Svc, owner: Owner) -> dict[str, Any]:
    """PUT each part to its URL (any order, in parallel, retried per part), then submit the job
    with `POST /compress?upload_id=ID` (or `/decompress`). 409 when the service stores files
    locally: then send the file in the body of /compress instead."""
    return await direct_uploads(services).start(uuid.uuid4().hex, owner, body.kind, body.size, body.filename)


@router.get(
    "/uploads/{upload_id}", response_model=UploadSession,
    summary="Parts stored so far, and fresh URLs for the rest (to resume an upload)",
    responses=_problems(401, 404, 409, 422, 429, 503, 504),
)
async def get_upload(upload_id: UploadId, services: Svc, owner: Owner) -> dict[str, Any]:
    return await direct_uploads(services).status(owner, upload_id)


@router.delete(
    "/uploads/{upload_id}", status_code=204, response_class=Response,
    summary="Abandon an upload and delete its parts",
    responses=_problems(401, 404, 409, 422, 429, 503, 504),
)
async def delete_upload(upload_id: UploadId, services: Svc, owner: Owner) -> Response:
    await direct_uploads(services).abort(owner, upload_id)
    return Response(status_code=204)


async def submit_uploaded(
    request: Request, response: Response, services: Services, owner: str, kind: str, upload_id: str,
    idempotency_key: str | None, params: dict[str, str | None], callback_url: str | None = None,
) -> Job:
    """The job of a finished direct upload: same parameters, limits and idempotency as a
    streamed submission; the upload id becomes the job id."""
    settings = services.settings
    uploads = direct_uploads(services)
    claim = IdempotencyClaim(services.redis, services.jobs, owner, idempotency_key, upload_id,
                             settings.job_ttl_seconds)
    replayed = await claim.claim(kind)
    if replayed is not None:
        response.headers["Idempotent-Replayed"] = "true"
        return job_response(response, request, replayed)
    active = ActiveJobs(services, owner)
    try:
        session = await uploads.get(owner, upload_id)
        if session.kind != kind:
            from service.problems import Problem

            raise Problem(422, f"upload {upload_id} was started for {session.kind}, not {kind}",
                          slug="invalid-request")
        job_params = job_parameters(kind, params)  # before the upload is completed: a bad parameter costs nothing
        await active.reserve(upload_id)
        session, info = await uploads.finish(owner, upload_id)
        filename = params.get("filename") or session.filename
        record = build_record(
            upload_id, kind, owner, settings, job_params, filename=filename, size=session.size, sha256=None,
            volume=info, idempotency_key=idempotency_key,
        )
        if callback_url:
            record["callback_url"] = callback_url
        await remember_epoch(services)
        await services.jobs.create(record)
    except BaseException:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                if not await services.jobs.exists(upload_id):
                    await active.release(upload_id)
            with contextlib.suppress(Exception):
                await claim.release()
        raise
    await services.jobs.count_bytes("in", kind, session.size)
    await enqueue(services.jobs, services.celery, record)
    return job_response(response, request, record)


def job_response(response: Response, request: Request, record: dict[str, Any]) -> Job:
    response.headers["Location"] = str(request.url_for("get_job", job_id=record["id"]))
    return job_from_record(record)
