"""The NVC Python SDK: a thin, typed, retrying HTTP client for the NVC service.

Install with ``pip install "nvc[client]"`` (httpx and pydantic only). Importing this package
imports neither torch, numpy, the codec nor the server stack; verification of results
decodes locally only when the ``codec`` extra happens to be installed.

    from nvc.sdk import Client
    with Client("http://127.0.0.1:8000") as nvc:
        job = nvc.wait(nvc.compress("scan.nii.gz"), timeout=600)
        nvc.download(job, "scan.nvc")
        nvc.slice(job, 40, window="soft_tissue").save("slice40.png")   # one slab decoded

``AsyncClient`` offers the same methods as coroutines (``compress_many`` is an async iterator).
"""

from nvc.sdk.async_client import AsyncClient
from nvc.sdk.client import Client
from nvc.sdk.errors import (
    APIError,
    AuthenticationError,
    DirectUploadError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    NVCConnectionError,
    NVCError,
    RateLimitError,
    ServiceUnavailableError,
    VerificationError,
    WaitTimeoutError,
)
from nvc.sdk.models import BatchResult, Job, JobState, Problem, ProgressEvent, SliceImage
from nvc.sdk.retry import NO_RETRY, RetryPolicy

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BatchResult",
    "Client",
    "DirectUploadError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobState",
    "NO_RETRY",
    "NVCConnectionError",
    "NVCError",
    "NotFoundError",
    "Problem",
    "ProgressEvent",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "SliceImage",
    "VerificationError",
    "WaitTimeoutError",
]
