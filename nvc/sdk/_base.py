"""Pieces shared by the sync and async clients: upload bodies, headers, response handling.

Kept free of I/O policy so that ``Client`` and ``AsyncClient`` differ only in how they wait.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Union

import httpx

from nvc import __version__
from nvc.sdk.errors import NVCError, error_for_status
from nvc.sdk.models import Job

#: What ``compress``/``decompress`` accept: a path, or the bytes themselves.
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

CHUNK = 1 << 20
DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"nvc-sdk/{__version__}"

#: Output formats ``POST /decompress`` can produce.
DECOMPRESS_FORMATS = ("nii.gz", "nii", "npy")


class UploadSource:
    """A file or a byte string that can be streamed more than once (once per attempt)."""

    def __init__(self, data: Source, filename: str | None = None):
        if isinstance(data, (bytes, bytearray, memoryview)):
            self.path: Path | None = None
            self.data: bytes | None = bytes(data)
            self.size = len(self.data)
            self.filename = filename or "upload.bin"
        else:
            self.path = Path(os.fspath(data))
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no such file")
            self.data = None
            self.size = self.path.stat().st_size
            self.filename = filename or self.path.name

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        if self.data is not None:
            for start in range(0, len(self.data), size):
                yield self.data[start : start + size]
            return
        assert self.path is not None
        with self.path.open("rb") as fh:
            while block := fh.read(size):
                yield block

    async def achunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        import anyio.to_thread

        if self.data is not None:
            for block in self.chunks(size):
                yield block
            return
        assert self.path is not None
        fh = await anyio.to_thread.run_sync(self.path.open, "rb")
        try:
            while block := await anyio.to_thread.run_sync(fh.read, size):
                yield block
        finally:
            fh.close()


def _quote(name: str) -> str:
    return re.sub(r'[\r\n"\\]', "_", name)


class MultipartBody:
    """A ``multipart/form-data`` body with one file part, streamed with a known length.

    Written by hand (instead of httpx's ``files=``) so that the upload is streamed from disk,
    its length is known up front (no chunked encoding) and progress can be reported per chunk.
    """

    def __init__(self, source: UploadSource, *, field: str = "file", fields: dict[str, str] | None = None):
        self.source = source
        self.boundary = uuid.uuid4().hex
        head = b""
        for name, value in (fields or {}).items():
            head += (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n{value}\r\n'
            ).encode()
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{_quote(source.filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self.head = head
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.length = len(self.head) + source.size + len(self.tail)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(self.length),
        }

    def iter(self, on_chunk: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        sent = 0
        yield self.head
        for block in self.source.chunks():
            yield block
            sent += len(block)
            if on_chunk:
                on_chunk(sent, self.source.size)
        yield self.tail

    async def aiter(self, on_chunk: Callable[[int, int], None] | None = None) -> AsyncIterator[bytes]:
        sent = 0
        yield self.head
        async for block in self.source.achunks():
            yield block
            sent += len(block)
            if on_chunk:
                on_chunk(sent, self.source.size)
        yield self.tail


def base_headers(api_key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
        headers["X-API-Key"] = api_key
    headers.update(extra or {})
    return headers


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def job_id(job: Job | str) -> str:
    return job if isinstance(job, str) else job.id


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error response (or a minimal one built from the body)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:300] if response.content else ""
        return {"status": response.status_code, "detail": text or response.reason_phrase}
    if isinstance(body, dict):
        if "detail" in body and not isinstance(body["detail"], str):
            body = dict(body)
            body["detail"] = str(body["detail"])
        return body
    return {"status": response.status_code, "detail": str(body)}


def raise_for_response(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_for_status(
            response.status_code,
            problem_of(response),
            method=response.request.method,
            url=str(response.request.url),
        )


def parse_job(response: httpx.Response) -> Job:
    raise_for_response(response)
    try:
        return Job.model_validate(response.json())
    except ValueError as exc:
        raise NVCError(f"unexpected answer from {response.request.url}: {exc}") from exc


def compress_params(profile: str | None) -> dict[str, str]:
    return {"profile": profile} if profile else {}


#: The preamble of a DICOM series archive (.nvc format version 2): it restores to a zip of files.
ARCHIVE_PREAMBLE = b"\x89NVC\r\n\x1a\n\x02\x00\x00\x00"


def is_dicom_archive(source: Source) -> bool:
    """Whether `source` (a path or bytes) is a DICOM series archive, from its first 12 bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:12]) == ARCHIVE_PREAMBLE
    try:
        with open(os.fspath(source), "rb") as fh:
            return fh.read(12) == ARCHIVE_PREAMBLE
    except OSError:
        return False


def decompress_params(fmt: str | None) -> dict[str, str]:
    if fmt and fmt not in DECOMPRESS_FORMATS:
        raise ValueError(f"format must be one of {', '.join(DECOMPRESS_FORMATS)}, not {fmt!r}")
    return {"format": fmt} if fmt else {}


def compressed_name(source_name: str) -> str:
    """``scan.nii.gz`` -> ``scan.nii.gz.nvc``: the one naming rule (``codec.naming``, which is
    pure string rules: importing it loads none of the codec's engine)."""
    from codec.naming import compressed_name as rule

    return rule(source_name)


def decompressed_name(source_name: str, fmt: str = "nii.gz") -> str:
    """``scan.nii.gz.nvc`` -> ``scan.nii.gz`` (or ``scan.nii``/``scan.npy``), by ``codec.naming``."""
    from codec.naming import decompressed_name as rule

    return rule(source_name, fmt)


def filename_from_disposition(value: str | None) -> str | None:
    if not value:
        return None
    match = re.search(r"filename\*=(?:UTF-8'')?([^;]+)", value, re.I) or re.search(r'filename="?([^";]+)"?', value)
    if not match:
        return None
    from urllib.parse import unquote

    return os.path.basename(unquote(match.group(1).strip())) or None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


class DownloadTarget:
    """Writes a download to ``<dest>.part`` and renames it into place only when complete.

    Hashes as it writes, so checking the job's recorded SHA-256 needs no second read.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.digest = hashlib.sha256()
        self.size = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.part.open("wb")

    def write(self, block: bytes) -> None:
        self.fh.write(block)
        self.digest.update(block)
        self.size += len(block)

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.part, self.dest)

    def abort(self) -> None:
        self.fh.close()
        try:
            self.part.unlink()
        except FileNotFoundError:
            pass

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def resolve_dest(dest: str | os.PathLike[str], job: Job, response: httpx.Response) -> Path:
    """``dest`` itself, or a file inside it named by the server (Content-Disposition) when it is a directory."""
    path = Path(os.fspath(dest))
    if path.is_dir():
        name = job.output_name or filename_from_disposition(response.headers.get("content-disposition"))
        if name:
            name = os.path.basename(name)
        if not name:
            source_name = job.input_name or job.id
            if job.kind == "decompress":
                name = decompressed_name(source_name, job.output_format or "nii.gz")
            else:
                name = compressed_name(source_name)
        return path / name
    return path
