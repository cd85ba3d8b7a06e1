"""Direct-to-storage uploads from the SDK: large files go straight to the server's S3 store in
parts through presigned URLs (``POST /uploads``), then the job is submitted with the upload id.

Used automatically by ``compress``/``decompress`` (and so by ``nvc remote``) for files of at least
``direct_upload_bytes`` (64 MiB by default) when the server stores files in S3; a server with
local storage answers 409 and the file is streamed through the API as before. Each part is
retried on its own (a broken connection costs one part, not the upload); an upload that fails
anyway raises ``DirectUploadError`` carrying its ``upload_id``, and passing that id back
(``compress(path, resume_upload=ID)``) uploads only the parts the store does not have yet.

Written as plans (``nvc.sdk._core``), so the sync and async clients share it.
"""

from __future__ import annotations

from typing import Any

from nvc.sdk import _base
from nvc.sdk.errors import DirectUploadError, NVCError

#: Statuses of ``POST /uploads`` that mean "this server does not take direct uploads": stream instead.
UNAVAILABLE = (404, 405, 409, 501)


def _read_part(upload: _base.UploadSource, offset: int, size: int) -> bytes:
    if upload.data is not None:
        return upload.data[offset: offset + size]
    assert upload.path is not None
    with upload.path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def plan_submit_direct(core: Any, endpoint: str, upload: _base.UploadSource, params: dict[str, str],
                       key: str, resume: str | None = None):
    """Upload ``upload`` in parts straight to storage and submit it to ``endpoint``; returns the
    job, or None when the server does not take direct uploads (the caller streams instead)."""
    kind = endpoint.strip("/")
    if resume is None:
        response = yield from core.plan_send(
            "POST", "/uploads", json_body={"kind": kind, "size": upload.size, "filename": upload.filename})
        if response.status_code in UNAVAILABLE:
            return None
        _base.raise_for_response(response)
    else:
        response = yield from core.plan_send("GET", f"/uploads/{resume}")
        _base.raise_for_response(response)
    session = response.json()
    if session["size"] != upload.size:
        raise NVCError(f"upload {session['id']} was started for {session['size']} bytes, the file has {upload.size}")
    for part in session["parts"]:
        data = yield _core_blocking(_read_part, upload, (part["number"] - 1) * session["part_size"], part["size"])
        try:
            stored = yield from core.plan_send("PUT", part["url"], content=data, bare=True)
        except NVCError as exc:
            raise DirectUploadError(f"part {part['number']} of {session['part_count']} could not be stored: {exc}",
                                    session["id"]) from exc
        if stored.status_code >= 400:
            raise DirectUploadError(f"the store refused part {part['number']} (HTTP {stored.status_code}: "
                                    f"{stored.text[:200]})", session["id"])
    response = yield from core.plan_send("POST", endpoint, params={**params, "upload_id": session["id"]},
                                         headers={"Idempotency-Key": key})
    return _base.parse_job(response)


def _core_blocking(fn, *args):
    from nvc.sdk._core import Blocking

    return Blocking(fn, *args)


__all__ = ["DirectUploadError", "plan_submit_direct"]
