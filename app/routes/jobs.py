"""Job routes: submit (compress / decompress), status, result, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from app.auth import current_owner
from app.deps import Services, get_services
from app.events import RECHECK_SECONDS
from app.limits import ActiveJobs
from app.problems import PROBLEM_MEDIA_TYPE, Problem
from app.routes.callbacks import job_callback
from app.routes.uploads import submit_uploaded
from app.schemas import Job, JobList, JobState, OutputFormat, ProblemDetails, TransferSyntax, job_from_record
from app.uploads import receive_upload, sniff_volume
from app.watchdog import remember_epoch, store_was_reset
from service.jobs import ACTIVE_STATES, TERMINAL_STATES
from service.storage import ObjectNotFound, job_prefix
from service.submission import IdempotencyClaim, build_record, enqueue, input_key, job_parameters
from service.validate import NVC_MAGIC, validator_for
from service.validate_dicom import looks_like_dicom_upload

router = APIRouter(tags=["jobs"])

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_WAIT_SECONDS = 60.0

UploadIdQuery = Annotated[
    str | None,
    Query(description="Submit a finished direct upload (POST /uploads) instead of sending the file in the body.",
          pattern="^[0-9a-f]{32}$"),
]
CallbackQuery = Annotated[
    str | None,
    Query(description="URL that receives a signed POST when the job ends (default: the key's, PUT /callback).",
          max_length=2048),
]
Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(get_services)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying a submission with the same key returns the same job instead of a new one.",
    ),
]


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ProblemDetails, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in codes}


def _upload_body(extra_fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body for routes that stream their upload themselves."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}, **extra_fields},
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


SUBMIT_HEADERS = {
    "Location": {"description": "URL of the job", "schema": {"type": "string"}},
}
#: Problems any job route can answer: rate or job limit (429), Redis or storage down (503),
#: no answer within NVC_REQUEST_TIMEOUT_SECONDS (504).
COMMON_PROBLEMS = (429, 503, 504)
SUBMIT_PROBLEMS = (400, 401, 404, 408, 409, 413, 415, 422, *COMMON_PROBLEMS)


def _job_response(response: Response, request: Request, record: dict[str, Any]) -> Job:
    response.headers["Location"] = str(request.url_for("get_job", job_id=record["id"]))
    return job_from_record(record)


async def _owned_job(services: Services, job_id: str, owner: str) -> dict[str, Any]:
    record = await services.jobs.get(job_id) if JOB_ID.match(job_id) else None
    if record is None or record.get("owner") != owner:
        detail = f"no job {job_id!r} (it may have expired)"
        if record is None and JOB_ID.match(job_id) and await store_was_reset(services):
            detail = (f"no job {job_id!r}: the job store (Redis) lost its data since this API started (restarted "
                      "without persistence?), so jobs submitted before then are gone; submit the file again")
        raise Problem(404, detail, slug="job-not-found")
    return record


async def _submit(
    request: Request,
    response: Response,
    services: Services,
    owner: str,
    kind: str,
    idempotency_key: str | None,
    params: dict[str, str | None],
    callback_url: str | None = None,
) -> Job:
    """Stream the upload into storage, then create and queue the job (the steps live in
    `service.submission`; this only adds the HTTP side: the upload and the answer)."""
    settings = services.settings
    job_id = uuid.uuid4().hex
    claim = IdempotencyClaim(services.redis, services.jobs, owner, idempotency_key, job_id, settings.job_ttl_seconds)
    replayed = await claim.claim(kind)
    if replayed is not None:
        response.headers["Idempotent-Replayed"] = "true"
        return _job_response(response, request, replayed)

    active = ActiveJobs(services, owner)
    try:
        await active.reserve(job_id)  # before reading the upload: a refusal costs nothing
        upload = await receive_upload(
            request, services.storage, input_key(job_id), settings.max_upload_bytes, _head_check(kind, settings),
            validator=validator_for(kind, settings.max_volume_bytes), on_batch=lambda: active.touch(job_id),
        )
        fields = {k: v for k, v in upload.fields.items() if v != ""}
        merged = {name: params.get(name) or fields.get(name) for name in params}
        filename = merged.pop("filename", None) or upload.filename
        job_params = job_parameters(kind, merged, getattr(upload.volume, "format", None))
        record = build_record(
            job_id, kind, owner, settings, job_params, filename=filename, size=upload.size, sha256=upload.sha256,
            volume=upload.volume, idempotency_key=idempotency_key,
        )
        if callback_url:
            record["callback_url"] = callback_url
        await remember_epoch(services)
        await services.jobs.create(record)
    except BaseException:
        await _roll_back(services, job_id, active, claim)
        raise

    await services.jobs.count_bytes("in", kind, upload.size)
    await enqueue(services.jobs, services.celery, record)
    return _job_response(response, request, record)


def _head_check(kind: str, settings) -> Callable[[bytes], None]:
    """Refuse an upload from its first bytes (415) before the rest is read."""

    def check_head(head: bytes) -> None:
        if kind == "compress" and sniff_volume(head) is None and not looks_like_dicom_upload(head):
            early = validator_for(kind, settings.max_volume_bytes)  # says what the first bytes are instead
            early.feed(head)
            early.finish()
            raise Problem(
                415, "the upload is not a NIfTI (.nii, .nii.gz) or NumPy (.npy) file, nor DICOM (a .dcm file, or a zip, "
                "tar or tar.gz of a series)", slug="unsupported-input"
            )
        if kind == "decompress" and head[:8] != NVC_MAGIC[: len(head[:8])]:
            raise Problem(415, "the upload is not an .nvc file (bad magic)", slug="unsupported-input")

    return check_head


async def _roll_back(services: Services, job_id: str, active: ActiveJobs, claim: IdempotencyClaim) -> None:
    """Undo a failed submission; each step on its own, so an unreachable store does not stop the rest."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(services.storage.delete_prefix, job_prefix(job_id))
        with contextlib.suppress(Exception):
            await active.release(job_id)
        with contextlib.suppress(Exception):
            await claim.release()


@router.post(
    "/compress",
    status_code=202,
    response_model=Job,
    summary="Compress a volume (.nii, .nii.gz or .npy) or a DICOM series (zip, tar, tar.gz, .dcm parts) to .nvc",
    responses={202: {"headers": SUBMIT_HEADERS}, **_problem_responses(*SUBMIT_PROBLEMS)},
    openapi_extra=_upload_body({"profile": {"type": "string"}, "filename": {"type": "string"}}),
)
async def compress(
    request: Request,
    response: Response,
    services: Svc,
    owner: Owner,
    idempotency_key: IdempotencyKey = None,
    profile: Annotated[str | None, Query(description="Codec profile: `default`, `archive` (heavy fitting for maximum ratio; `gpu` is its deprecated name) or `paper` (default: `default`).", max_length=64)] = None,
    filename: Annotated[
        str | None, Query(description="Name of the uploaded file, for a raw-body upload.", max_length=255)
    ] = None,
    upload_id: UploadIdQuery = None,
    callback_url: CallbackQuery = None,
) -> Job:
    """Upload a volume as multipart field `file` or as the raw body (or, with `upload_id`, submit a
    finished direct upload, POST /uploads); answers 202 with the job. A DICOM series is a zip, a tar
    or a tar.gz (.tgz) of its files (raw body or field `file`), one .dcm, or several `file` parts."""
    params = {"profile": profile, "filename": filename}
    callback = await job_callback(services, owner, callback_url)
    if upload_id is not None:
        return await submit_uploaded(request, response, services, owner, "compress", upload_id, idempotency_key,
                                     params, callback)
    return await _submit(request, response, services, owner, "compress", idempotency_key, params, callback)


@router.post(
    "/decompress",
    status_code=202,
    response_model=Job,
    summary="Decompress an .nvc file to NIfTI or .npy",
    responses={202: {"headers": SUBMIT_HEADERS}, **_problem_responses(*SUBMIT_PROBLEMS)},
    openapi_extra=_upload_body(
        {"format": {"type": "string", "enum": ["nii.gz", "nii", "npy"]}, "filename": {"type": "string"}}
    ),
)
async def decompress(
    request: Request,
    response: Response,
    services: Svc,
    owner: Owner,
    idempotency_key: IdempotencyKey = None,
    format: Annotated[
        OutputFormat | None, Query(description="Output format (default nii.gz; a DICOM archive: zip).")
    ] = None,
    filename: Annotated[
        str | None, Query(description="Name of the uploaded file, for a raw-body upload.", max_length=255)
    ] = None,
    upload_id: UploadIdQuery = None,
    transfer_syntax: Annotated[
        TransferSyntax | None,
        Query(description="DICOM archives: export the coded series in this lossless transfer syntax instead of "
                          "restoring the original bytes."),
    ] = None,
    callback_url: CallbackQuery = None,
) -> Job:
    """Upload an .nvc file as multipart field `file` or as the raw body (or, with `upload_id`, submit a
    finished direct upload, POST /uploads); answers 202 with the job. A DICOM archive's result is a
    zip of its files (byte for byte, or exported)."""
    params = {"format": format, "filename": filename, "transfer_syntax": transfer_syntax}
    callback = await job_callback(services, owner, callback_url)
    if upload_id is not None:
        return await submit_uploaded(request, response, services, owner, "decompress", upload_id, idempotency_key,
                                     params, callback)
    return await _submit(request, response, services, owner, "decompress", idempotency_key, params, callback)


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's jobs, newest first, a page at a time",
    responses=_problem_responses(401, 422, *COMMON_PROBLEMS),
)
async def list_jobs(
    services: Svc,
    owner: Owner,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states (repeatable).")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=100, description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    """Jobs this API key (or, with no keys configured, anyone) submitted and whose records have
    not expired, newest first; `next_cursor` pages on."""
    try:
        records, next_cursor = await services.jobs.list_owned(owner, states=state or (), limit=limit, cursor=cursor)
    except ValueError as exc:
        raise Problem(422, str(exc), slug="invalid-request") from None
    return JobList(jobs=[job_from_record(r) for r in records], next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}",
    response_model=Job,
    name="get_job",
    summary="State of a job",
    responses=_problem_responses(401, 404, 422, *COMMON_PROBLEMS),
)
async def get_job(
    services: Svc,
    owner: Owner,
    job_id: Annotated[str, Path(description="Job id")],
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_SECONDS, description="Long-poll: wait up to this many seconds for the job to finish."),
    ] = 0,
) -> Job:
    record = await _owned_job(services, job_id, owner)
    wait = min(wait, max(0.0, services.settings.request_timeout_seconds - 2))  # answer before the request timeout
    if wait > 0 and record["state"] in ACTIVE_STATES:
        record = await _wait_for_end(services, job_id, wait) or record
    return job_from_record(record)


async def _wait_for_end(services: Services, job_id: str, wait: float) -> dict[str, Any] | None:
    """Wait for a terminal state, woken by the job's events on the listener all long-polls share
    (app/events.py: one Redis connection, at most NVC_MAX_LONG_POLLS waiters, 429 beyond)."""
    async with services.events.watch(job_id) as event:
        deadline = time.monotonic() + wait
        while True:
            event.clear()
            record = await services.jobs.get(job_id)  # after registering: no lost wake-up
            if record is None or record["state"] in TERMINAL_STATES:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(left, RECHECK_SECONDS))


_MEDIA_TYPES = {"nvc": "application/octet-stream", "nii.gz": "application/gzip", "nii": "application/octet-stream",
                "npy": "application/octet-stream", "zip": "application/zip"}


@router.get(
    "/jobs/{job_id}/result",
    summary="Download the result of a succeeded job",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
              "description": "The result file"},
        307: {"description": "Redirect to a presigned object-storage URL (S3 backend)"},
        **_problem_responses(401, 404, 409, 410, 422, *COMMON_PROBLEMS),
    },
)
async def get_result(
    services: Svc,
    owner: Owner,
    job_id: str,
    redirect: Annotated[
        bool, Query(description="With S3 storage, answer 307 to a presigned URL (false: stream through the API).")
    ] = True,
):
    record = await _owned_job(services, job_id, owner)
    if record.get("result_deleted"):
        raise Problem(410, "the result of this job was deleted", slug="result-deleted")
    if record["state"] != "succeeded":
        headers = {"Retry-After": "1"} if record["state"] in ACTIVE_STATES else None
        raise Problem(409, f"job {job_id} is {record['state']}; no result to download", slug="no-result",
                      headers=headers, state=record["state"])
    key = record["output_key"]
    filename = record.get("output_name") or f"{job_id}.{record.get('output_format', 'bin')}"
    media_type = _MEDIA_TYPES.get(record.get("output_format", ""), "application/octet-stream")
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if record.get("output_sha256"):
        headers["ETag"] = f'"{record["output_sha256"]}"'
    storage = services.storage
    try:
        path = await anyio.to_thread.run_sync(storage.local_path, key)
        if path is not None:
            return FileResponse(path, media_type=media_type, headers=headers)
        size = await anyio.to_thread.run_sync(storage.size, key)  # also: never redirect to a missing object
        if redirect and services.settings.s3_redirect_results:
            url = await anyio.to_thread.run_sync(storage.presigned_url, key, filename, media_type)
            if url:
                return RedirectResponse(url, status_code=307)
    except ObjectNotFound:
        raise Problem(
            404, f"the result of job {job_id} is missing from object storage (removed outside the service, or lost "
            "by the store); the job record is kept: submit the file again for a new result", slug="result-missing",
        ) from None
    headers["Content-Length"] = str(size)
    return StreamingResponse(storage.iter_chunks(key), media_type=media_type, headers=headers)


@router.delete(
    "/jobs/{job_id}",
    response_model=Job,
    summary="Cancel a queued or running job and delete its objects",
    responses=_problem_responses(401, 404, 422, *COMMON_PROBLEMS),
)
async def delete_job(services: Svc, owner: Owner, job_id: str) -> Job:
    """Queued/running jobs become `cancelled`; a finished job keeps its state but its
    upload and result are deleted (`result_deleted`)."""
    record = await _owned_job(services, job_id, owner)
    if record["state"] in ACTIVE_STATES:
        await services.jobs.transition(job_id, "cancelled", ACTIVE_STATES, finished_at=time.time())
    await anyio.to_thread.run_sync(services.storage.delete_prefix, job_prefix(job_id))
    record = await services.jobs.get(job_id) or record
    if record["state"] in ("succeeded", "failed") and not record.get("result_deleted"):
        await services.jobs.update(job_id, result_deleted=True)
        record["result_deleted"] = True
    return job_from_record(record)
