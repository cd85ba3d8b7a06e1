"""Direct-to-storage uploads: a multi-GB scan goes from the client straight into S3, in parts,
through presigned URLs; the API only hands out URLs and checks the stored object's header.

Why: a streamed upload passes every byte through an API process (CPU, network, a request held
open for minutes); with S3 storage the store can take the bytes itself, in parallel, and a
broken connection costs one part, not the upload.

Life of a direct upload (all refusals are `service.problems.Problem`s):
1. `start` (POST /uploads): the job id is chosen now; an S3 multipart upload is created at the
   job's input key; a session record (owner, kind, size, file name, S3 upload id) is kept in
   Redis for NVC_DIRECT_UPLOAD_SECONDS; the client gets one presigned PUT URL per part.
2. The client PUTs the parts (any order, any parallelism, retried per part).
   `status` (GET /uploads/{id}) lists the parts stored so far, with fresh URLs for the rest: a
   client that was interrupted resumes from there.
3. `finish` (POST /compress or /decompress with `upload_id`): every part must be stored and the
   sizes must add up to the declared size; the multipart upload is completed, then the head of
   the stored object is read with ranged GETs (at most HEAD_LIMIT bytes, never the whole object)
   and fed to the same validator a streamed upload goes through (`service.validate`): format,
   header, dtype, declared volume size against NVC_MAX_VOLUME_BYTES, and for .nii/.npy the file
   size the header implies. The worker checks the whole object before the codec reads it, as it
   does for every upload. The session is consumed atomically, so one upload makes one job.
4. `abort` (DELETE /uploads/{id}) drops the parts. Uploads that are neither finished nor aborted
   keep their parts in the bucket until a lifecycle rule removes them (docs/deployment.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import anyio

from service.problems import Problem
from service.settings import Settings
from service.submission import input_key
from service.validate import MAX_NIFTI_HEADER_BYTES, TRAILING_SLACK, VolumeInfo, validator_for

#: S3 allows at most this many parts per multipart upload.
MAX_PARTS = 10_000
#: The header of a stored object is read in pieces of this size ...
HEAD_PIECE = 1024 * 1024
#: ... up to this much (a NIfTI header with extensions may take up to MAX_NIFTI_HEADER_BYTES).
HEAD_LIMIT = MAX_NIFTI_HEADER_BYTES + HEAD_PIECE
KINDS = ("compress", "decompress")


def part_size_for(size: int, min_part: int) -> int:
    """Part size for a `size`-byte upload: NVC_S3_PART_BYTES, larger when the part count would pass
    S3's 10,000 (in whole MiB)."""
    needed = math.ceil(size / MAX_PARTS)
    mib = 1024 * 1024
    return max(min_part, math.ceil(needed / mib) * mib)


@dataclass
class Session:
    id: str
    owner: str
    kind: str
    size: int
    filename: str | None
    s3_upload_id: str
    part_size: int
    expires_at: float

    @property
    def key(self) -> str:
        return input_key(self.id)

    @property
    def part_count(self) -> int:
        return max(1, math.ceil(self.size / self.part_size))

    def part_bytes(self, number: int) -> int:
        """Size of part `number` (1-based): all full but the last."""
        return self.part_size if number < self.part_count else self.size - self.part_size * (self.part_count - 1)

    def to_redis(self) -> dict[str, str]:
        return {"id": self.id, "owner": self.owner, "kind": self.kind, "size": str(self.size),
                "filename": self.filename or "", "s3_upload_id": self.s3_upload_id,
                "part_size": str(self.part_size), "expires_at": repr(self.expires_at)}

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> Session:
        return cls(id=raw["id"], owner=raw["owner"], kind=raw["kind"], size=int(raw["size"]),
                   filename=raw["filename"] or None, s3_upload_id=raw["s3_upload_id"],
                   part_size=int(raw["part_size"]), expires_at=float(raw["expires_at"]))


def check_stored_head(storage, session: Session, max_volume_bytes: int) -> VolumeInfo:
    """Validate the head of the stored object as a streamed upload's would be; read at most HEAD_LIMIT bytes."""
    validator = validator_for(session.kind, max_volume_bytes)
    offset = 0
    while True:
        piece = storage.read_range(session.key, offset, HEAD_PIECE)
        if piece:
            validator.feed(piece)  # raises the upload's 415/422/413 problem
        offset += len(piece)
        found = validator.header_info()
        if found is not None:
            break
        if not piece or offset >= session.size or offset >= HEAD_LIMIT:
            validator.finish()  # says why the header is incomplete (too short, truncated ...)
            raise Problem(422, "the stored upload has no complete header", slug="invalid-input")
    info, implied_size = found
    if implied_size is not None:
        if session.size < implied_size:
            raise Problem(422, f"truncated {info.format} file: its header declares {implied_size} bytes (header + "
                          f"voxels), the upload has {session.size}", slug="invalid-input")
        if session.size > implied_size + TRAILING_SLACK:
            raise Problem(422, f"the file holds {session.size} bytes but its header declares {implied_size} "
                          "(header + voxels): refused", slug="invalid-input")
    return info


class DirectUploads:
    """Direct-upload sessions of one API process (async; blocking S3 calls run in threads)."""

    def __init__(self, redis, storage, settings: Settings):
        self.redis, self.storage, self.settings = redis, storage, settings

    @property
    def available(self) -> bool:
        return hasattr(self.storage, "create_multipart")

    def _key(self, upload_id: str) -> str:
        return f"{self.settings.key_prefix}upload:{upload_id}"

    def _require_s3(self) -> None:
        if not self.available:
            raise Problem(409, "direct uploads need S3 storage (NVC_STORAGE_BACKEND=s3); this service stores "
                          "uploads locally: send the file in the body of POST /compress or /decompress instead",
                          slug="direct-uploads-unavailable")

    async def _urls(self, session: Session, numbers: list[int]) -> list[dict[str, Any]]:
        seconds = max(1, int(session.expires_at - time.time()))

        def presign() -> list[dict[str, Any]]:
            return [{"number": n, "size": session.part_bytes(n),
                     "url": self.storage.presign_part(session.key, session.s3_upload_id, n, seconds)}
                    for n in numbers]

        return await anyio.to_thread.run_sync(presign)

    async def start(self, job_id: str, owner: str, kind: str, size: int, filename: str | None) -> dict[str, Any]:
        self._require_s3()
        if kind not in KINDS:
            raise Problem(422, f"kind must be compress or decompress (got {kind!r})", slug="invalid-request")
        if size <= 0:
            raise Problem(422, "size must be at least 1 byte", slug="invalid-request")
        if size > self.settings.max_upload_bytes:
            raise Problem(413, f"the upload of {size} bytes is larger than the limit of "
                          f"{self.settings.max_upload_bytes} bytes (NVC_MAX_UPLOAD_BYTES)", slug="upload-too-large")
        part_size = part_size_for(size, self.settings.s3_part_bytes)
        s3_id = await anyio.to_thread.run_sync(self.storage.create_multipart, input_key(job_id))
        session = Session(job_id, owner, kind, size, filename, s3_id, part_size,
                          time.time() + self.settings.direct_upload_seconds)
        await self.redis.hset(self._key(job_id), mapping=session.to_redis())
        await self.redis.expire(self._key(job_id), self.settings.direct_upload_seconds)
        return self.describe(session, [], await self._urls(session, list(range(1, session.part_count + 1))))

    def describe(self, session: Session, stored: list[dict], missing: list[dict]) -> dict[str, Any]:
        return {"id": session.id, "kind": session.kind, "size": session.size, "filename": session.filename,
                "part_size": session.part_size, "part_count": session.part_count, "expires_at": session.expires_at,
                "stored": stored, "parts": missing}

    async def get(self, owner: str, upload_id: str) -> Session:
        raw = await self.redis.hgetall(self._key(upload_id))
        if not raw or raw.get("owner") != owner:
            raise Problem(404, f"no upload {upload_id!r} (finished, aborted or expired)", slug="upload-not-found")
        return Session.from_redis(raw)

    async def _stored_parts(self, session: Session) -> list[dict]:
        return await anyio.to_thread.run_sync(self.storage.list_parts, session.key, session.s3_upload_id)

    async def status(self, owner: str, upload_id: str) -> dict[str, Any]:
        """The parts stored so far (right size) and fresh URLs for the others: how a client resumes."""
        self._require_s3()
        session = await self.get(owner, upload_id)
        parts = await self._stored_parts(session)
        good = {p["PartNumber"] for p in parts if p["Size"] == session.part_bytes(p["PartNumber"])}
        stored = [{"number": p["PartNumber"], "size": p["Size"]} for p in parts if p["PartNumber"] in good]
        missing = [n for n in range(1, session.part_count + 1) if n not in good]
        return self.describe(session, stored, await self._urls(session, missing))

    async def finish(self, owner: str, upload_id: str) -> tuple[Session, VolumeInfo]:
        """Complete the upload and check the stored object's header; the session is used up."""
        self._require_s3()
        session = await self.get(owner, upload_id)
        parts = await self._stored_parts(session)
        by_number = {p["PartNumber"]: p for p in parts}
        missing = [n for n in range(1, session.part_count + 1)
                   if n not in by_number or by_number[n]["Size"] != session.part_bytes(n)]
        if missing or len(parts) != session.part_count:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise Problem(409, f"the upload is not complete: parts {shown or 'beyond the declared size'} are "
                          f"missing or of the wrong size (GET /uploads/{upload_id} lists what is stored)",
                          slug="upload-incomplete")
        if not await self.redis.delete(self._key(upload_id)):  # someone else finished it a moment ago
            raise Problem(404, f"no upload {upload_id!r} (finished, aborted or expired)", slug="upload-not-found")
        try:
            await anyio.to_thread.run_sync(self.storage.complete_multipart, session.key, session.s3_upload_id,
                                           [by_number[n] for n in range(1, session.part_count + 1)])
            info = await anyio.to_thread.run_sync(check_stored_head, self.storage, session,
                                                  self.settings.max_volume_bytes)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._drop, session)
            raise
        return session, info

    def _drop(self, session: Session) -> None:
        for step in (lambda: self.storage.abort_multipart(session.key, session.s3_upload_id),
                     lambda: self.storage.delete_prefix(session.key)):
            try:
                step()
            except Exception:  # already completed / already gone
                pass

    async def abort(self, owner: str, upload_id: str) -> None:
        self._require_s3()
        session = await self.get(owner, upload_id)
        await self.redis.delete(self._key(upload_id))
        await anyio.to_thread.run_sync(self._drop, session)
