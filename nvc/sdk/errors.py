"""Exceptions raised by the NVC SDK.

Every class name ends in ``Error`` and lives in ``nvc.sdk`` so that the ``nvc`` CLI prints
them as one line (see ``nvc.errors.describe``) instead of a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nvc.sdk.models import Job


class NVCError(Exception):
    """Base class of everything the SDK raises on purpose."""


class NVCConnectionError(NVCError):
    """The server could not be reached (or kept dropping the connection) after all retries."""


class APIError(NVCError):
    """The server answered with an error status; carries the RFC 9457 problem document.

    ``detail`` is the human-readable reason the service gave; ``problem`` the whole document
    (or ``{}`` when the body was not problem+json).
    """

    def __init__(self, status: int, problem: dict[str, Any] | None = None, *, method: str = "", url: str = ""):
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        self.title: str | None = self.problem.get("title")
        self.detail: str | None = self.problem.get("detail")
        self.method = method
        self.url = url
        reason = self.detail or self.title or "no detail given"
        where = f" ({method} {url})" if method else ""
        super().__init__(f"HTTP {status}: {reason}{where}")


class AuthenticationError(APIError):
    """401/403: the API key is missing, unknown or not allowed to do this."""


class NotFoundError(APIError):
    """404: no such job (or its result has expired)."""


class RateLimitError(APIError):
    """429 that was still answered after all retries."""


class ServiceUnavailableError(APIError):
    """503 (or 502/504) that was still answered after all retries."""


class JobFailedError(NVCError):
    """The job ended in ``failed``; ``job.error`` says why."""

    def __init__(self, job: "Job"):
        self.job = job
        super().__init__(f"job {job.id} failed: {job.error or 'no reason given'}")


class JobCancelledError(JobFailedError):
    """The job ended in ``cancelled``."""

    def __init__(self, job: "Job"):
        self.job = job
        NVCError.__init__(self, f"job {job.id} was cancelled")


class WaitTimeoutError(NVCError, TimeoutError):
    """``wait`` gave up before the job reached a final state; ``job`` is its last known state."""

    def __init__(self, job: "Job", timeout: float):
        self.job = job
        self.timeout = timeout
        super().__init__(f"job {job.id} still {job.state.value} after {timeout:g} s")


class BatchStoppedError(NVCError):
    """A batch was abandoned (its consumer stopped, or Ctrl-C) while this file was in flight."""


class DirectUploadError(NVCError):
    """A direct-to-storage upload stopped before its job was submitted; ``upload_id`` resumes it
    (``compress(path, resume_upload=upload_id)`` uploads only the parts still missing)."""

    def __init__(self, message: str, upload_id: str):
        super().__init__(f"{message} (resume with resume_upload={upload_id!r})")
        self.upload_id = upload_id


class VerificationError(NVCError):
    """A downloaded result did not check out (does not decode, differs from its source, or wrong hash)."""


def error_for_status(status: int, problem: dict[str, Any] | None, *, method: str = "", url: str = "") -> APIError:
    """The most specific ``APIError`` subclass for an HTTP status."""
    cls: type[APIError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFoundError
    elif status == 429:
        cls = RateLimitError
    elif status in (502, 503, 504):
        cls = ServiceUnavailableError
    else:
        cls = APIError
    return cls(status, problem, method=method, url=url)
