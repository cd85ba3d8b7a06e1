"""Public codec API: ``encode``, ``decode``, ``info`` (re-exported by ``codec``).

This module glues the three parts together: :mod:`codec.volume` (validate the user's array and
map it to the engine's (Z, Y, X) int32 volumes), the neural engine (:mod:`codec.engine`, imported
lazily so that ``import codec`` stays cheap) and the container (:mod:`codec.format`).

What is verified when (see docs/format.md, "Integrity"):

* full decode: CRC-32C of every chunk read, CRC-32C of every decoded slab's voxels, the END
  chunk, and the SHA-256 of all voxels;
* partial decode (``slices=``): CRC-32C of the header chunks, of each slab payload read and of
  each decoded slab's voxels (the SHA-256 needs every voxel, so it is not checked);
* ``info``: CRC-32C of the header chunks and the index only.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from codec import format as fmt
from codec import headers
from codec import volume as vol
from codec.errors import CodecError, FormatError, IntegrityError, TooLargeError, UnsupportedInputError
from codec.profiles import get_profile
from codec.progress import Progress
_HASH_SLICES = 16  # slices per hashing step for constant volumes (bounded temporaries)

#: Default decode limit: the most bytes of decoded voxels a decode produces (override per call
#: with `max_bytes`, or with NVC_MAX_DECODE_BYTES). A constant volume codes to a few bytes
#: whatever its size, so only a limit like this bounds what a small file can make a reader allocate.
DEFAULT_MAX_DECODE_BYTES = 4 * 2**30
MAX_DECODE_BYTES_ENV = "NVC_MAX_DECODE_BYTES"
#: Default of the engine's working memory for the slabs it decodes at once (NVC_DECODE_MEMORY_BYTES):
#: slabs are decoded in batches that fit, and a single slab that does not is refused before the
#: engine allocates for it (a forged row or column count makes every slab huge).
DEFAULT_DECODE_MEMORY_BYTES = 2 * 2**30
DECODE_MEMORY_ENV = "NVC_DECODE_MEMORY_BYTES"
#: Working memory of the engine per voxel of the slabs it decodes at once (its int32 context
#: buffer, wavefront indices and per-step temporaries; measured 7-9 bytes, with margin).
ENGINE_BYTES_PER_VOXEL = 12


def _env_bytes(name: str, default: int) -> int:
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    try:
        value = int(env)
    except ValueError:
        raise CodecError(f"{name}={env!r} is not a number of bytes") from None
    if value <= 0:
        raise CodecError(f"{name} must be positive, not {value}")
    return value


def decode_limit(max_bytes: int | None = None) -> int:
    """The most decoded voxel bytes: `max_bytes`, else NVC_MAX_DECODE_BYTES, else the default."""
    return int(max_bytes) if max_bytes is not None else _env_bytes(MAX_DECODE_BYTES_ENV, DEFAULT_MAX_DECODE_BYTES)


def decode_memory() -> int:
    """The engine's working-memory budget: NVC_DECODE_MEMORY_BYTES, else the default."""
    return _env_bytes(DECODE_MEMORY_ENV, DEFAULT_DECODE_MEMORY_BYTES)


def codec_errors(fn):
    """Let only codec errors escape `fn`: running out of memory becomes a TooLargeError, and the
    libraries' own error types (zlib, struct, nibabel) a FormatError that names them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CodecError:
            raise
        except MemoryError:
            raise TooLargeError(
                f"{fn.__name__}: not enough memory for this volume (raise the memory available, or refuse "
                "larger volumes with a lower decode limit)"
            ) from None
        except (zlib.error, struct.error, EOFError) as exc:
            raise FormatError(f"{fn.__name__}: damaged data ({type(exc).__name__}: {exc})") from None
        except Exception as exc:
            if type(exc).__module__.startswith("nibabel"):
                raise UnsupportedInputError(f"{fn.__name__}: NIfTI header refused ({type(exc).__name__}: {exc})") from None
            raise

    return wrapper


def _engine():
    """The neural engine, imported on first use (it pulls in torch)."""
    from codec import engine

    return engine


# --------------------------------------------------------------------------- encode


def _bytes_arg(value, name: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise UnsupportedInputError(f"{name} must be bytes, got {type(value).__name__}")


def _sub_progress(progress: Progress, start: float, width: float) -> Progress:
    if progress is None:
        return None

    def report(fraction: float) -> None:
        progress(min(1.0, start + width * min(max(float(fraction), 0.0), 1.0)))

    return report


def _check_encoded(enc, z_len: int) -> None:
    """Defend the container against an engine result that does not cover the volume."""
    if len(enc.slabs) != len(enc.payloads) or not enc.slabs:
        raise CodecError(f"engine returned {len(enc.slabs)} slabs and {len(enc.payloads)} payloads")
    z = 0
    for z0, z1 in enc.slabs:
        if z0 != z or z1 <= z0:
            raise CodecError(f"engine returned slabs {enc.slabs} that do not cover [0, {z_len}) in order")
        z = z1
    if z != z_len:
        raise CodecError(f"engine returned slabs {enc.slabs} that do not cover [0, {z_len})")


@codec_errors
def encode(
    volume: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    metadata: bytes = b"",
    profile: str = "default",
    nifti_header: bytes | None = None,
    npy_header: bytes | None = None,
    trailing_bytes: bytes | None = None,
    progress: Progress = None,
) -> bytes:
    """Compress an integer array (NIfTI axis order: (x, y), (x, y, z) or (x, y, z, t)) to ``.nvc`` bytes.

    `spacing`: voxel size per axis (1 to ndim values), stored and returned by :func:`info`.
    `metadata`: opaque user bytes, stored verbatim (CRC-protected).
    `profile`: a coding profile (``codec.profiles.PROFILES``).
    `nifti_header`: the original NIfTI-1/-2 header and extension bytes (everything before the
    voxel data) so that ``decompress_file`` can write the file back exactly; it must describe
    this array's shape and dtype.
    `npy_header`: the original .npy header (magic to data), kept only when ``numpy.save`` would not
    write the same one again. `trailing_bytes`: what the source file held after its voxels (at most
    ``codec.format.MAX_TRAILING_BYTES``), written back after them.
    `progress`: called with the completed fraction in [0, 1].
    """
    array = vol.check_array(volume)
    spacing = vol.check_spacing(spacing, array.ndim)
    metadata = _bytes_arg(metadata, "metadata")
    source_kind = None
    source_header = b""
    if nifti_header is not None and npy_header is not None:
        raise UnsupportedInputError("give a nifti_header or an npy_header, not both")
    if nifti_header is not None:
        source_header = _bytes_arg(nifti_header, "nifti_header")
        source_kind = headers.check_nifti_header(source_header, array)
    elif npy_header is not None:
        raw = _bytes_arg(npy_header, "npy_header")
        headers.check_npy_header(raw, array)
        if raw != headers.npy_header(array.shape, array.dtype):
            source_kind, source_header = "npy", raw
    trailing = _bytes_arg(trailing_bytes, "trailing_bytes")
    headers.check_trailing(len(trailing), "the source file")
    get_profile(profile)  # the one place a profile name is resolved (UnsupportedInputError)
    engine = _engine()

    ranges = [vol.volume_range(v, t) for t, v in vol.iter_volumes(array)]
    dtype = array.dtype
    sha = hashlib.sha256()
    models: list[bytes] = []
    records = []
    n_vol = len(ranges)
    for t, v in vol.iter_volumes(array):
        rng = ranges[t]
        zyx = v.transpose(2, 1, 0)
        z_len = zyx.shape[0]
        if rng.vmin == rng.vmax:  # constant: nothing to code, no model
            for z0 in range(0, z_len, _HASH_SLICES):
                sha.update(vol.canonical_bytes(zyx[z0 : z0 + _HASH_SLICES]))
            records.append((rng.vmin, rng.vmax, rng.base, None, [], []))
            continue
        enc = engine.encode_volume(
            vol.to_engine(v, rng),
            vmin=rng.vmin,
            vmax=rng.vmax,
            profile=profile,
            progress=_sub_progress(progress, t / n_vol, 1 / n_vol),
            consume=True,  # a temporary: its memory holds the symbols
        )
        _check_encoded(enc, z_len)
        blob = bytes(enc.model_blob)
        try:
            model_index = models.index(blob)  # identical blobs (e.g. a shipped model) are stored once
        except ValueError:
            models.append(blob)
            model_index = len(models) - 1
        slabs = []
        for z0, z1 in enc.slabs:
            raw = vol.canonical_bytes(zyx[z0:z1])
            sha.update(raw)
            slabs.append((z0, z1, fmt.crc32c(raw)))
        records.append((rng.vmin, rng.vmax, rng.base, model_index, slabs, [bytes(p) for p in enc.payloads]))
    header = fmt.Header(dtype=dtype, shape=tuple(int(n) for n in array.shape), spacing=spacing, sha256=sha.digest())
    data = fmt.build(header, records, models, metadata=metadata, source_kind=source_kind, source_header=source_header,
                     trailing=trailing)
    if progress is not None:
        progress(1.0)
    return data


# --------------------------------------------------------------------------- decode


@dataclass
class Decoded:
    """Everything a decode returns: the voxels and what the file kept beside them."""

    array: np.ndarray
    spacing: tuple[float, ...] | None
    metadata: bytes
    nifti_header: bytes | None
    source_kind: str | None
    slices: tuple[int, int] | None  # the slice range decoded, None for the whole array
    npy_header: bytes | None = None  # the original .npy header, when it was kept
    trailing_bytes: bytes = b""  # what the source file held after its voxels


def _slice_range(slices, z_len: int, ndim: int) -> tuple[int, int]:
    """Normalise `slices` (range, slice or (start, stop); Python slice semantics) to [a, b)."""
    if isinstance(slices, range):
        if slices.step != 1:
            raise UnsupportedInputError("slices: only a step of 1 is supported")
        sl = slice(slices.start, slices.stop)
    elif isinstance(slices, slice):
        if slices.step not in (None, 1):
            raise UnsupportedInputError("slices: only a step of 1 is supported")
        sl = slices
    elif isinstance(slices, (tuple, list)) and len(slices) == 2:
        try:
            sl = slice(*(None if s is None else operator.index(s) for s in slices))
        except TypeError:
            raise UnsupportedInputError(f"slices: (start, stop) must be integers, got {slices!r}") from None
    else:
        raise UnsupportedInputError(f"slices must be a range, a slice or (start, stop), got {slices!r}")
    a, b, _ = sl.indices(z_len)
    b = max(a, b)
    if ndim == 2 and (a, b) != (0, 1):
        raise UnsupportedInputError("slices: a 2-D image has one slice, slices must select [0, 1)")
    return a, b


def _decode_slabs(engine, container, t, entry, slabs, src, progress):
    payloads = [bytes(fmt.read_slab(src, s)) for s in slabs]
    z, y, x = container.header.volume_shape_zyx
    shapes = [(s.z1 - s.z0, y, x) for s in slabs]
    try:
        arrays = engine.decode_slabs(
            container.models[entry.model], payloads, shapes, vmin=entry.vmin, vmax=entry.vmax, progress=progress
        )
    except CodecError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError, RuntimeError, AssertionError) as exc:
        raise FormatError(f"volume {t}: a slab payload could not be decoded ({type(exc).__name__}: {exc})") from exc
    if len(arrays) != len(slabs):
        raise CodecError(f"engine returned {len(arrays)} arrays for {len(slabs)} slabs")
    for s, shape, arr in zip(slabs, shapes, arrays):
        if tuple(arr.shape) != shape:
            raise CodecError(f"engine returned a slab of shape {arr.shape}, expected {shape}")
    return arrays


def _batches(slabs, plane: int, budget: int, t: int):
    """Split `slabs` into runs the engine decodes at once within `budget` bytes of working memory
    (the result does not depend on the split: slabs are coded independently)."""
    batch: list = []
    used = 0
    for s in slabs:
        cost = (s.z1 - s.z0) * plane * ENGINE_BYTES_PER_VOXEL
        if cost > budget:
            raise TooLargeError(
                f"volume {t}: decoding slices [{s.z0}, {s.z1}) of {plane} voxels each needs about {cost} bytes of "
                f"working memory, more than the {budget} allowed ({DECODE_MEMORY_ENV})"
            )
        if batch and used + cost > budget:
            yield batch
            batch, used = [], 0
        batch.append(s)
        used += cost
    if batch:
        yield batch


def plan_decode(header: fmt.Header, volumes, max_bytes: int, *, memory: int | None = None,
                out_shape: tuple[int, ...] | None = None, z_range: tuple[int, int] | None = None) -> int:
    """Check, from the header and index alone, that a decode stays within its limits: at most
    `max_bytes` of decoded voxels, and every slab within the engine's working memory (`memory`,
    default :func:`decode_memory`). Returns the output bytes.

    Shared by the decoder and the upload check (`codec.check`), so a file the decoder would
    refuse for its size is refused before a job is queued for it."""
    memory = decode_memory() if memory is None else memory
    out_shape = tuple(header.shape) if out_shape is None else out_shape
    a, b = (0, header.volume_shape_zyx[0]) if z_range is None else z_range
    out_bytes = math.prod(out_shape) * header.dtype.itemsize
    if out_bytes > max_bytes:
        raise TooLargeError(
            f"the file declares {out_bytes} bytes of decoded voxels ({header.dtype.name}, shape {out_shape}), more "
            f"than the decode limit of {max_bytes} bytes"
        )
    _, y, x = header.volume_shape_zyx
    for t, entry in enumerate(volumes):
        for _ in _batches([s for s in entry.slabs if s.z1 > a and s.z0 < b], y * x, memory, t):
            pass
    return out_bytes


@codec_errors
def read(data, *, slices=None, progress: Progress = None, max_bytes: int | None = None) -> Decoded:
    """Decode `data` (bytes-like or a seekable binary file) and return voxels plus stored extras.

    With `slices`, only the slabs covering that range of the slice axis (z: the last axis of a
    3-D volume, axis 2 of a 4-D series) are read and decoded, and only those slices returned.

    `max_bytes` (default: :func:`decode_limit`): the most decoded voxel bytes; the engine's working
    memory is bounded by :func:`decode_memory`, slabs being decoded in batches that fit it. Both
    are checked from the header and the index alone, before anything is allocated, so a tiny file
    declaring a huge constant volume, or a forged shape, is a :class:`TooLargeError` at once.
    """
    limit = decode_limit(max_bytes)
    memory = decode_memory()
    container, src = fmt.parse(data)
    header = container.header
    z_len = header.volume_shape_zyx[0]
    full = slices is None
    a, b = (0, z_len) if full else _slice_range(slices, z_len, header.ndim)
    full = full or (a, b) == (0, z_len)
    out_shape = list(header.shape)
    if header.ndim >= 3:
        out_shape[2] = b - a
    plan_decode(header, container.volumes, limit, memory=memory, out_shape=tuple(out_shape), z_range=(a, b))
    _, y, x = header.volume_shape_zyx
    # Every batch is checked against the limit before the engine allocates for it, and the
    # output is allocated only once the first batch has decoded (or a volume is constant), so a
    # small hostile file declaring a huge shape fails in the engine's payload checks first.
    out = None
    engine = None
    sha = hashlib.sha256() if full else None
    n_vol = len(container.volumes)
    for t, entry in enumerate(container.volumes):
        if entry.model is None:
            if out is None:
                out = vol.empty_output(tuple(out_shape), header.dtype)
            out_zyx = vol.output_zyx(out, t)
            value = np.asarray(entry.base + entry.vmin).astype(header.dtype)
            out_zyx[...] = value
            if sha is not None:
                for z0 in range(0, out_zyx.shape[0], _HASH_SLICES):
                    sha.update(vol.canonical_bytes(out_zyx[z0 : z0 + _HASH_SLICES]))
            continue
        needed = [s for s in entry.slabs if s.z1 > a and s.z0 < b]
        if not needed:
            continue
        batches = list(_batches(needed, y * x, memory, t))
        if engine is None:
            engine = _engine()
        done = 0
        for batch in batches:
            start = t / n_vol + done / len(needed) / n_vol
            arrays = _decode_slabs(engine, container, t, entry, batch, src,
                                   _sub_progress(progress, start, len(batch) / len(needed) / n_vol))
            done += len(batch)
            if out is None:
                out = vol.empty_output(tuple(out_shape), header.dtype)
            out_zyx = vol.output_zyx(out, t)
            for s, arr in zip(batch, arrays):
                values = vol.from_engine(np.asarray(arr), entry.base, header.dtype)
                raw = vol.canonical_bytes(values)
                if fmt.crc32c(raw) != s.voxel_crc:
                    raise IntegrityError(
                        f"volume {t}: decoded voxels of slices [{s.z0}, {s.z1}) do not match their CRC-32C "
                        "(corrupted file or a decoder mismatch)"
                    )
                if sha is not None:
                    sha.update(raw)
                lo, hi = max(s.z0, a), min(s.z1, b)
                out_zyx[lo - a : hi - a] = values[lo - s.z0 : hi - s.z0]
                del raw, values
            del arrays
    if out is None:  # nothing to decode: an empty slice range
        out = vol.empty_output(tuple(out_shape), header.dtype)
    if sha is not None:
        fmt.verify_end(src, container)
        if sha.digest() != header.sha256:
            raise IntegrityError("SHA-256 of the decoded voxels does not match the file: the data is corrupted")
    if progress is not None:
        progress(1.0)
    kind = container.source_kind
    return Decoded(
        array=out,
        spacing=header.spacing,
        metadata=container.metadata,
        nifti_header=container.source_header if kind in ("nifti1", "nifti2") else None,
        source_kind=kind,
        slices=None if full else (a, b),
        npy_header=container.source_header if kind == "npy" else None,
        trailing_bytes=container.trailing,
    )


def decode(data, *, slices=None, progress: Progress = None, max_bytes: int | None = None) -> np.ndarray:
    """Decode ``.nvc`` data to the original array (exact dtype, NIfTI axis order).

    `slices`: a range, slice or (start, stop) along the slice axis (last axis of a 3-D volume);
    only the slabs that cover it are decoded. A full decode checks the SHA-256 of all voxels.
    The array is Fortran-ordered (NIfTI's on-disk order, like nibabel's); values and dtype are exact.
    `max_bytes`: the decode limit (see :func:`read`).
    """
    return read(data, slices=slices, progress=progress, max_bytes=max_bytes).array


# --------------------------------------------------------------------------- info


def _describe(blob: bytes) -> dict:
    try:
        engine = _engine()
    except ImportError:  # the container is still readable without the engine
        return {}
    return dict(engine.describe_model(blob))


@codec_errors
def info(data) -> dict:
    """Describe ``.nvc`` data without decoding voxels (reads only the header chunks and index)."""
    container, src = fmt.parse(data)
    h = container.header
    voxels = h.voxels
    sizes = container.chunk_sizes
    payload = sum(s.length for v in container.volumes for s in v.slabs)
    model_bytes = sum(len(m) for m in container.models)
    models = []
    for i, blob in enumerate(container.models):
        d = _describe(blob)
        d["bytes"] = len(blob)
        d["index"] = i
        models.append(d)
    profiles = sorted({m["profile"] for m in models if "profile" in m})
    values = [(v.base + v.vmin, v.base + v.vmax) for v in container.volumes]
    return {
        "format": "nvc",
        "format_version": container.version,
        "dtype": h.dtype.name,
        "byte_order": "big" if h.dtype.byteorder == ">" else "little",
        "shape": list(h.shape),
        "ndim": h.ndim,
        "spacing": list(h.spacing) if h.spacing else None,
        "voxels": voxels,
        "volumes": h.n_volumes,
        "slices": h.volume_shape_zyx[0],
        "value_range": [min(lo for lo, _ in values), max(hi for _, hi in values)],
        "profile": profiles[0] if len(profiles) == 1 else (profiles or None),
        "models": models,
        "slab_count": sum(len(v.slabs) for v in container.volumes),
        "slabs": [[[s.z0, s.z1, s.length] for s in v.slabs] for v in container.volumes],
        "file_bytes": container.file_length,
        "raw_bytes": voxels * h.dtype.itemsize,
        "payload_bytes": payload,
        "model_bytes": model_bytes,
        "metadata_bytes": len(container.metadata),
        "source_header": container.source_kind,
        "source_header_bytes": len(container.source_header),
        "trailing_bytes": len(container.trailing),
        "overhead_bytes": container.file_length - payload - model_bytes - len(container.metadata)
        - len(container.source_header) - len(container.trailing),
        "chunk_bytes": dict(sizes),
        "bits_per_voxel": 8 * container.file_length / voxels,
        "compression_ratio": voxels * h.dtype.itemsize / container.file_length,
        "sha256": h.sha256.hex(),
        "sha256_layout": "voxels in NIfTI order (x fastest, then y, z, t), little-endian, original dtype",
    }


def voxel_sha256(array: np.ndarray) -> str:
    """The SHA-256 that ``info(data)["sha256"]`` reports for `array` (canonical layout, docs/format.md).

    Computed volume by volume and slice block by slice block, so no full copy is made.
    """
    array = vol.check_array(array)
    sha = hashlib.sha256()
    for _, v in vol.iter_volumes(array):
        zyx = v.transpose(2, 1, 0)
        for z0 in range(0, zyx.shape[0], _HASH_SLICES):
            sha.update(vol.canonical_bytes(zyx[z0 : z0 + _HASH_SLICES]))
    return sha.hexdigest()
