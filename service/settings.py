"""All service configuration in one pydantic-settings object.

Every field is read from an environment variable named ``NVC_`` + the field name in upper
case (``redis_url`` -> ``NVC_REDIS_URL``). The API, the workers and ``nvc serve`` all build
their configuration from this one class, so a variable means the same thing everywhere and
the README table (checked by tests/test_docker_files.py) cannot drift from the code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of the NVC service (API + workers). Defaults run on one machine."""

    model_config = SettingsConfigDict(env_prefix="NVC_", extra="ignore", case_sensitive=False)

    # --- Redis: Celery broker and job records -------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis URL for the Celery broker and job records. Unset: `nvc serve` starts an "
        "embedded Redis; `nvc api`/`nvc worker` refuse to start.",
    )
    key_prefix: str = Field(default="nvc:", description="Prefix of every Redis key holding job records and stats.")
    job_ttl_seconds: int = Field(
        default=7 * 24 * 3600, gt=0, description="How long a job record (and its objects) is kept after its last change."
    )

    # --- object storage -------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = Field(default="local", description="`local` directory or `s3` store.")
    data_dir: Path = Field(
        default=Path("var"), description="Folder for `nvc serve` state (embedded Redis dump, default storage)."
    )
    storage_dir: Path | None = Field(
        default=None, description="Folder of the local storage backend (default: DATA_DIR/objects)."
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint, e.g. http://minio:9000 (unset: AWS).")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="Endpoint used in presigned URLs handed to clients (default: S3_ENDPOINT_URL)."
    )
    s3_bucket: str = Field(default="nvc", description="Bucket holding uploads and results.")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket.")
    s3_region: str = Field(default="us-east-1", description="S3 region name.")
    s3_access_key: str | None = Field(default=None, description="S3 access key id (unset: boto3's default chain).")
    s3_secret_key: str | None = Field(default=None, description="S3 secret access key.")
    s3_create_bucket: bool = Field(default=True, description="Create the bucket at start-up when it is missing.")
    s3_redirect_results: bool = Field(
        default=True, description="GET /jobs/{id}/result answers 307 to a presigned URL instead of streaming."
    )
    s3_presign_seconds: int = Field(default=3600, gt=0, description="Lifetime of presigned result URLs.")
    s3_part_bytes: int = Field(
        default=8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart upload part size (memory per upload)."
    )
    direct_upload_seconds: int = Field(
        default=24 * 3600, gt=0,
        description="How long a direct-to-storage upload (POST /uploads, S3 only) may stay unfinished; its part "
        "URLs are valid this long and GET /uploads/{id} hands out fresh ones.",
    )

    # --- API ------------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=4 * 1024**3, gt=0, description="Largest accepted upload (413 above).")
    slice_cache_bytes: int = Field(
        default=512 * 1024**2, ge=0,
        description="Decoded slabs the API keeps for the slice routes (bytes of voxels; least recently used dropped).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS (empty: CORS off)."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys (`Authorization: Bearer <key>`); when set, or when the key file "
        "exists, every job route needs a key and each key sees only its own jobs.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of SHA-256-hashed API keys managed by `nvc keys create|list|revoke` "
        "(default: DATA_DIR/api-keys.json).",
    )
    max_volume_bytes: int = Field(
        default=1024**3, gt=0,
        description="Largest volume (voxel bytes) an upload may declare in its header, or a .nvc decode to; "
        "larger is a 413 before anything is allocated (a constant volume codes to a few bytes whatever its size).",
    )
    rate_limit_per_minute: int = Field(
        default=1200, ge=0, description="Requests per minute per API key on job routes (429 beyond; 0: no limit)."
    )
    rate_limit_burst: int = Field(default=200, ge=1, description="Requests a key may make at once above the rate.")
    max_active_jobs: int = Field(
        default=64, ge=0, description="Queued plus running jobs per API key (429 beyond; 0: no limit)."
    )
    request_timeout_seconds: float = Field(
        default=120.0, gt=0,
        description="A request must be answered within this time (504), and an upload may stall at most this "
        "long between two chunks (408).",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024,
        description="Largest request line + headers of one request; larger is a 431 and the connection closes "
        "(the bytes are not kept).",
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0,
        description="A connection must send complete request headers within this time (of connecting, or of its "
        "previous response); else it is closed.",
    )
    redis_max_connections: int = Field(
        default=32, ge=4,
        description="Redis connections of one API process (a shared, blocking pool: a burst waits for a free one; "
        "long-polls share a single subscription besides).",
    )
    max_long_polls: int = Field(
        default=1000, ge=1,
        description="`GET /jobs/{id}?wait=` requests waiting at once per API process (they share one Redis "
        "subscription); beyond, a 429 with Retry-After.",
    )
    orphan_sweep_seconds: int = Field(
        default=600, ge=0, description="How often the API deletes stored objects whose job expired (0: never)."
    )

    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names a job's callback_url may point at (`*.example.org` for a domain, "
        "`*` for any); empty: callbacks are refused.",
    )
    callback_allow_private: bool = Field(
        default=False,
        description="Let callbacks reach loopback, private, link-local and other non-public addresses (every address "
        "a callback host resolves to is checked).",
    )
    callback_secret: str | None = Field(
        default=None,
        description="HMAC-SHA256 key that signs callback POSTs (X-NVC-Signature over timestamp + body); unset: a "
        "random key per process, which receivers cannot verify, so set it when callbacks are used.",
    )
    callback_max_attempts: int = Field(
        default=6, ge=1, description="Deliveries of one job-end notification before it is given up.",
    )
    callback_retry_seconds: float = Field(
        default=2.0, gt=0, description="Wait before the first redelivery of a refused notification; doubles each time.",
    )
    callback_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long one callback POST may take.",
    )

    # --- workers --------------------------------------------------------------------------
    gpu_queue: str = Field(default="nvc.gpu", description="Celery queue consumed by GPU workers.")
    cpu_queue: str = Field(default="nvc.cpu", description="Celery queue consumed by CPU-only workers.")
    submit_queue: str | None = Field(
        default=None, description="Queue new jobs go to (default: GPU_QUEUE; CPU-only workers also drain it)."
    )
    work_dir: Path | None = Field(default=None, description="Scratch folder of workers (default: system temp).")
    visibility_timeout_seconds: int = Field(
        default=6 * 3600, gt=0, description="Redis broker visibility timeout: longer than the longest job."
    )
    task_time_limit_seconds: int = Field(default=4 * 3600, gt=0, description="A job running longer fails.")
    max_attempts: int = Field(default=3, ge=1, description="Deliveries of one job before it fails (lost workers).")
    progress_interval_seconds: float = Field(
        default=0.2, ge=0, description="Least time between two progress writes of a running job."
    )
    warmup: bool = Field(default=True, description="Workers code a tiny volume at start-up so the first job is fast.")
    heartbeat_timeout_seconds: float = Field(
        default=120.0, gt=0,
        description="A running job whose worker has not reported for this long is re-queued (or failed after "
        "MAX_ATTEMPTS).",
    )
    watchdog_seconds: float = Field(
        default=15.0, ge=0,
        description="How often the API looks for running jobs with a lost worker or past their time limit (0: never).",
    )
    storage_retry_seconds: float = Field(
        default=60.0, ge=0,
        description="How long a worker retries unreachable object storage before the job fails.",
    )

    @field_validator("cors_origins", "api_keys", "callback_allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_storage_dir(self) -> Path:
        """The local storage folder (STORAGE_DIR, else DATA_DIR/objects)."""
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "objects"

    @property
    def resolved_api_keys_file(self) -> Path:
        """The key file of `nvc keys` (API_KEYS_FILE, else DATA_DIR/api-keys.json)."""
        return self.api_keys_file if self.api_keys_file is not None else self.data_dir / "api-keys.json"

    @property
    def resolved_submit_queue(self) -> str:
        return self.submit_queue or self.gpu_queue


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read from the environment once."""
    return Settings()


def env_names() -> set[str]:
    """Every environment variable the service reads (for docs and compose checks)."""
    return {"NVC_" + name.upper() for name in Settings.model_fields}
