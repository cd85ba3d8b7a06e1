"""Submitting a job, below the HTTP layer: idempotency, parameters, the record, enqueueing.

The route (`app/routes/jobs.py`) streams the upload and answers; what a submission *means*
lives here, as small steps it composes:

- `IdempotencyClaim`: an `Idempotency-Key` is claimed with `SET NX` under the caller's owner
  before the upload is read; a retry finds the key and gets the same job back (or a 409 with
  `Retry-After` while the first upload is still in flight); a failed submission releases it.
- `job_parameters`: the compress profile or the decompress output format, checked.
- `build_record`: the job record of an accepted upload.
- `enqueue`: publish the job by task name; a job that cannot be queued fails with a reason.

Every refusal is a `service.problems.Problem` (status, detail, slug) the API answers as-is.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import anyio

from codec.errors import UnsupportedInputError
from codec.naming import FORMATS, archive_name, compressed_name, decompressed_name
from codec.profiles import canonical_name, get_profile
from service.errors import queue_failed_message
from service.jobs import ACTIVE_STATES, AsyncJobStore, new_record
from service.problems import Problem
from service.queue import publish
from service.settings import Settings
from service.storage import job_prefix

#: Output formats of a decompress job (a DICOM archive's is always "zip").
OUTPUT_FORMATS = tuple(FORMATS.values())
#: Transfer syntaxes a DICOM archive can be exported to (codec.dicom_export.TRANSFER_SYNTAXES).
TRANSFER_SYNTAXES = ("jpegls", "jpeg2000", "htj2k", "explicit-little")


def input_key(job_id: str) -> str:
    """Where a job's upload is stored."""
    return f"{job_prefix(job_id)}input"


class IdempotencyClaim:
    """One submission's hold on its `Idempotency-Key` (no key: a claim that holds nothing)."""

    def __init__(self, redis, jobs: AsyncJobStore, owner: str, key: str | None, job_id: str, ttl: int):
        if key is not None and not key.strip():
            raise Problem(400, "Idempotency-Key must not be empty", slug="bad-idempotency-key")
        self.redis, self.jobs, self.job_id, self.ttl = redis, jobs, job_id, ttl
        self.redis_key = None if key is None else jobs.keys.idempotency(owner, hashlib.sha256(key.encode()).hexdigest())

    async def claim(self, kind: str) -> dict[str, Any] | None:
        """Claim the key for this job; the earlier job's record when the key was used already."""
        if self.redis_key is None:
            return None
        if await self.redis.set(self.redis_key, self.job_id, nx=True, ex=self.ttl):
            return None
        existing = await self.redis.get(self.redis_key)
        record = await self.jobs.get(existing) if existing else None
        if record is None:
            raise Problem(
                409, "a request with this Idempotency-Key is still in progress; retry in a moment",
                slug="idempotency-in-progress", headers={"Retry-After": "1"},
            )
        if record["kind"] != kind:
            raise Problem(
                422, f"this Idempotency-Key was used for a {record['kind']} request, not {kind}",
                slug="idempotency-key-reused",
            )
        return record

    async def release(self) -> None:
        """Give the key up, if this submission still holds it."""
        if self.redis_key is not None and await self.redis.get(self.redis_key) == self.job_id:
            await self.redis.delete(self.redis_key)


@dataclass(frozen=True)
class JobParameters:
    """What a job does with its upload, checked."""

    output_format: str
    profile: str | None = None
    transfer_syntax: str | None = None


def job_parameters(kind: str, params: dict[str, str | None], upload_format: str | None = None) -> JobParameters:
    """Check the query/form parameters of a submission (422 with the reason otherwise).

    `upload_format`: what the upload check found; a DICOM archive ("nvc-dicom") restores to a
    zip of its files, optionally exported to `transfer_syntax`."""
    syntax = params.get("transfer_syntax")
    if upload_format == "nvc-dicom":
        if params.get("format") not in (None, "zip"):
            raise Problem(422, f"a DICOM archive restores to a zip of its files, not {params.get('format')!r} "
                          "(leave format out, or use format=zip)", slug="invalid-request")
        if syntax is not None and syntax not in TRANSFER_SYNTAXES:
            raise Problem(422, f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)} (got {syntax!r})",
                          slug="invalid-request")
        return JobParameters(output_format="zip", transfer_syntax=syntax)
    if syntax is not None:
        raise Problem(422, "transfer_syntax applies to DICOM archives only", slug="invalid-request")
    if kind == "compress":
        profile = params.get("profile") or "default"
        try:
            get_profile(profile)  # the codec's one resolver (pure data: no torch)
        except UnsupportedInputError as exc:
            raise Problem(422, str(exc), slug="invalid-request") from None
        # a deprecated name (`gpu`) is recorded as the profile it stands for (`archive`)
        return JobParameters(output_format="nvc", profile=canonical_name(profile))
    output_format = params.get("format") or "nii.gz"
    if output_format not in OUTPUT_FORMATS:
        raise Problem(
            422, f"format must be one of {', '.join(OUTPUT_FORMATS)} (got {output_format!r})", slug="invalid-request"
        )
    return JobParameters(output_format=output_format)


def safe_file_name(filename: str | None, default: str) -> str:
    """`filename` without folders, reduced to characters that are safe in a Content-Disposition
    header and on any file system (`default` when nothing is left)."""
    if not filename:
        return default
    name = re.split(r"[\\/]", filename)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name[:200] or default


def output_name(kind: str, filename: str | None, input_format: str, output_format: str) -> str:
    """The name a job's result downloads as: the naming rule of the CLI and the SDK
    (`codec.naming`: ``scan.nii.gz`` -> ``scan.nii.gz.nvc`` -> ``scan.nii.gz``)."""
    if input_format == "dicom":
        return archive_name(safe_file_name(filename, "series"))
    if kind == "compress":
        return compressed_name(safe_file_name(filename, f"volume.{input_format}"))
    return decompressed_name(safe_file_name(filename, "volume.nvc"), output_format)


def build_record(
    job_id: str, kind: str, owner: str, settings: Settings, params: JobParameters, *, filename: str | None,
    size: int, sha256: str, volume: Any, idempotency_key: str | None,
) -> dict[str, Any]:
    """The record of an accepted upload (`volume`: the header facts the upload check learned)."""
    extra = {"profile": params.profile} if params.profile is not None else {}
    if params.transfer_syntax is not None:
        extra["transfer_syntax"] = params.transfer_syntax
    if getattr(volume, "files", None) is not None:  # a DICOM upload (service/validate_dicom.py)
        extra["files"] = volume.files
    input_format = volume.format if kind == "compress" or volume.format == "nvc-dicom" else "nvc"
    return new_record(
        job_id, kind, owner, settings.job_ttl_seconds,
        input_name=filename,
        input_format=input_format,
        input_key=input_key(job_id),
        input_size=size,
        input_sha256=sha256,
        output_format=params.output_format,
        output_name=output_name(kind, filename, input_format, params.output_format),
        queue=settings.resolved_submit_queue,
        idempotency_key=idempotency_key,
        shape=list(volume.shape) if volume.shape is not None else None,
        dtype=volume.dtype,
        **extra,
    )


async def enqueue(jobs: AsyncJobStore, celery, record: dict[str, Any]) -> None:
    """Publish the job by task name; if the queue is unreachable the job fails and the caller
    gets a 503."""
    try:
        await anyio.to_thread.run_sync(publish, celery, record["kind"], record["id"], record["queue"])
    except Exception as exc:
        await jobs.transition(record["id"], "failed", ACTIVE_STATES, finished_at=time.time(),
                              error=queue_failed_message(exc))
        raise Problem(503, "the job queue is not reachable; try again later", slug="queue-unavailable") from exc
