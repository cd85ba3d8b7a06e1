"""Slices of a finished job's `.nvc`, decoded slab by slab and kept in a small cache.

The slice routes (app/routes/slices.py) ask this module for one slice or a slice range of a
job. Only the slabs that cover the request are decoded (`codec.read(..., slices=(z0, z1))` of
exactly one slab at a time), so looking at slice 70 of a 140-slice CT decodes one 32-slice
slab, not the volume. Decoded slabs stay in an LRU bounded in bytes, shared by all owners'
jobs of this API process (a key that may not see a job never reaches here: the route checks
ownership first); moving a slider within a slab costs a render, not a decode.

Decoding runs in worker threads, at most `DECODE_CONCURRENCY` at once (it is CPU work that
would otherwise starve the API), and concurrent requests for the same slab wait for one
decode instead of each starting their own. With S3 storage the `.nvc` is fetched once into a
private temporary folder (a few files, least recently used removed first); the local backend
reads the stored file in place.

Which `.nvc`: a compress job's result (`output_key`), or a decompress job's upload
(`input_key`); the job must have succeeded, so the file is one a worker decoded completely
(compress: and matched the SHA-256 of the source voxels).

Decoding happens in the API process (docs/decisions/0005-slices-decoded-by-the-api.md): the
codec, and torch with it, is imported on the first slice request, not when the API starts.
Refusals are `service.problems.Problem`s (404 file missing, 409 no .nvc, 422 unreadable).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from service.problems import Problem

#: Decoded slabs kept per API process (bytes of voxels).
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
#: Slab decodes running at once per API process.
DECODE_CONCURRENCY = 1
#: Fetched `.nvc` files kept per API process (S3 storage only).
FILES_KEPT = 4
#: Most slices one range request may ask for (the answer is built in memory).
MAX_RANGE_SLICES = 256


@dataclass(frozen=True)
class VolumeInfo:
    """What the routes need to know about a job's `.nvc` without decoding it."""

    shape: tuple[int, ...]  # NIfTI order (x, y[, z[, t]])
    dtype: str
    spacing: tuple[float, ...] | None
    slabs: tuple[tuple[int, int], ...]  # [z0, z1) of each slab (the same in every coded volume)
    nifti_header: bytes | None
    sha256: str  # of the .nvc file: names every rendering of it (ETag)
    part: int = 0  # DICOM archives: which coded volume (DVOL chunk) of the archive; 0 otherwise
    parts: int = 1  # DICOM archives: coded volumes in the archive
    dicom_chunk: int | None = None  # DICOM archives: the index's chunk number of that volume
    series: dict[str, Any] | None = None  # DICOM archives: modality, description, uid of its series

    @property
    def depth(self) -> int:
        return self.shape[2] if len(self.shape) >= 3 else 1

    def slab_of(self, z: int) -> tuple[int, int]:
        for z0, z1 in self.slabs:
            if z0 <= z < z1:
                return z0, z1
        return 0, self.depth  # constant volumes have no slabs: one "slab" costs no decoding

    def position_mm(self, z: int) -> float | None:
        """Distance of slice z from slice 0 along the slice axis, in mm (None without spacing)."""
        if not self.spacing or len(self.spacing) < 3:
            return None
        return z * float(self.spacing[2])


def nvc_key(record: dict[str, Any]) -> str | None:
    """The storage key of the job's .nvc: a compress result or a decompress upload."""
    if record.get("kind") == "compress":
        return record.get("output_key")
    if record.get("kind") == "decompress":
        return record.get("input_key")
    return None


def nvc_sha256(record: dict[str, Any]) -> str:
    return (record.get("output_sha256") if record.get("kind") == "compress" else record.get("input_sha256")) or ""


class SliceCache:
    """Per-process cache of job volume descriptions, fetched files and decoded slabs."""

    def __init__(self, storage, max_bytes: int = DEFAULT_CACHE_BYTES, concurrency: int = DECODE_CONCURRENCY):
        self.storage = storage
        self.max_bytes = max_bytes
        self._slabs: OrderedDict[tuple[str, int, int], Any] = OrderedDict()  # (job, part, z0) -> (x, y, n[, t])
        self._bytes = 0
        self._infos: OrderedDict[tuple[str, int], VolumeInfo] = OrderedDict()
        self._files: OrderedDict[str, Path] = OrderedDict()
        self._locks: dict[tuple[str, Any], asyncio.Lock] = {}
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._folder: Path | None = None
        #: Slabs decoded so far (not served from the cache): the tests' and /metrics' count.
        self.slabs_decoded = 0

    # ---------------------------------------------------------------- files

    async def _path(self, job_id: str, key: str) -> Path:
        """A local path of the job's .nvc: the stored file itself, or a fetched copy."""
        from service.storage import ObjectNotFound

        try:
            local = await anyio.to_thread.run_sync(self.storage.local_path, key)
            if local is not None:
                if not local.is_file():
                    raise ObjectNotFound(key)
                return local
            if job_id in self._files and self._files[job_id].is_file():
                self._files.move_to_end(job_id)
                return self._files[job_id]
            async with self._lock(("file", job_id)):
                if job_id in self._files and self._files[job_id].is_file():
                    return self._files[job_id]
                if self._folder is None:
                    self._folder = Path(tempfile.mkdtemp(prefix="nvc-slices-"))
                path = self._folder / f"{job_id}.nvc"
                await anyio.to_thread.run_sync(self.storage.get_file, key, path)
                self._files[job_id] = path
                while len(self._files) > FILES_KEPT:
                    _, old = self._files.popitem(last=False)
                    old.unlink(missing_ok=True)
                return path
        except ObjectNotFound:
            raise Problem(
                404, f"the .nvc of job {job_id} is missing from object storage (removed outside the service)",
                slug="result-missing",
            ) from None

    def _lock(self, key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _release(self, key) -> None:
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    # ---------------------------------------------------------------- describe

    async def info(self, job_id: str, record: dict[str, Any], part: int = 0) -> VolumeInfo:
        """Shape, slabs, spacing and NIfTI header of the job's .nvc (read from its header only).

        A DICOM series archive (format version 2) holds one coded volume per stack of slices
        of a series; `part` chooses it (its own complete version-1 `.nvc` inside the archive)."""
        cached = self._infos.get((job_id, part))
        if cached is not None:
            self._infos.move_to_end((job_id, part))
            return cached
        key = nvc_key(record)
        if not key:
            raise Problem(409, f"job {job_id} has no .nvc file", slug="no-nvc")
        path = await self._path(job_id, key)

        def describe() -> VolumeInfo:
            from codec import format as fmt
            from codec.errors import CodecError

            extra: dict[str, Any] = {}
            try:
                with open(path, "rb") as f:
                    if is_archive(f.read(16)):
                        blob, extra = _archive_volume(f, job_id, part)
                        container, _ = fmt.parse(blob)
                    else:
                        if part:
                            raise Problem(422, f"volume {part} is out of range: the .nvc of job {job_id} is one "
                                          "volume (use volume= of a 4-D series' time points)", slug="slice-out-of-range")
                        f.seek(0)
                        container, _ = fmt.parse(f)
            except (CodecError, OSError, ImportError) as exc:
                raise Problem(422, f"the .nvc of job {job_id} cannot be read: {exc}", slug="invalid-nvc") from None
            h = container.header
            coded = [v for v in container.volumes if v.slabs]  # every coded volume has the same slab bounds
            slabs = tuple((s.z0, s.z1) for s in coded[0].slabs) if coded else ()
            return VolumeInfo(
                shape=tuple(int(n) for n in h.shape), dtype=h.dtype.name, spacing=h.spacing, slabs=slabs,
                nifti_header=container.source_header if container.source_kind else None, sha256=nvc_sha256(record),
                **extra,
            )

        info = await anyio.to_thread.run_sync(describe)
        self._infos[(job_id, part)] = info
        while len(self._infos) > 256:
            self._infos.popitem(last=False)
        return info

    # ---------------------------------------------------------------- decode

    async def slab(self, job_id: str, record: dict[str, Any], info: VolumeInfo, z: int):
        """The decoded slab holding slice z: (array (x, y, n[, t]), z0)."""
        z0, z1 = info.slab_of(z)
        key = (job_id, info.part, z0)
        if key in self._slabs:
            self._slabs.move_to_end(key)
            return self._slabs[key], z0
        lock_key = ("slab", key)
        try:
            async with self._lock(lock_key):
                if key in self._slabs:  # decoded by the request we waited for
                    self._slabs.move_to_end(key)
                    return self._slabs[key], z0
                path = await self._path(job_id, nvc_key(record) or "")

                def decode():
                    from codec.api import read
                    from codec.errors import CodecError

                    try:
                        with open(path, "rb") as f:
                            if info.dicom_chunk is None:
                                return read(f, slices=(z0, z1)).array
                            blob, _ = _archive_volume(f, job_id, info.part)
                        return read(blob, slices=(z0, z1)).array
                    except CodecError as exc:
                        raise Problem(422, f"the .nvc of job {job_id} cannot be decoded: {exc}",
                                      slug="invalid-nvc") from None

                array = await anyio.to_thread.run_sync(decode, limiter=self._limiter)
                self.slabs_decoded += 1
                self._remember(key, array)
                return array, z0
        finally:
            self._release(lock_key)

    def _remember(self, key, array) -> None:
        self._slabs[key] = array
        self._bytes += array.nbytes
        while self._bytes > self.max_bytes and len(self._slabs) > 1:
            _, old = self._slabs.popitem(last=False)
            self._bytes -= old.nbytes

    async def slice(self, job_id: str, record: dict[str, Any], info: VolumeInfo, z: int, volume: int = 0):
        """The 2-D (x, y) stored values of slice z of the given volume."""
        array, z0 = await self.slab(job_id, record, info, z)
        if array.ndim == 2:
            return array
        return array[:, :, z - z0] if array.ndim == 3 else array[:, :, z - z0, volume]

    async def slice_range(self, job_id: str, record: dict[str, Any], info: VolumeInfo, start: int, stop: int,
                          volume: int = 0):
        """Stored values of slices [start, stop) of the given volume, (x, y, n), Fortran order like codec.decode."""
        import numpy as np

        parts = []
        z = start
        while z < stop:
            array, z0 = await self.slab(job_id, record, info, z)
            z1 = z0 + (array.shape[2] if array.ndim >= 3 else 1)
            hi = min(stop, z1)
            part = array if array.ndim == 2 else array[:, :, z - z0 : hi - z0]
            if part.ndim == 4:
                part = part[..., volume]
            parts.append(part if part.ndim == 3 else part[:, :, None])
            z = hi
        return np.asfortranarray(np.concatenate(parts, axis=2))

    def forget(self, job_id: str) -> None:
        """Drop everything cached for a job (its objects were deleted)."""
        for key in [k for k in self._infos if k[0] == job_id]:
            del self._infos[key]
        for key in [k for k in self._slabs if k[0] == job_id]:
            self._bytes -= self._slabs.pop(key).nbytes
        path = self._files.pop(job_id, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._slabs.clear()
        self._infos.clear()
        self._files.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def is_archive(head: bytes) -> bool:
    """Whether a file's first bytes are a DICOM series archive's (format version 2)."""
    from codec.dicom_archive import is_archive as archive_preamble

    return archive_preamble(head)


def _archive_volume(f, job_id: str, part: int) -> tuple[bytes, dict[str, Any]]:
    """The complete version-1 `.nvc` of coded volume `part` of a DICOM archive, and what the
    slice routes say about it (its series' modality and description, never patient data)."""
    from codec import dicom
    from codec import format as fmt

    f.seek(0)
    index = dicom.open_archive(f)
    if not 0 <= part < len(index.volumes):
        raise Problem(422, f"volume {part} is out of range: the DICOM archive of job {job_id} holds "
                      f"{len(index.volumes)} coded volume(s) (0..{len(index.volumes) - 1})", slug="slice-out-of-range")
    volume = index.volumes[part]
    if volume.get("split16"):
        raise Problem(422, f"volume {part} of job {job_id} holds 32-bit values coded as 16-bit halves; it has no "
                      "slice preview (download the result)", slug="no-preview")
    series = index.series[volume["series"]]
    blob = index.archive.read(volume["chunk"], fmt.TAG_DICOM_VOLUME)
    return blob, {
        "part": part, "parts": len(index.volumes), "dicom_chunk": volume["chunk"],
        "series": {"modality": series.get("modality"), "description": series.get("description"),
                   "uid": series.get("uid")},
    }
