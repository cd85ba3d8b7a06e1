"""Typed results: pydantic models mirroring the service's OpenAPI schema.

Models accept fields they do not know (``extra="allow"``) so that a newer server does not
break an older client; the fields listed here are the ones the SDK relies on.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobState(str, Enum):
    """Life cycle of a job: queued -> running -> succeeded | failed | cancelled."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class Job(BaseModel):
    """A compression or decompression job as ``GET /jobs/{id}`` reports it (schema ``Job``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: Literal["compress", "decompress"] | None = None
    state: JobState
    progress: float = Field(0.0, ge=0.0, le=1.0)
    profile: str | None = None
    output_format: str | None = None
    input_name: str | None = None
    input_format: str | None = None
    input_size: int | None = None
    input_sha256: str | None = None
    output_name: str | None = None
    output_size: int | None = None
    output_sha256: str | None = None
    voxel_sha256: str | None = None
    bits_per_voxel: float | None = None
    shape: list[int] | None = None
    dtype: str | None = None
    #: Receives a signed POST when the job ends; and the delivery attempts so far.
    callback_url: str | None = None
    notifications: list[dict[str, Any]] | None = None
    #: Voxels as stored integers, in bytes (shape x dtype).
    raw_bytes: int | None = None
    #: raw_bytes / the .nvc's bytes: the codec's compression ratio, as ``nvc info`` reports it.
    ratio: float | None = None
    #: Compress jobs: the uploaded file's bytes / the .nvc's bytes.
    upload_ratio: float | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    worker: str | None = None
    device: str | None = None
    attempts: int = 0
    codec_seconds: float | None = None
    verify_seconds: float | None = None
    error: str | None = None
    # DICOM jobs: files, how many instances the codec coded and how many were stored verbatim, the
    # series (modality, UIDs, description, counts, volume shapes), the export syntax
    files: int | None = None
    instances_coded: int | None = None
    files_verbatim: int | None = None
    #: DICOM jobs: why files were stored verbatim, ``[{"reason": ..., "files": n}]``.
    verbatim_reasons: list[dict[str, Any]] | None = None
    series: list[dict[str, Any]] | None = None
    transfer_syntax: str | None = None
    result_deleted: bool = False

    @property
    def done(self) -> bool:
        return self.state.terminal

    @property
    def voxels(self) -> int | None:
        """Number of voxels (product of ``shape``) when the server reported the shape."""
        if not self.shape:
            return None
        count = 1
        for extent in self.shape:
            count *= int(extent)
        return count



class Problem(BaseModel):
    """An RFC 9457 ``application/problem+json`` error document."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    instance: str | None = None


Stage = Literal["hash", "upload", "queued", "running", "download", "verify", "done", "failed"]


class ProgressEvent(BaseModel):
    """One step of one file in a batch, for progress bars.

    ``fraction`` is the progress of the current stage (0..1) when known; ``done``/``total`` are
    bytes for upload and download.
    """

    source: str
    stage: Stage
    fraction: float | None = None
    done: int | None = None
    total: int | None = None
    job: Job | None = None
    message: str | None = None


class BatchResult(BaseModel):
    """The outcome of one file of ``compress_many``/``decompress_many``.

    Failures are results too (``ok=False`` with ``error``), so one bad file does not stop a batch.
    """

    source: Path
    output: Path | None = None
    ok: bool
    job: Job | None = None
    error: str | None = None
    input_bytes: int = 0
    output_bytes: int = 0
    output_sha256: str | None = None
    verified: str | None = None
    seconds: float = 0.0

    @property
    def ratio(self) -> float | None:
        """The job's ``ratio``: raw voxel bytes / .nvc bytes."""
        return self.job.ratio if self.job is not None else None

    @property
    def upload_ratio(self) -> float | None:
        """Compress: this input file's bytes / the .nvc's bytes."""
        if self.job is not None and self.job.kind == "compress" and self.input_bytes and self.output_bytes:
            return self.input_bytes / self.output_bytes
        return None

    def bits_per_voxel(self) -> float | None:
        return self.job.bits_per_voxel if self.job is not None else None

    def summary_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SliceImage(BaseModel):
    """A slice (or a slice range) of a job's volume as the slice routes answer it.

    ``content`` is an 8-bit greyscale PNG (rows = y, columns = x; ``format="png"``) or a
    ``.npy`` file of the stored values (x, y[, n]; exact dtype). The window fields say which
    window rendered the PNG (for ``auto``, the one computed from the slice).
    """

    job_id: str
    z: int | None = Field(None, description="The slice (None for a range).")
    start: int | None = None
    stop: int | None = None
    slice_count: int | None = Field(None, description="Slices in the volume.")
    position_mm: float | None = Field(None, description="Distance of the slice from slice 0 along the slice axis.")
    window_center: float | None = None
    window_width: float | None = None
    media_type: str
    content: bytes

    @property
    def is_png(self) -> bool:
        return self.media_type == "image/png"

    def save(self, path: str | Path) -> Path:
        """Write ``content`` to ``path`` (a .png or .npy file)."""
        target = Path(path)
        target.write_bytes(self.content)
        return target

    def array(self) -> Any:
        """The stored values as a numpy array (``.npy`` answers only; needs numpy)."""
        if self.is_png:
            raise ValueError("this is a rendered PNG; ask for format='npy' to get the stored values")
        import io

        import numpy as np

        return np.load(io.BytesIO(self.content), allow_pickle=False)
