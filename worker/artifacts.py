"""A job's objects in storage: fetch the input, store the result and read it back, clean up,
and retry storage calls through an outage.

Why retries here: a worker may run a job for minutes, and an object store that is unreachable
for a few seconds meanwhile (a MinIO restart, an S3 hiccup) must not fail it. Outages are
retried with backoff for NVC_STORAGE_RETRY_SECONDS; "no such object" is not an outage and is
never retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.storage import ObjectNotFound, StorageError, job_prefix
from service.validate import validator_for
from worker.runtime import Runtime
from worker.verify import VerificationError

log = logging.getLogger("nvc.worker")
HASH_CHUNK = 16 * 1024 * 1024
#: File name extension the codec expects for each input format.
INPUT_SUFFIX = {"nii.gz": ".nii.gz", "nii": ".nii", "npy": ".npy", "nvc": ".nvc", "dicom": ".dicom", "nvc-dicom": ".nvc"}
T = TypeVar("T")


class StorageUnavailable(Exception):
    """Object storage stayed unreachable for NVC_STORAGE_RETRY_SECONDS."""


class InputMissing(Exception):
    """The job's upload is not in storage any more."""


#: S3 error codes that mean "try again", not "no".
RETRYABLE_S3_CODES = ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError")


def is_outage(exc: BaseException) -> bool:
    """Errors worth retrying: the store is unreachable or overloaded, not 'no such object'."""
    if isinstance(exc, ObjectNotFound) or isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (StorageError, OSError, ConnectionError, TimeoutError)):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is part of the server extra
        return False
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or code in RETRYABLE_S3_CODES
    return isinstance(exc, BotoCoreError)


def with_storage(rt: Runtime, what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run a storage call, retrying outages with backoff for up to NVC_STORAGE_RETRY_SECONDS."""
    deadline = time.monotonic() + rt.settings.storage_retry_seconds
    delay = 0.25
    while True:
        try:
            return fn(*args)
        except Exception as exc:
            if not is_outage(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(
                    f"object storage was unreachable while {what} (retried for "
                    f"{rt.settings.storage_retry_seconds:g} s): {exc}"
                ) from exc
            pause = min(delay, remaining)
            log.warning("storage unreachable while %s (%s); retrying in %.1f s", what, exc, pause)
            time.sleep(pause)
            delay = min(delay * 2, 5.0)


def cleanup(rt: Runtime, job_id: str, prefix: str | None = None) -> None:
    """Delete a job's objects, best effort: an outage here must not hide the job's real outcome
    (the API's orphan sweep removes what is left once the record expires)."""
    try:
        rt.storage.delete_prefix(prefix or job_prefix(job_id))
    except Exception as exc:
        log.warning("job %s: could not delete its objects (%s)", job_id, exc)


def fetch_input(rt: Runtime, record: dict[str, Any], scratch: Path) -> Path:
    """A local path of the input with the extension the codec expects, that stays readable for
    this attempt whatever happens to the stored upload: for local storage a hard link (a copy
    across file systems), so that another attempt finishing the job and deleting the upload
    cannot remove the input under this one; a download otherwise."""
    target = scratch / f"input{INPUT_SUFFIX[record['input_format']]}"
    try:
        in_place = with_storage(rt, "reading the upload", rt.storage.local_path, record["input_key"])
        if in_place is not None:
            try:
                os.link(in_place, target)
            except FileNotFoundError:
                raise ObjectNotFound(record["input_key"]) from None
            except OSError:  # another file system (or no hard links): a private copy
                shutil.copyfile(in_place, target)
        else:
            with_storage(rt, "downloading the upload", rt.storage.get_file, record["input_key"], target)
    except ObjectNotFound:
        raise InputMissing("the uploaded input is missing from storage (deleted or expired)") from None
    return target


def check_upload(rt: Runtime, record: dict[str, Any], src: Path) -> None:
    """Re-check the upload as the API did (format, header, declared size against
    NVC_MAX_VOLUME_BYTES, inflated size against the header) before the codec reads it all."""
    validator = validator_for(record["kind"], rt.settings.max_volume_bytes)
    with open(src, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            validator.feed(chunk)
    validator.finish()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_sha256(rt: Runtime, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in rt.storage.iter_chunks(key):
        digest.update(chunk)
    return digest.hexdigest()


def store_result(rt: Runtime, path: Path, key: str) -> tuple[int, str, float]:
    """Store the verified file at `key`, then read it back from storage: a job succeeds only
    with a result whose stored bytes have the size and SHA-256 of the verified file. Returns
    (size, SHA-256, seconds spent reading back)."""
    sha = sha256_file(path)
    size = with_storage(rt, "storing the result", rt.storage.put_file, key, path)
    start = time.perf_counter()
    stored_size = with_storage(rt, "checking the stored result", rt.storage.size, key)
    stored_sha = with_storage(rt, "reading back the stored result", _stored_sha256, rt, key)
    if stored_size != size or stored_sha != sha:
        raise VerificationError(
            f"the stored result ({stored_size} bytes, sha256 {stored_sha}) differs from the verified file "
            f"({size} bytes, sha256 {sha})"
        )
    return size, sha, time.perf_counter() - start
