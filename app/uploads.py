"""Stream an upload (multipart field `file`, or the raw request body) into object storage.

Why not FastAPI's `UploadFile`: Starlette spools a multipart file to a temporary file before
the handler runs, which doubles disk I/O and happens before we can check size limits or
sniff the format. Here the body is read chunk by chunk from the socket, fed through
python-multipart's streaming parser when it is multipart, hashed, and written to the storage
backend in batches of about 1 MiB (an S3 writer holds at most one part). The API process
never holds a whole scan in memory.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.problems import Problem
from service.storage import Storage, Writer

BATCH_BYTES = 1024 * 1024
HEAD_BYTES = 352  # enough for a NIfTI-1 header + magic, a NIfTI-2 magic, an .npy magic
MAX_FIELD_BYTES = 64 * 1024
FILE_FIELD = "file"


@dataclass
class Upload:
    """What was received: size, hash, first bytes and the other form fields."""

    size: int = 0
    sha256: str = ""
    filename: str | None = None
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)
    volume: Any = None  # service.validate.VolumeInfo when a validator was given


def sniff_volume(head: bytes) -> str | None:
    """Format of an uploaded volume from its first bytes: 'nii.gz', 'nii', 'npy' or None
    (the magic numbers are the codec's, `codec.headers.sniff`)."""
    from codec.headers import sniff

    return {"gzip": "nii.gz", "nii": "nii", "npy": "npy"}.get(sniff(head) or "")


class _Sink:
    """Hash, count, limit and batch bytes on their way to a storage writer (and through the
    upload validator, in the same worker thread as the write: it may inflate gzip data)."""

    def __init__(self, writer: Writer, max_bytes: int, check_head, validator=None, on_batch=None):
        self.writer = writer
        self.validator = validator
        self.on_batch = on_batch
        self.max_bytes = max_bytes
        self.check_head = check_head
        self.hash = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.head_checked = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise Problem(413, f"upload is larger than the limit of {self.max_bytes} bytes", slug="too-large")
        self.hash.update(data)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
            if len(self.head) >= HEAD_BYTES and not self.head_checked:
                self.head_checked = True
                self.check_head(bytes(self.head))
        self.pending.append(data)
        self.pending_bytes += len(data)

    async def flush(self, force: bool = False) -> None:
        if self.pending and (force or self.pending_bytes >= BATCH_BYTES):
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
            await anyio.to_thread.run_sync(self._write, data)
            if self.on_batch is not None:
                await self.on_batch()

    def _write(self, data: bytes) -> None:
        if self.validator is not None:
            self.validator.feed(data)  # raises a Problem: the upload is refused before it is stored whole
        self.writer.write(data)

    async def finish(self) -> Any:
        """Flush the rest; returns what the validator learned (None without one)."""
        await self.flush(force=True)
        if not self.head_checked:
            self.head_checked = True
            self.check_head(bytes(self.head))
        if self.validator is not None:
            return await anyio.to_thread.run_sync(self.validator.finish)
        return None


async def receive_upload(
    request: Request, storage: Storage, key: str, max_bytes: int, check_head, validator=None, on_batch=None
) -> Upload:
    """Read the request body into `storage` under `key`.

    `check_head(first_bytes)` is called once the first bytes are in (or at the end for a
    tiny body) and may raise a Problem to refuse the upload early. `validator` (see
    service/validate.py) sees every byte of the file before it is written and may refuse it;
    `on_batch()` is awaited after each batch written (e.g. to keep a reservation alive). On
    any failure the partial object is removed and the exception propagates.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + 64 * 1024:
        raise Problem(413, f"upload is larger than the limit of {max_bytes} bytes", slug="too-large")

    content_type = request.headers.get("content-type", "")
    ctype, options = parse_options_header(content_type)
    writer = await anyio.to_thread.run_sync(storage.open_writer, key)
    sink = _Sink(writer, max_bytes, check_head, validator, on_batch)
    upload = Upload()
    try:
        if ctype == b"multipart/form-data":
            await _receive_multipart(request, options, sink, upload)
        else:
            async for chunk in request.stream():
                sink.feed(chunk)
                await sink.flush()
        if sink.size == 0:
            raise Problem(400, "the upload is empty: send the file as multipart field `file` or as the body",
                          slug="empty-upload")
        upload.volume = await sink.finish()
        await anyio.to_thread.run_sync(writer.commit)
    except ClientDisconnect:
        await anyio.to_thread.run_sync(writer.abort)
        raise Problem(400, "the client closed the connection before the upload was complete", slug="incomplete-upload")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.abort)
        raise
    upload.size = sink.size
    upload.sha256 = sink.hash.hexdigest()
    upload.head = bytes(sink.head)
    return upload


class _SinkStream(io.RawIOBase):
    """A write-only, unseekable stream into the sink (zipfile then writes data descriptors)."""

    def __init__(self, sink: _Sink):
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sink.feed(bytes(data))
        return len(data)


class _ZipParts:
    """Many DICOM files in one multipart upload become one zip in storage, written as the parts
    stream in (stored, not deflated: DICOM pixels barely deflate and the worker reads it once)."""

    def __init__(self, sink: _Sink):
        self.zip = zipfile.ZipFile(_SinkStream(sink), "w", zipfile.ZIP_STORED, allowZip64=True)
        self.member = None
        self.names: set[str] = set()

    def _name(self, filename: str | None) -> str:
        from codec.dicom_inputs import safe_name
        from codec.errors import UnsupportedInputError

        raw = (filename or "file.dcm").replace("\\", "/").lstrip("/")
        try:
            name = safe_name(raw)
        except UnsupportedInputError:
            name = safe_name(re.split(r"[\\/]", raw)[-1] or "file.dcm")
        base, n = name, 1
        while name in self.names:
            n += 1
            name = f"{base}~{n}"
        self.names.add(name)
        return name

    def begin(self, filename: str | None) -> None:
        info = zipfile.ZipInfo(self._name(filename), date_time=(1980, 1, 1, 0, 0, 0))
        self.member = self.zip.open(info, "w", force_zip64=True)

    def data(self, data: bytes) -> None:
        self.member.write(data)

    def end(self) -> None:
        if self.member is not None:
            self.member.close()
            self.member = None

    def close(self) -> None:
        self.end()
        self.zip.close()


def _is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


async def _receive_multipart(request: Request, options: dict, sink: _Sink, upload: Upload) -> None:
    """Fields and the `file` part; several `file` parts are accepted when they are DICOM files
    (the first one has the DICM preamble): they are written as one zip (`_ZipParts`)."""
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem(400, "multipart/form-data without a boundary", slug="bad-multipart")

    part: dict = {}
    files_seen = 0
    mode: dict[str, Any] = {"zip": None, "decided": False, "pending": bytearray()}

    def decide() -> None:
        mode["decided"] = True
        pending = bytes(mode["pending"])
        mode["pending"] = bytearray()
        if _is_dicom_head(pending):
            mode["zip"] = _ZipParts(sink)
            mode["zip"].begin(mode["first_name"])
            mode["zip"].data(pending)
            top = (mode["first_name"] or "").replace("\\", "/").lstrip("/").split("/")
            upload.filename = f"{top[0]}.zip" if len(top) > 1 and top[0] else "series.zip"
        elif pending:
            sink.feed(pending)

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, name=None, filename=None, value=bytearray(), header_field=b"", header_value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["header_value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["header_field"].lower()] = part["header_value"]
        part["header_field"] = b""
        part["header_value"] = b""

    def on_headers_finished() -> None:
        nonlocal files_seen
        disposition, params = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = params.get(b"name")
        part["name"] = name.decode("utf-8", "replace") if name is not None else None
        filename = params.get(b"filename")
        part["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        if part["name"] == FILE_FIELD:
            files_seen += 1
            if files_seen == 1:
                upload.filename = part["filename"]
                mode["first_name"] = part["filename"]
            elif mode["zip"] is not None:
                mode["zip"].begin(part["filename"])
            else:
                raise Problem(400, "send exactly one file in field `file` (several only when they are DICOM files)",
                              slug="bad-multipart")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part["name"] == FILE_FIELD:
            if not mode["decided"]:
                mode["pending"] += data[start:end]
                if len(mode["pending"]) >= 132:
                    decide()
            elif mode["zip"] is not None:
                mode["zip"].data(data[start:end])
            else:
                sink.feed(data[start:end])
        else:
            part["value"] += data[start:end]
            if len(part["value"]) > MAX_FIELD_BYTES:
                raise Problem(400, f"form field {part['name']!r} is too long", slug="bad-multipart")

    def on_part_end() -> None:
        if part.get("name") == FILE_FIELD:
            if not mode["decided"]:
                decide()
            if mode["zip"] is not None:
                mode["zip"].end()
        elif part.get("name"):
            upload.fields[part["name"]] = part["value"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await sink.flush()
        parser.finalize()
        if mode["zip"] is not None:
            mode["zip"].close()
    except Problem:
        raise
    except ClientDisconnect:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise Problem(400, f"malformed multipart body: {exc}", slug="bad-multipart") from exc
    if files_seen == 0:
        raise Problem(400, "multipart upload without a `file` field", slug="bad-multipart")
