"""The `error` text of a failed job: what went wrong, in words a user can act on."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded

from service.errors import time_limit_message
from service.problems import Problem
from worker.artifacts import InputMissing, StorageUnavailable
from worker.runtime import runtime
from worker.verify import VerificationError


def is_codec_error(exc: BaseException) -> bool:
    try:
        import codec

        return isinstance(exc, codec.CodecError)
    except Exception:
        return False


def is_expected(exc: BaseException) -> bool:
    """A failure the job's `error` explains fully (no traceback in the worker's log needed)."""
    return isinstance(exc, (VerificationError, StorageUnavailable, InputMissing)) or is_codec_error(exc)


def describe_failure(exc: BaseException) -> str:
    """The `error` text of a failed job."""
    import codec

    if isinstance(exc, codec.UnsupportedInputError):
        return f"unsupported input: {exc}"
    if isinstance(exc, codec.FormatError):
        return f"not a valid .nvc file: {exc}"
    if isinstance(exc, codec.CodecError):
        return f"codec error: {exc}"
    if isinstance(exc, Problem):  # the upload check of service/validate.py
        return f"unsupported input: {exc.detail}"
    if isinstance(exc, VerificationError):
        return f"verification failed: {exc}"
    if isinstance(exc, (StorageUnavailable, InputMissing)):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return time_limit_message(runtime().settings)
    if isinstance(exc, MemoryError):
        return "the worker ran out of memory on this volume"
    return f"internal error ({type(exc).__name__}): {exc}"
