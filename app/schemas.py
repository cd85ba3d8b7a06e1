"""Response models of the HTTP API (they define openapi/openapi.json)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.jobs import size_facts

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["compress", "decompress"]
OutputFormat = Literal["nii.gz", "nii", "npy", "zip"]
TransferSyntax = Literal["jpegls", "jpeg2000", "htj2k", "explicit-little"]


class DicomSeries(BaseModel):
    """One series of a DICOM job: only what identifies the series, never patient data."""

    modality: str
    series_uid: str
    description: str
    instances: int
    coded: int = Field(description="Instances whose pixels went through the codec.")
    verbatim: int = Field(description="Instances stored as they were (compressed syntaxes, non-images).")
    volumes: list[list[int]] = Field(default_factory=list, description="Shape of each coded volume (columns, rows, planes).")


class VerbatimReason(BaseModel):
    """Why some files of a DICOM job were stored as they were, not coded (the codec's wording)."""

    reason: str = Field(description="e.g. \"compressed transfer syntax (JPEG-LS Lossless Image Compression)\", "
                        "\"not an image (no Pixel Data)\", \"truncated pixel data\", \"not a DICOM file\".")
    files: int = Field(description="Files stored verbatim for this reason.")


class Job(BaseModel):
    """A compression or decompression job, as stored in its Redis record."""

    id: str = Field(description="Job id (32 hex digits).")
    kind: JobKind
    state: JobState = Field(description="queued -> running -> succeeded | failed; queued/running -> cancelled.")
    progress: float = Field(ge=0, le=1, description="Fraction done, 0..1 (1 once succeeded).")
    profile: str | None = Field(default=None, description="Codec profile of compress jobs (`gpu`, the old name of `archive`, is recorded as `archive`).")
    output_format: str | None = Field(default=None, description="Result format: nvc, nii.gz, nii, npy or zip.")
    input_name: str | None = Field(default=None, description="File name of the upload, when known.")
    input_format: str | None = Field(default=None, description="Detected upload format: nii.gz, nii, npy, nvc, "
                                     "dicom (a series) or nvc-dicom (a DICOM archive).")
    input_size: int | None = Field(default=None, description="Upload size in bytes.")
    input_sha256: str | None = Field(default=None, description="SHA-256 of the uploaded bytes.")
    output_name: str | None = Field(default=None, description="File name the result downloads as.")
    output_size: int | None = Field(default=None, description="Result size in bytes (once succeeded).")
    output_sha256: str | None = Field(default=None, description="SHA-256 of the result bytes (also its ETag).")
    voxel_sha256: str | None = Field(default=None, description="SHA-256 of the voxels, as the codec reports it.")
    bits_per_voxel: float | None = Field(default=None, description="Size of the coded voxels in bits per voxel.")
    raw_bytes: int | None = Field(default=None, description="Bytes of the voxels as stored integers (shape x dtype).")
    ratio: float | None = Field(
        default=None, description="raw_bytes / bytes of the .nvc (the result of a compress job, the upload of a "
        "decompress job): the codec's compression ratio, as `nvc info` reports it.")
    upload_ratio: float | None = Field(
        default=None, description="Compress jobs: bytes of the uploaded file / bytes of the .nvc.")
    shape: list[int] | None = Field(default=None, description="Volume shape (NIfTI axis order).")
    dtype: str | None = Field(default=None, description="Voxel type, e.g. uint16.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, description="When the record and its objects are dropped.")
    worker: str | None = Field(default=None, description="Celery worker that ran the job.")
    device: str | None = Field(default=None, description="Device the codec ran on (cpu, cuda:0 ...).")
    attempts: int = Field(default=0, description="Deliveries so far (more than 1 after a lost worker).")
    codec_seconds: float | None = Field(default=None, description="Time spent in the codec itself.")
    verify_seconds: float | None = Field(default=None, description="Time spent decoding the result to verify it.")
    error: str | None = Field(default=None, description="Why the job failed (state failed).")
    files: int | None = Field(default=None, description="DICOM jobs: files in the series upload or archive.")
    instances_coded: int | None = Field(default=None, description="DICOM jobs: instances coded by NVC.")
    files_verbatim: int | None = Field(default=None, description="DICOM jobs: files stored verbatim.")
    verbatim_reasons: list[VerbatimReason] | None = Field(
        default=None, description="DICOM jobs: why files were stored verbatim, most frequent first.")
    series: list[DicomSeries] | None = Field(default=None, description="DICOM jobs: the series (modality, UIDs, "
                                             "description, counts, dimensions).")
    transfer_syntax: str | None = Field(default=None, description="DICOM decompress jobs: the export syntax, if any.")
    result_deleted: bool = Field(default=False, description="The result was deleted (DELETE on a finished job).")
    callback_url: str | None = Field(default=None, description="Receives a signed POST when the job ends.")
    notifications: list[dict[str, Any]] | None = Field(
        default=None, description="Deliveries of the job-end notification so far (at, attempt, delivered, outcome).")


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""

    jobs: list[Job]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page.")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def job_from_record(record: dict[str, Any]) -> Job:
    data = {k: v for k, v in record.items() if k in Job.model_fields}
    data.update(size_facts(record))
    for name in ("created_at", "started_at", "finished_at", "expires_at"):
        data[name] = _time(record.get(name))
    return Job(**data)


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str = Field(default="about:blank", description="Problem type URI (urn:nvc:problem:<name>).")
    title: str
    status: int
    detail: str = Field(description="Human-readable explanation of this occurrence.")
    instance: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unready"]
    checks: dict[str, str] = Field(description="Each dependency: `ok` or why it is not.")
