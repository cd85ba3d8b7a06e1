"""The DICOM archive container (format version 2, docs/format.md section 8): writer and parser.

Layout: the version-1 preamble (with version 2) and chunk framing (tag, u64 length, body,
CRC-32C), then

    DIDX   the index: zstd frame of a UTF-8 JSON object (files, series, volumes, chunks)
    DVOL / DHDR / DFIL ...   data chunks, at the offsets the index gives
    END    empty

The index comes first, so a truncated archive still restores the files whose chunks are
intact; every data chunk is read and CRC-checked on its own, so a corrupted chunk costs only
the files that need it. This module knows nothing of DICOM: it validates the index's
structure and bounds, and reads chunks; :mod:`codec.dicom` gives them their meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from codec import format as fmt
from codec.errors import FormatError

INDEX_KIND = "dicom"
#: Newest JSON index layout this reader reads, within format version 2 (docs/format.md 8.2):
#: 1 the first; 2 adds 1-bit pixel data (decision 0202). Writers write the lowest that fits.
INDEX_LAYOUT = 2
BITS_LAYOUT = 2  # the first layout whose coded files may have bits_allocated 1
DATA_TAGS = (fmt.TAG_DICOM_VOLUME, fmt.TAG_DICOM_HEADER, fmt.TAG_DICOM_FILE)


def _zstd():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency of the dicom extra
        raise ImportError("DICOM archives need the 'zstandard' package (pip install 'nvc[dicom]')") from None
    return zstandard


def zstd_compress(data: bytes, *, level: int = 19, dictionary: bytes | None = None) -> bytes:
    """One zstd frame with the content size recorded (so the reader can bound it)."""
    z = _zstd()
    kwargs: dict[str, Any] = {"level": level, "write_content_size": True}
    if dictionary:
        kwargs["dict_data"] = z.ZstdCompressionDict(dictionary, dict_type=z.DICT_TYPE_RAWCONTENT)
    return z.ZstdCompressor(**kwargs).compress(data)


def zstd_decompress(frame: bytes, expected: int, *, what: str, dictionary: bytes | None = None) -> bytes:
    """Inflate one frame that must hold exactly `expected` bytes (checked before inflating)."""
    z = _zstd()
    try:
        size = z.frame_content_size(frame)
    except z.ZstdError as exc:
        raise FormatError(f"{what}: not a zstd frame ({exc})") from None
    if size != expected:
        raise FormatError(f"{what}: the zstd frame holds {size} bytes, the index says {expected}")
    kwargs: dict[str, Any] = {}
    if dictionary:
        kwargs["dict_data"] = z.ZstdCompressionDict(dictionary, dict_type=z.DICT_TYPE_RAWCONTENT)
    try:
        out = z.ZstdDecompressor(**kwargs).decompress(frame, max_output_size=max(expected, 1))
    except z.ZstdError as exc:
        raise FormatError(f"{what}: damaged zstd data ({exc})") from None
    if len(out) != expected:
        raise FormatError(f"{what}: {len(out)} bytes inflated, the index says {expected}")
    return out


# --------------------------------------------------------------------------- writer


def build(index: dict, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """Assemble an archive: `index` (without "chunks"; they are filled in here) and the data chunks."""
    table = []
    pos = 0
    for tag, body in chunks:
        if tag not in DATA_TAGS:
            raise FormatError(f"{tag!r} is not a data chunk of a DICOM archive")
        table.append([tag.decode("ascii"), pos, len(body)])
        pos += fmt.CHUNK_OVERHEAD + len(body)
    index = {"kind": INDEX_KIND, "layout": INDEX_LAYOUT, **index, "chunks": table}
    raw = json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > fmt.ARCHIVE_MAX_INDEX_BYTES:
        raise FormatError(f"the archive index would be {len(raw)} bytes, more than {fmt.ARCHIVE_MAX_INDEX_BYTES}")
    head = struct_preamble()
    parts = [head, fmt.pack_chunk(fmt.TAG_DICOM_INDEX, len(raw).to_bytes(8, "little") + zstd_compress(raw))]
    parts += [fmt.pack_chunk(tag, body) for tag, body in chunks]
    parts.append(fmt.pack_chunk(fmt.TAG_END, b""))
    return b"".join(parts)


def struct_preamble() -> bytes:
    return fmt.PREAMBLE.pack(fmt.MAGIC, fmt.ARCHIVE_VERSION, 0)


def is_archive(head: bytes) -> bool:
    """Whether the first 12 bytes of a file are a DICOM archive's preamble."""
    return bytes(head[: fmt.PREAMBLE.size]) == struct_preamble()


# --------------------------------------------------------------------------- parser


@dataclass
class ChunkRef:
    tag: bytes
    offset: int  # of the chunk's tag, from the start of the file
    length: int  # of the body


@dataclass
class Archive:
    """A parsed archive index; data chunks are read on demand with :meth:`read`."""

    index: dict
    chunks: list[ChunkRef]
    src: fmt.Source
    size: int
    index_bytes: int  # of the DIDX chunk, framing included
    truncated: bool = False
    problems: list[str] = field(default_factory=list)

    def read(self, ref: int, expect: bytes) -> bytes:
        """The body of data chunk `ref`, CRC-checked (FormatError/IntegrityError when it is damaged)."""
        c = self.chunks[ref]
        if c.tag != expect:
            raise FormatError(f"chunk {ref} is a {c.tag.decode()} chunk, a {expect.decode()} chunk was expected")
        tag, body, _ = fmt.read_chunk(self.src, c.offset, expect=expect)
        if len(body) != c.length:
            raise FormatError(f"chunk {ref} is {len(body)} bytes, the index says {c.length}")
        return bytes(body)


def _want(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(f"archive index: {message}")


def _is_int(v, lo: int = 0, hi: int = 2**63) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def parse(data) -> Archive:
    """Parse the preamble and the index of an archive (bytes or a seekable file); no data chunk is read."""
    src = fmt.as_source(data)
    if src.size < fmt.PREAMBLE.size or not is_archive(src.read(0, fmt.PREAMBLE.size, "the preamble")):
        raise FormatError("not a DICOM series archive (.nvc version 2)")
    tag, body, data_start = fmt.read_chunk(src, fmt.PREAMBLE.size, expect=fmt.TAG_DICOM_INDEX)
    body = bytes(body)
    _want(len(body) >= 8, "too short")
    raw_len = int.from_bytes(body[:8], "little")
    _want(raw_len <= fmt.ARCHIVE_MAX_INDEX_BYTES, f"declares {raw_len} bytes, more than {fmt.ARCHIVE_MAX_INDEX_BYTES}")
    raw = zstd_decompress(body[8:], raw_len, what="archive index")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"archive index is not JSON ({exc})") from None
    _want(isinstance(index, dict), "not an object")
    _want(index.get("kind") == INDEX_KIND, f"kind {index.get('kind')!r} is not {INDEX_KIND!r}")
    layout = index.get("layout")
    _want(_is_int(layout, 1), "no layout number")
    if layout > INDEX_LAYOUT:
        raise FormatError(f"archive index layout {layout} is newer than this reader (reads layout {INDEX_LAYOUT})")
    table = index.get("chunks")
    _want(isinstance(table, list) and len(table) <= 3 * fmt.ARCHIVE_MAX_FILES + 1, "bad chunk table")
    chunks: list[ChunkRef] = []
    pos = 0
    for i, row in enumerate(table):
        _want(isinstance(row, list) and len(row) == 3 and isinstance(row[0], str), f"chunk {i}: bad record")
        tag = row[0].encode("ascii", "replace")
        _want(tag in DATA_TAGS, f"chunk {i}: unknown tag {row[0]!r}")
        _want(_is_int(row[1]) and row[1] == pos, f"chunk {i}: offset {row[1]!r}, expected {pos}")
        _want(_is_int(row[2], 0, 2**48), f"chunk {i}: bad length")
        chunks.append(ChunkRef(tag, data_start + row[1], row[2]))
        pos += fmt.CHUNK_OVERHEAD + row[2]
    expected_size = data_start + pos + fmt.CHUNK_OVERHEAD
    archive = Archive(index=index, chunks=chunks, src=src, size=src.size, index_bytes=data_start - fmt.PREAMBLE.size)
    if src.size < expected_size:
        archive.truncated = True
        archive.problems.append(f"truncated archive: {src.size} bytes of {expected_size}")
    elif src.size > expected_size:
        archive.problems.append(f"{src.size - expected_size} bytes of trailing data after the archive")
    else:
        try:
            fmt.read_chunk(src, data_start + pos, expect=fmt.TAG_END)
        except FormatError as exc:
            archive.problems.append(f"END chunk: {exc}")
    return archive
