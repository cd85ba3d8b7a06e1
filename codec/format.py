"""The ``.nvc`` container, format versions 1 and 3 (one array): writer and validating parser.

The byte layout is specified in docs/format.md; this module is its reference implementation.
Design rules that the parser follows, because a ``.nvc`` file may come from anyone:

* every count and length is checked against the bytes actually present *before* anything is
  allocated from it, so a hostile header can never make the reader allocate more than the
  file justifies (the declared voxel count is also capped at :data:`MAX_VOXELS`);
* every chunk carries a CRC-32C that is checked whenever the chunk is read;
* every failure is a :class:`codec.FormatError` (or :class:`codec.IntegrityError` for a checksum
  mismatch) with a message that says what is wrong - never an IndexError or struct.error.

The parser reads through a :class:`Source`, so a caller can decode a few slabs of a large file
(a seekable file object) reading only the header, the index and those slabs.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Sequence

import numpy as np

from codec.errors import FormatError, IntegrityError

try:  # the C implementation; the format requires CRC-32C (Castagnoli), not zlib's CRC-32
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - crc32c is a hard dependency of the codec extra
    _crc32c = None

MAGIC = b"\x89NVC\r\n\x1a\n"
FORMAT_VERSION = 3
#: Versions of a single-volume file this reader can read (see "Compatibility" in docs/format.md;
#: version 2 is a DICOM series archive, read by codec/dicom_archive.py).
READABLE_VERSIONS = (1, 3)
#: Version 3 is version 1 plus the TAIL chunk and the "npy" source kind; a writer marks a file
#: version 3 only when it uses one of them, so every other file stays readable by version-1 readers.
TAIL_VERSION = 3
TAIL_VERSION_SOURCE_KINDS = ("npy",)
#: Hard cap on the voxels one file may declare (all volumes together): 2**31.
MAX_VOXELS = 2**31
#: Largest value span (vmax - vmin) of one coded volume: 16 bits.
MAX_SPAN = 65535
#: Largest TAIL chunk: bytes a source file held after its voxels, kept so a round trip is byte
#: for byte (readers of the source formats refuse files with more, see codec/headers.py).
MAX_TRAILING_BYTES = 2**20
#: Largest MODL chunk (a model blob; shipped models' blobs with embedded weights are far smaller).
MAX_MODEL_BYTES = 64 * 2**20
#: At most this many ancillary (unknown, skippable) chunks before the index.
MAX_ANCILLARY_CHUNKS = 1024

#: Smallest and largest spacing: what a NIfTI header (float32 pixdim) holds as a normal number.
MIN_SPACING = float(np.finfo(np.float32).tiny)
MAX_SPACING = float(np.finfo(np.float32).max)

PREAMBLE = struct.Struct("<8sHH")  # magic, version, flags
CHUNK_HEAD = struct.Struct("<4sQ")  # tag, body length
CRC_SIZE = 4
CHUNK_OVERHEAD = CHUNK_HEAD.size + CRC_SIZE
HEAD_FIXED = struct.Struct("<BBBBI")  # dtype code, byte order, ndim, n_spacing, flags
INDX_FIXED = struct.Struct("<QI")  # file length, volume count
VOLUME_REC = struct.Struct("<ii8sII")  # vmin, vmax, base (raw 8 bytes), model index, slab count
SLAB_REC = struct.Struct("<IIQQII")  # z0, z1, offset, length, voxel crc, reserved
NO_MODEL = 0xFFFFFFFF

TAG_HEAD = b"HEAD"
TAG_META = b"META"
TAG_SRCH = b"SRCH"
TAG_MODL = b"MODL"
TAG_TAIL = b"TAIL"
TAG_INDX = b"INDX"
TAG_SLAB = b"SLAB"
TAG_END = b"END "
#: Chunks that may appear at most once.
SINGLE_CHUNKS = (TAG_META, TAG_SRCH, TAG_TAIL)

# DICOM series archives (docs/format.md section 8): a version-2 file that holds a set of files.
# The coded volumes inside are complete version-1 files; the layout is parsed by codec/dicom_archive.py.
ARCHIVE_VERSION = 2
TAG_DICOM_INDEX = b"DIDX"  # first chunk: zstd-compressed JSON index of files, series, volumes, chunks
TAG_DICOM_VOLUME = b"DVOL"  # one coded pixel volume: a complete version-1 .nvc file
TAG_DICOM_HEADER = b"DHDR"  # zstd frame: one file's bytes other than its pixel values
TAG_DICOM_FILE = b"DFIL"  # zstd frame: one file stored verbatim
#: Limits a reader checks before allocating anything for an archive.
ARCHIVE_MAX_FILES = 1_000_000
ARCHIVE_MAX_NAME_BYTES = 4096
ARCHIVE_MAX_FILE_BYTES = 2**40
ARCHIVE_MAX_INDEX_BYTES = 256 * 2**20  # the index, decompressed

#: dtype codes of the HEAD chunk (kind, itemsize) -> code.
DTYPE_CODES: dict[str, int] = {
    "uint8": 1,
    "int8": 2,
    "uint16": 3,
    "int16": 4,
    "uint32": 5,
    "int32": 6,
    "uint64": 7,
    "int64": 8,
}
_CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
BYTE_ORDER_LITTLE = 0
BYTE_ORDER_BIG = 1

#: Kinds of original file header kept in the SRCH chunk ("npy": only when `numpy.save` would
#: not write the same header again, so most .npy-sourced files stay readable by older readers).
SOURCE_KINDS = {1: "nifti1", 2: "nifti2", 3: "npy"}
_SOURCE_CODES = {v: k for k, v in SOURCE_KINDS.items()}


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, continuing from `value`."""
    if _crc32c is None:  # pragma: no cover
        raise ImportError("the 'crc32c' package is required (pip install crc32c)")
    return _crc32c(data, value)


def spacing_problem(values: tuple[float, ...], *, stored: bool = False) -> str | None:
    """Why `values` is not a valid spacing (None: it is).

    A spacing is a voxel size: finite, positive and a normal float32 (NIfTI stores it so),
    never 0, negative, NaN, infinite or denormal. `stored`: the rule for a file being read,
    which also accepts 0 ("unknown": files compressed before this rule kept a NIfTI pixdim 0).
    """
    for v in values:
        if not math.isfinite(v):
            return f"spacing {values} is not finite"
        if stored and v == 0.0:
            continue
        if not MIN_SPACING <= v <= MAX_SPACING:
            return (f"spacing {values}: each value must be a positive voxel size between {MIN_SPACING:g} and "
                    f"{MAX_SPACING:g} (not 0, negative or denormal)")
    return None


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Header:
    """What the HEAD chunk says about the whole array (NIfTI axis order)."""

    dtype: np.dtype  # exact dtype of the original array, byte order included
    shape: tuple[int, ...]  # (x, y), (x, y, z) or (x, y, z, t)
    spacing: tuple[float, ...] | None
    sha256: bytes  # of the voxels in the canonical layout (docs/format.md)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def volume_shape_zyx(self) -> tuple[int, int, int]:
        """Shape (Z, Y, X) of each coded 3-D volume as the engine sees it."""
        x, y = self.shape[0], self.shape[1]
        z = self.shape[2] if self.ndim >= 3 else 1
        return (z, y, x)

    @property
    def n_volumes(self) -> int:
        return self.shape[3] if self.ndim == 4 else 1

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SlabEntry:
    """One independently decodable slab: slices [z0, z1) of one volume."""

    z0: int
    z1: int
    offset: int  # of the SLAB chunk (its tag) from the start of the file
    length: int  # of the payload (the chunk body)
    voxel_crc: int  # CRC-32C of the slab's voxels in the canonical layout


@dataclass(frozen=True)
class VolumeEntry:
    """Index record of one coded 3-D volume (engine value = original value - base)."""

    vmin: int
    vmax: int
    base: int
    model: int | None  # index into the MODL chunks; None: constant volume (vmin == vmax), no slabs
    slabs: tuple[SlabEntry, ...]


@dataclass
class Container:
    """A parsed file: everything up to and including the index (payloads are read on demand)."""

    version: int
    header: Header
    metadata: bytes
    source_kind: str | None
    source_header: bytes
    models: list[bytes]
    volumes: list[VolumeEntry]
    file_length: int
    index_end: int  # offset of the first SLAB chunk (or of END)
    trailing: bytes = b""  # bytes the source file held after its voxels (TAIL chunk)
    ancillary: list[bytes] = field(default_factory=list)  # tags of skipped ancillary chunks
    chunk_sizes: dict[str, int] = field(default_factory=dict)  # bytes per tag, framing included


# --------------------------------------------------------------------------- sources


class Source:
    """Random access to the bytes of a file, each read bounds-checked."""

    size: int

    def read(self, offset: int, n: int, what: str) -> bytes | memoryview:
        raise NotImplementedError


class BytesSource(Source):
    def __init__(self, data: bytes | bytearray | memoryview):
        self._view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        self.size = len(self._view)

    def read(self, offset: int, n: int, what: str) -> memoryview:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise FormatError(f"truncated file: {what} needs bytes {offset}..{offset + n} but the file has {self.size}")
        return self._view[offset : offset + n]


class FileSource(Source):
    """A seekable binary file object; only the requested ranges are read."""

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        try:
            self._start = fileobj.tell()
            fileobj.seek(0, io.SEEK_END)
            self.size = fileobj.tell() - self._start
        except (OSError, AttributeError, ValueError) as exc:
            raise FormatError(f"cannot read .nvc data from a non-seekable stream: {exc}") from None

    def read(self, offset: int, n: int, what: str) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise FormatError(f"truncated file: {what} needs bytes {offset}..{offset + n} but the file has {self.size}")
        self._f.seek(self._start + offset)
        data = self._f.read(n)
        if len(data) != n:
            raise FormatError(f"truncated file: short read of {what} at offset {offset}")
        return data


def as_source(data) -> Source:
    """Wrap bytes-like data or a seekable binary file object."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return BytesSource(data)
    if hasattr(data, "read") and hasattr(data, "seek"):
        return FileSource(data)
    raise TypeError(f"expected bytes, bytearray, memoryview or a seekable binary file, not {type(data).__name__}")


# --------------------------------------------------------------------------- writer


def _chunk(tag: bytes, body: bytes | memoryview) -> list[bytes | memoryview]:
    head = CHUNK_HEAD.pack(tag, len(body))
    crc = crc32c(body, crc32c(head))
    return [head, body, struct.pack("<I", crc)]


def pack_chunk(tag: bytes, body: bytes | memoryview) -> bytes:
    """One chunk (tag, u64 length, body, CRC-32C) as bytes."""
    return b"".join(_chunk(tag, body))


def _dtype_fields(dtype: np.dtype) -> tuple[int, int]:
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui" or dtype.name not in DTYPE_CODES:
        raise FormatError(f"dtype {dtype} cannot be stored")
    order = BYTE_ORDER_BIG if (dtype.byteorder == ">" or (dtype.byteorder == "=" and not _little())) else BYTE_ORDER_LITTLE
    if dtype.itemsize == 1:
        order = BYTE_ORDER_LITTLE
    return DTYPE_CODES[dtype.name], order


def _little() -> bool:
    import sys

    return sys.byteorder == "little"


def _pack_base(base: int, dtype: np.dtype) -> bytes:
    return struct.pack("<q" if np.dtype(dtype).kind == "i" else "<Q", base)


def pack_head(header: Header) -> bytes:
    code, order = _dtype_fields(header.dtype)
    spacing = header.spacing or ()
    parts = [HEAD_FIXED.pack(code, order, header.ndim, len(spacing), 0)]
    parts.append(struct.pack(f"<{header.ndim}Q", *header.shape))
    parts.append(struct.pack(f"<{len(spacing)}d", *spacing))
    parts.append(header.sha256)
    return b"".join(parts)


def build(
    header: Header,
    volumes: Sequence[tuple[int, int, int, int | None, Sequence[tuple[int, int, int]], Sequence[bytes]]],
    models: Sequence[bytes],
    *,
    metadata: bytes = b"",
    source_kind: str | None = None,
    source_header: bytes = b"",
    trailing: bytes = b"",
    ancillary: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """Assemble a file (version 1, or 3 when it needs a TAIL chunk or an "npy" source header).

    `volumes`: one (vmin, vmax, base, model_index | None, [(z0, z1, voxel_crc)...], [payload...])
    per coded volume, in order. The slab offsets are computed here. `ancillary`: (tag, body)
    chunks placed before the index; tags must start with a lower-case letter. `trailing`: bytes the
    source file held after its voxels, kept in a TAIL chunk (written only when there are some).
    """
    if len(volumes) != header.n_volumes:
        raise FormatError(f"{len(volumes)} volumes given, the header declares {header.n_volumes}")
    version = TAIL_VERSION if trailing or source_kind in TAIL_VERSION_SOURCE_KINDS else 1
    out: list[bytes | memoryview] = [PREAMBLE.pack(MAGIC, version, 0)]
    out += _chunk(TAG_HEAD, pack_head(header))
    if metadata:
        out += _chunk(TAG_META, bytes(metadata))
    if source_kind is not None:
        if source_kind not in _SOURCE_CODES:
            raise FormatError(f"unknown source header kind {source_kind!r}")
        out += _chunk(TAG_SRCH, bytes([_SOURCE_CODES[source_kind]]) + bytes(source_header))
    for blob in models:
        out += _chunk(TAG_MODL, bytes(blob))
    if trailing:
        if len(trailing) > MAX_TRAILING_BYTES:
            raise FormatError(f"{len(trailing)} trailing bytes, more than the {MAX_TRAILING_BYTES} a TAIL chunk holds")
        out += _chunk(TAG_TAIL, bytes(trailing))
    for tag, body in ancillary:
        if len(tag) != 4 or is_critical(tag):
            raise FormatError(f"ancillary chunk tags are 4 bytes starting with a lower-case letter, not {tag!r}")
        out += _chunk(bytes(tag), bytes(body))
    n_slabs = sum(len(v[4]) for v in volumes)
    index_len = INDX_FIXED.size + VOLUME_REC.size * len(volumes) + SLAB_REC.size * n_slabs
    pos = sum(len(p) for p in out) + CHUNK_OVERHEAD + index_len
    vol_recs, slab_recs, payloads = [], [], []
    for vmin, vmax, base, model, slabs, blobs in volumes:
        if len(slabs) != len(blobs):
            raise FormatError("slab/payload count mismatch")
        vol_recs.append(
            VOLUME_REC.pack(vmin, vmax, _pack_base(base, header.dtype), NO_MODEL if model is None else model, len(slabs))
        )
        for (z0, z1, vcrc), blob in zip(slabs, blobs):
            slab_recs.append(SLAB_REC.pack(z0, z1, pos, len(blob), vcrc, 0))
            payloads.append(blob)
            pos += CHUNK_OVERHEAD + len(blob)
    file_length = pos + CHUNK_OVERHEAD
    index = INDX_FIXED.pack(file_length, len(volumes)) + b"".join(vol_recs) + b"".join(slab_recs)
    assert len(index) == index_len
    out += _chunk(TAG_INDX, index)
    for blob in payloads:
        out += _chunk(TAG_SLAB, blob)
    out += _chunk(TAG_END, b"")
    data = b"".join(out)
    assert len(data) == file_length
    return data


# --------------------------------------------------------------------------- parser


def is_critical(tag: bytes) -> bool:
    """A chunk a reader must understand (first byte not lower-case ASCII); others may be skipped."""
    return not (97 <= tag[0] <= 122)


def tag_text(tag: bytes) -> str:
    return tag.decode("ascii", "backslashreplace")




def check_preamble(version: int, flags: int) -> None:
    """FormatError unless this reader reads single-volume files of `version` with preamble `flags`."""
    if version == ARCHIVE_VERSION:
        raise FormatError(
            "this .nvc file is a DICOM series archive, not a single volume: restore it with "
            "`nvc decompress FILE -o DIR` or codec.dicom.decompress_dicom"
        )
    if version not in READABLE_VERSIONS:
        if version > FORMAT_VERSION:
            raise FormatError(f"format version {version} is newer than this reader (reads version {FORMAT_VERSION})")
        raise FormatError(f"unknown format version {version}")
    if flags != 0:
        raise FormatError(f"unknown preamble flags {flags:#x}")


def parse_source(body: bytes | memoryview, version: int = FORMAT_VERSION) -> tuple[str, bytes]:
    """(kind, original header bytes) of a SRCH chunk body in a file of `version`."""
    if len(body) < 1 or body[0] not in SOURCE_KINDS:
        raise FormatError("SRCH chunk: unknown source header kind")
    kind = SOURCE_KINDS[body[0]]
    if version < TAIL_VERSION and kind in TAIL_VERSION_SOURCE_KINDS:
        raise FormatError(f"SRCH chunk: source header kind {kind!r} in a version {version} file")
    return kind, bytes(body[1:])


def check_tail(length: int, version: int) -> None:
    """FormatError unless a TAIL chunk of `length` bytes may appear in a file of `version`."""
    if version < TAIL_VERSION:
        raise FormatError(f"unsupported critical chunk 'TAIL' in a version {version} file")
    if length > MAX_TRAILING_BYTES:
        raise FormatError(f"TAIL chunk of {length} bytes, more than {MAX_TRAILING_BYTES}")


def read_chunk(src: Source, offset: int, *, expect: bytes | None = None) -> tuple[bytes, bytes | memoryview, int]:
    """Read and CRC-check the chunk at `offset`; returns (tag, body, offset of the next chunk)."""
    head = src.read(offset, CHUNK_HEAD.size, "a chunk header")
    tag, length = CHUNK_HEAD.unpack(head)
    if expect is not None and tag != expect:
        raise FormatError(f"expected a {tag_text(expect)} chunk at offset {offset}, found {tag_text(tag)!r}")
    if length > src.size - offset - CHUNK_OVERHEAD:
        raise FormatError(
            f"truncated file: the {tag_text(tag)!r} chunk at offset {offset} declares {length} bytes, "
            f"only {max(0, src.size - offset - CHUNK_OVERHEAD)} are present"
        )
    body = src.read(offset + CHUNK_HEAD.size, length, f"the {tag_text(tag)!r} chunk")
    (stored,) = struct.unpack("<I", src.read(offset + CHUNK_HEAD.size + length, CRC_SIZE, "a chunk CRC"))
    if crc32c(body, crc32c(head)) != stored:
        raise IntegrityError(f"CRC-32C mismatch in the {tag_text(tag)!r} chunk at offset {offset}: the file is corrupted")
    return tag, body, offset + CHUNK_OVERHEAD + length


def parse_head(body: bytes | memoryview) -> Header:
    if len(body) < HEAD_FIXED.size:
        raise FormatError("HEAD chunk too short")
    code, order, ndim, n_spacing, flags = HEAD_FIXED.unpack_from(body)
    if code not in _CODE_DTYPES:
        raise FormatError(f"unknown dtype code {code}")
    if order not in (BYTE_ORDER_LITTLE, BYTE_ORDER_BIG):
        raise FormatError(f"unknown byte order {order}")
    if ndim not in (2, 3, 4):
        raise FormatError(f"unsupported number of dimensions {ndim} (2, 3 or 4)")
    if n_spacing > ndim:
        raise FormatError(f"{n_spacing} spacing values for {ndim} dimensions")
    if flags != 0:
        raise FormatError(f"unknown HEAD flags {flags:#x}")
    want = HEAD_FIXED.size + 8 * ndim + 8 * n_spacing + 32
    if len(body) != want:
        raise FormatError(f"HEAD chunk is {len(body)} bytes, expected {want}")
    pos = HEAD_FIXED.size
    shape = struct.unpack_from(f"<{ndim}Q", body, pos)
    pos += 8 * ndim
    spacing = struct.unpack_from(f"<{n_spacing}d", body, pos)
    pos += 8 * n_spacing
    sha = bytes(body[pos : pos + 32])
    if any(s < 1 for s in shape):
        raise FormatError(f"shape {shape} has an empty axis")
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise FormatError(f"shape {shape} declares {voxels} voxels, more than the limit of {MAX_VOXELS}")
    problem = spacing_problem(tuple(spacing), stored=True)
    if problem:
        raise FormatError(problem)
    dtype = np.dtype(_CODE_DTYPES[code])
    if dtype.itemsize > 1 and (order == BYTE_ORDER_LITTLE) != _little():
        dtype = dtype.newbyteorder("<" if order == BYTE_ORDER_LITTLE else ">")  # non-native: explicit
    elif order != BYTE_ORDER_LITTLE:
        raise FormatError("byte order must be 0 for a one-byte dtype")
    return Header(dtype=dtype, shape=tuple(shape), spacing=tuple(spacing) if n_spacing else None, sha256=sha)


def _unpack_base(raw: bytes, dtype: np.dtype) -> int:
    return struct.unpack("<q" if dtype.kind == "i" else "<Q", raw)[0]


def parse_index(body: bytes | memoryview, header: Header, n_models: int, index_end: int) -> tuple[int, list[VolumeEntry]]:
    if len(body) < INDX_FIXED.size:
        raise FormatError("INDX chunk too short")
    file_length, n_volumes = INDX_FIXED.unpack_from(body)
    if n_volumes != header.n_volumes:
        raise FormatError(f"index lists {n_volumes} volumes, the shape {header.shape} has {header.n_volumes}")
    if len(body) < INDX_FIXED.size + VOLUME_REC.size * n_volumes:
        raise FormatError(f"INDX chunk too short for {n_volumes} volume records")
    info = np.iinfo(header.dtype)
    z_len = header.volume_shape_zyx[0]
    recs = []
    total_slabs = 0
    pos = INDX_FIXED.size
    for t in range(n_volumes):
        vmin, vmax, base_raw, model, n_slabs = VOLUME_REC.unpack_from(body, pos)
        pos += VOLUME_REC.size
        base = _unpack_base(base_raw, header.dtype)
        if vmin > vmax or vmax - vmin > MAX_SPAN:
            raise FormatError(f"volume {t}: bad value range [{vmin}, {vmax}]")
        if base + vmin < info.min or base + vmax > info.max:
            raise FormatError(f"volume {t}: value range outside dtype {header.dtype}")
        if model == NO_MODEL:
            if n_slabs != 0 or vmin != vmax:
                raise FormatError(f"volume {t}: a volume without model must be constant and have no slabs")
            model_idx = None
        else:
            if model >= n_models:
                raise FormatError(f"volume {t}: model index {model} out of range ({n_models} models)")
            if not 1 <= n_slabs <= z_len:
                raise FormatError(f"volume {t}: {n_slabs} slabs for {z_len} slices")
            model_idx = model
        total_slabs += n_slabs
        recs.append((vmin, vmax, base, model_idx, n_slabs))
    if len(body) != pos + SLAB_REC.size * total_slabs:
        raise FormatError(f"INDX chunk is {len(body)} bytes, expected {pos + SLAB_REC.size * total_slabs}")
    volumes = []
    expect_offset = index_end
    for t, (vmin, vmax, base, model_idx, n_slabs) in enumerate(recs):
        slabs = []
        z_expect = 0
        for _ in range(n_slabs):
            z0, z1, offset, length, vcrc, reserved = SLAB_REC.unpack_from(body, pos)
            pos += SLAB_REC.size
            if z0 != z_expect or z1 <= z0 or z1 > z_len:
                raise FormatError(f"volume {t}: slab [{z0}, {z1}) does not continue the slab cover at slice {z_expect}")
            if offset != expect_offset:
                raise FormatError(f"volume {t}: slab [{z0}, {z1}) at offset {offset}, expected {expect_offset}")
            if reserved != 0:
                raise FormatError("reserved field of a slab record is not zero")
            expect_offset = offset + CHUNK_OVERHEAD + length
            if expect_offset > file_length:
                raise FormatError(f"volume {t}: slab [{z0}, {z1}) extends past the end of the file")
            slabs.append(SlabEntry(z0, z1, offset, length, vcrc))
            z_expect = z1
        if model_idx is not None and z_expect != z_len:
            raise FormatError(f"volume {t}: slabs cover slices [0, {z_expect}), the volume has {z_len}")
        volumes.append(VolumeEntry(vmin, vmax, base, model_idx, tuple(slabs)))
    if file_length != expect_offset + CHUNK_OVERHEAD:
        raise FormatError(f"index declares a file of {file_length} bytes, its slabs end at {expect_offset} (+END)")
    return file_length, volumes


def parse(data, *, verify_all: bool = False) -> tuple[Container, Source]:
    """Parse the header chunks and the index of `data` (bytes or a seekable binary file).

    With `verify_all`, every SLAB chunk's CRC and the END chunk are checked too (a full decode
    does this implicitly; `info` does not).
    """
    src = as_source(data)
    if src.size == 0:
        raise FormatError("empty data: not an .nvc file (bad magic)")
    if src.size < PREAMBLE.size:
        if bytes(src.read(0, src.size, "the preamble")) != MAGIC[: src.size]:
            raise FormatError("not an .nvc file (bad magic)")
        raise FormatError(f"truncated file: {src.size} bytes, not even a preamble")
    pre = src.read(0, PREAMBLE.size, "the preamble")
    magic, version, flags = PREAMBLE.unpack(pre)
    if magic != MAGIC:
        raise FormatError("not an .nvc file (bad magic)")
    check_preamble(version, flags)
    sizes: dict[str, int] = {"preamble": PREAMBLE.size}
    tag, body, pos = read_chunk(src, PREAMBLE.size)
    if tag != TAG_HEAD:
        raise FormatError(f"the first chunk must be HEAD, found {tag_text(tag)!r}")
    header = parse_head(body)
    sizes["HEAD"] = pos - PREAMBLE.size
    metadata, source_kind, source_header, trailing = b"", None, b"", b""
    models: list[bytes] = []
    ancillary: list[bytes] = []
    seen: set[bytes] = set()
    while True:
        start = pos
        tag, body, pos = read_chunk(src, pos)
        name = tag_text(tag)
        sizes[name] = sizes.get(name, 0) + (pos - start)
        if tag == TAG_INDX:
            file_length, volumes = parse_index(body, header, len(models), pos)
            break
        if tag in SINGLE_CHUNKS and tag in seen:
            raise FormatError(f"duplicate {name} chunk")
        seen.add(tag)
        if tag == TAG_META:
            metadata = bytes(body)
        elif tag == TAG_SRCH:
            source_kind, source_header = parse_source(body, version)
        elif tag == TAG_TAIL:
            check_tail(len(body), version)
            trailing = bytes(body)
        elif tag == TAG_MODL:
            if len(models) >= header.n_volumes:
                raise FormatError(f"more model chunks than volumes ({header.n_volumes})")
            if len(body) > MAX_MODEL_BYTES:
                raise FormatError(f"MODL chunk of {len(body)} bytes, more than {MAX_MODEL_BYTES}")
            models.append(bytes(body))
        elif is_critical(tag):
            raise FormatError(f"unsupported critical chunk {name!r} (written by a newer version?)")
        else:
            if len(ancillary) >= MAX_ANCILLARY_CHUNKS:
                raise FormatError("too many ancillary chunks")
            ancillary.append(bytes(tag))
    if file_length != src.size:
        kind = "truncated file" if src.size < file_length else "trailing data after the end of the file"
        raise FormatError(f"{kind}: the index declares {file_length} bytes, the data has {src.size}")
    container = Container(
        version=version,
        header=header,
        metadata=metadata,
        source_kind=source_kind,
        source_header=source_header,
        models=models,
        volumes=volumes,
        file_length=file_length,
        index_end=pos,
        trailing=trailing,
        ancillary=ancillary,
        chunk_sizes=sizes,
    )
    slab_bytes = sum(CHUNK_OVERHEAD + s.length for v in volumes for s in v.slabs)
    sizes["SLAB"] = slab_bytes
    sizes["END "] = CHUNK_OVERHEAD
    if verify_all:
        for v in volumes:
            for s in v.slabs:
                read_slab(src, s)
        verify_end(src, container)
    return container, src


def read_slab(src: Source, slab: SlabEntry) -> bytes | memoryview:
    """Read one slab payload, checking its chunk tag, length and CRC."""
    tag, body, _ = read_chunk(src, slab.offset, expect=TAG_SLAB)
    if len(body) != slab.length:
        raise FormatError(f"slab at offset {slab.offset} is {len(body)} bytes, the index says {slab.length}")
    return body


def verify_end(src: Source, container: Container) -> None:
    tag, body, end = read_chunk(src, container.file_length - CHUNK_OVERHEAD, expect=TAG_END)
    if len(body) != 0 or end != src.size:
        raise FormatError("malformed END chunk")
