"""Incremental checks of a file while its bytes stream in (an upload), with the codec's own rules.

A service calls these before it queues work for a file, so that what its worker would refuse
for any reason knowable without decoding is refused while the client is still connected, and
a header declaring a huge volume, or gzip data inflating far beyond what its header declares,
is refused before anything is allocated for it. They share every rule with the readers: the
header parsers, magic numbers and limits of :mod:`codec.headers`, the container parser of
:mod:`codec.format`, the model-blob framing of :mod:`codec.blob`, and the decode limit of
:func:`codec.api.plan_decode`.

- :class:`VolumeCheck` (.nii, .nii.gz, .npy to compress): the format from the magic bytes; the
  NIfTI-1/2 header with its extensions or the .npy header; a supported integer dtype, 2-4
  dimensions, at most 2**31 voxels; the declared voxel bytes at most `max_volume_bytes`; and
  the data actually present: never less than the header declares, never more than
  ``MAX_TRAILING_BYTES`` beyond it (a gzip bomb stops being inflated there). gzip members are
  inflated at most ``INFLATE_PIECE`` bytes at a time and only the header bytes are kept.
- :class:`NvcCheck` (.nvc to decompress): the preamble, then every chunk in order as
  :func:`codec.format.parse` reads it, each CRC checked as the bytes stream past; the HEAD
  (shape, dtype, spacing); each model blob's version, flags, framing and that its model is
  shipped with this installation; a kept source header that describes the HEAD's array; the
  index; the decoded size and the decode plan against the limits; then every SLAB chunk and
  the END chunk at the offsets the index gives.

Feed bytes with ``feed()``; ``finish()`` returns an :class:`UploadInfo`. Every refusal is a
:class:`codec.CodecError`: :class:`codec.UnrecognisedInputError` (not this kind of file),
:class:`codec.TooLargeError` (a size limit) or another (invalid content).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from codec import blob as model_blob
from codec import format as fmt
from codec import headers
from codec.errors import CodecError, FormatError, TooLargeError, UnrecognisedInputError, UnsupportedInputError

#: Most bytes inflated from a gzip member in one step.
INFLATE_PIECE = 2**20


@dataclass(frozen=True)
class UploadInfo:
    """What the header of a valid file declares."""

    format: str  # "nii.gz", "nii", "npy" or "nvc"
    shape: tuple[int, ...]
    dtype: str
    voxel_bytes: int


def _too_big(shape, dtype, nbytes: int, limit: int) -> TooLargeError:
    return TooLargeError(
        f"the header declares a {dtype} volume of shape {tuple(shape)} ({nbytes} bytes of voxels), more than the limit "
        f"of {limit} bytes"
    )


# --------------------------------------------------------------------------- gzip


class _Inflater:
    """Incremental gunzip with the semantics of `gzip.decompress` (what the reader uses):
    concatenated members, zero padding between/after members, CRC and length checked."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._between = False  # after a member's end: skipping zero padding

    def feed(self, data: bytes):
        """Yield inflated pieces of at most INFLATE_PIECE bytes."""
        while True:
            if self._between:
                data = data.lstrip(b"\x00")
                if not data:
                    return
                self._d = zlib.decompressobj(wbits=31)
                self._between = False
            try:
                out = self._d.decompress(data, INFLATE_PIECE)
            except zlib.error as exc:
                raise UnsupportedInputError(f"broken gzip data: {exc}") from None
            if out:
                yield out
            if self._d.eof:
                data = self._d.unused_data
                self._between = True
                continue
            data = self._d.unconsumed_tail
            if not data and len(out) < INFLATE_PIECE:  # input used up and no output pending
                return

    def finish(self):
        """Yield what is left; raise when the last member is incomplete."""
        while not self._between:
            try:
                out = self._d.decompress(b"", INFLATE_PIECE)
            except zlib.error as exc:
                raise UnsupportedInputError(f"broken gzip data: {exc}") from None
            if out:
                yield out
            if self._d.eof:
                return
            if len(out) < INFLATE_PIECE:
                raise UnsupportedInputError(
                    "broken gzip data: compressed file ended before the end-of-stream marker was reached"
                )


# --------------------------------------------------------------------------- NIfTI / .npy


class _VolumeStream:
    """The (inflated) bytes of a .nii or .npy file: parse the header, then count the data."""

    def __init__(self, gz: bool, max_volume_bytes: int):
        self.gz = gz
        self.max_volume_bytes = max_volume_bytes
        self.buf = bytearray()
        self.count = 0
        self.expected: int | None = None  # header + voxel bytes the header declares
        self.info: UploadInfo | None = None
        self._buffer_limit = 4096  # grows to vox_offset once the NIfTI header is read

    def feed(self, data: bytes, final: bool = False) -> None:
        self.count += len(data)
        if self.expected is None:
            room = self._buffer_limit - len(self.buf)
            if room > 0:
                self.buf += data[:room]
            self._try_parse(final)
        if self.expected is not None:
            headers.check_trailing(self.count - self.expected, "the file" + (" once inflated" if self.gz else ""))

    def finish(self) -> UploadInfo:
        if self.expected is None:
            self._try_parse(final=True)
        assert self.expected is not None and self.info is not None
        if self.count < self.expected:
            raise UnsupportedInputError(
                f"truncated {self.info.format} file: its header declares {self.expected} bytes (header + voxels), "
                f"the upload has {self.count}{' once inflated' if self.gz else ''}"
            )
        return self.info

    def _try_parse(self, final: bool) -> None:
        buf = self.buf
        if len(buf) < 8 and not final:
            return
        kind = headers.sniff(buf[:8])
        if kind == "npy":
            if self.gz:
                raise UnrecognisedInputError("gzip-compressed .npy is not supported: upload the .npy itself")
            self._parse_npy(final)
        elif kind == "nvc":
            raise UnrecognisedInputError("the file is already an .nvc file: decompress it instead")
        elif kind == "zip":
            raise UnrecognisedInputError(".npz archives are not supported: save one array as .npy")
        elif len(buf) >= headers.NIFTI1_HEADER_BYTES or final:
            self._parse_nifti(final)

    def _accept(self, layout: headers.Layout, fmt_name: str) -> None:
        nbytes = layout.data_bytes
        if nbytes > self.max_volume_bytes:
            raise _too_big(layout.shape, layout.dtype.name, nbytes, self.max_volume_bytes)
        self.expected = layout.data_offset + nbytes
        self.info = UploadInfo(fmt_name, tuple(int(n) for n in layout.shape), layout.dtype.name, nbytes)
        self.buf = bytearray()

    def _parse_npy(self, final: bool) -> None:
        need = headers.npy_header_length(self.buf)
        if need is None:
            if not final:
                return
            raise UnsupportedInputError("truncated .npy: the file ends inside its header")
        self._buffer_limit = max(self._buffer_limit, need)
        if len(self.buf) < need:
            if not final:
                return
            raise UnsupportedInputError("truncated .npy: the file ends inside its header")
        self._accept(headers.npy_layout(self.buf[:need]), "npy")

    def _parse_nifti(self, final: bool) -> None:
        buf = self.buf
        if len(buf) < headers.NIFTI2_HEADER_BYTES + 4 and not final:  # a NIfTI-2 header and its extension flag
            return
        if len(buf) < headers.NIFTI1_HEADER_BYTES:
            raise UnrecognisedInputError("not a NIfTI (.nii, .nii.gz) or NumPy (.npy) file: too short")
        kind, _ = headers.nifti_kind(buf)
        fixed = headers.NIFTI1_HEADER_BYTES if kind == "nifti1" else headers.NIFTI2_HEADER_BYTES
        if len(buf) < fixed + 4 and not final:
            return
        need = max(headers.nifti_offset(buf), fixed + 4)
        self._buffer_limit = max(self._buffer_limit, need)
        if len(buf) < need and not final:
            return
        layout, _ = headers.nifti_layout(bytes(buf[:need]))
        self._accept(layout, "nii.gz" if self.gz else "nii")


class VolumeCheck:
    """A .nii / .nii.gz / .npy file to compress, checked as it streams in."""

    def __init__(self, max_volume_bytes: int):
        self.max_volume_bytes = max_volume_bytes
        self._first = b""
        self._stream: _VolumeStream | None = None
        self._inflater: _Inflater | None = None

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._stream is None:
            self._first += data
            if len(self._first) < 2:
                return
            data, self._first = self._first, b""
            gz = headers.sniff(data[:2]) == "gzip"
            self._stream = _VolumeStream(gz, self.max_volume_bytes)
            self._inflater = _Inflater() if gz else None
        if self._inflater is not None:
            for piece in self._inflater.feed(data):
                self._stream.feed(piece)
        else:
            self._stream.feed(data)

    def header_info(self) -> tuple[UploadInfo, int | None] | None:
        """What the header fed so far declares, once it is complete: (info, the file size it
        implies; None for .nii.gz, whose stored size the header does not give)."""
        if self._stream is None or self._stream.info is None:
            return None
        return self._stream.info, (None if self._stream.gz else self._stream.expected)

    def finish(self) -> UploadInfo:
        if self._stream is None:  # fewer than 2 bytes in all
            self._stream = _VolumeStream(False, self.max_volume_bytes)
            self._stream.feed(self._first, final=True)
        if self._inflater is not None:
            for piece in self._inflater.finish():
                self._stream.feed(piece)
        return self._stream.finish()


# --------------------------------------------------------------------------- .nvc


class NvcCheck:
    """A .nvc file to decompress, checked chunk by chunk as `codec.format.parse(verify_all=True)`
    reads it, plus what the decoder checks before it decodes (model blobs, source header,
    decoded size and decode plan). `max_volume_bytes`: the most decoded voxel bytes (the decoder
    that will run must use the same `max_bytes`); `max_decode_bytes`: a further decode limit
    (default: `codec.api.decode_limit()`, from NVC_MAX_DECODE_BYTES)."""

    def __init__(self, max_volume_bytes: int, max_decode_bytes: int | None = None):
        from codec.api import decode_limit

        self.max_volume_bytes = max_volume_bytes
        self.max_decode_bytes = decode_limit(max_decode_bytes)
        self.pos = 0  # bytes consumed so far
        self.buf = bytearray()  # bytes of the current fixed-size piece (preamble, chunk head, CRC)
        self.state = "preamble"
        self.version = 0
        self.tag = b""
        self.length = 0
        self.offset = 0  # of the current chunk
        self.left = 0  # body bytes still to come
        self.crc = 0
        self.keep: bytearray | None = None
        self.header: fmt.Header | None = None
        self.models = 0
        self.seen: set[bytes] = set()
        self.ancillary = 0
        self.slabs: list[tuple[int, int]] = []  # (offset, length) still expected, in order
        self.file_length: int | None = None
        self.ended = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.ended:
                raise FormatError(
                    f"trailing data after the end of the file: the index declares {self.file_length} bytes, "
                    "the upload has more"
                )
            if self.state == "body":
                n = min(self.left, len(view))
                piece = view[:n]
                self.crc = fmt.crc32c(piece, self.crc)
                if self.keep is not None:
                    self.keep += piece
                self.left -= n
                self.pos += n
                view = view[n:]
                if self.left == 0:
                    self.state = "crc"
                continue
            want = {"preamble": fmt.PREAMBLE.size, "head": fmt.CHUNK_HEAD.size, "crc": fmt.CRC_SIZE}[self.state]
            n = min(want - len(self.buf), len(view))
            self.buf += view[:n]
            self.pos += n
            view = view[n:]
            if len(self.buf) == want:
                piece, self.buf = bytes(self.buf), bytearray()
                getattr(self, f"_on_{self.state}")(piece)

    def _on_preamble(self, piece: bytes) -> None:
        magic, version, flags = fmt.PREAMBLE.unpack(piece)
        if magic != fmt.MAGIC:
            raise UnrecognisedInputError("not an .nvc file (bad magic)")
        fmt.check_preamble(version, flags)
        self.version = version
        self.state = "head"

    def _keep_limit(self, tag: bytes) -> int:
        """How many body bytes of a chunk with `tag` are kept for parsing (0: none)."""
        if tag == fmt.TAG_HEAD:
            return 4096
        if tag == fmt.TAG_INDX:
            h = self.header
            z_len, n_vol = h.volume_shape_zyx[0], h.n_volumes
            return fmt.INDX_FIXED.size + fmt.VOLUME_REC.size * n_vol + fmt.SLAB_REC.size * z_len * n_vol
        if tag == fmt.TAG_MODL:
            return fmt.MAX_MODEL_BYTES
        if tag == fmt.TAG_SRCH:
            return 1 + headers.MAX_NIFTI_HEADER_BYTES
        if tag == fmt.TAG_TAIL:
            return fmt.MAX_TRAILING_BYTES
        return 0

    def _on_head(self, piece: bytes) -> None:
        tag, length = fmt.CHUNK_HEAD.unpack(piece)
        self.tag, self.length, self.offset = tag, length, self.pos - len(piece)
        name = fmt.tag_text(tag)
        if self.header is None and tag != fmt.TAG_HEAD:
            raise FormatError(f"the first chunk must be HEAD, found {name!r}")
        if self.file_length is not None:  # after the index: SLAB chunks where it says, then END
            if self.slabs:
                offset, slab_length = self.slabs[0]
                if tag != fmt.TAG_SLAB or self.offset != offset:
                    raise FormatError(f"expected a SLAB chunk at offset {offset}, found {name!r} at {self.offset}")
                if length != slab_length:
                    raise FormatError(f"slab at offset {offset} is {length} bytes, the index says {slab_length}")
                self.slabs.pop(0)
            elif tag != fmt.TAG_END or length != 0 or self.offset != self.file_length - fmt.CHUNK_OVERHEAD:
                raise FormatError("malformed END chunk")
        keep_limit = self._keep_limit(tag) if self.file_length is None else 0
        if tag in (fmt.TAG_HEAD, fmt.TAG_INDX, fmt.TAG_MODL, fmt.TAG_SRCH, fmt.TAG_TAIL) and length > keep_limit:
            if self.file_length is None:
                raise FormatError(f"the {name!r} chunk at offset {self.offset} declares {length} bytes, more than it "
                                  f"can hold ({keep_limit})")
        self.keep = bytearray() if keep_limit else None
        self.crc = fmt.crc32c(piece)
        self.left = length
        self.state = "body" if length else "crc"

    def _on_crc(self, piece: bytes) -> None:
        (stored,) = struct.unpack("<I", piece)
        name = fmt.tag_text(self.tag)
        if stored != self.crc:
            from codec.errors import IntegrityError

            raise IntegrityError(f"CRC-32C mismatch in the {name!r} chunk at offset {self.offset}: the file is corrupted")
        body = bytes(self.keep) if self.keep is not None else b""
        self.keep = None
        self.state = "head"
        tag = self.tag
        if tag == fmt.TAG_HEAD and self.header is None:
            self.header = h = fmt.parse_head(body)
            nbytes = h.voxels * h.dtype.itemsize
            if nbytes > self.max_volume_bytes:
                raise _too_big(h.shape, h.dtype.name, nbytes, self.max_volume_bytes)
        elif self.file_length is not None:
            if tag == fmt.TAG_END:
                self.ended = True
        elif tag == fmt.TAG_INDX:
            self.file_length, volumes = fmt.parse_index(body, self.header, self.models, self.pos)
            from codec.api import plan_decode

            plan_decode(self.header, volumes, min(self.max_volume_bytes, self.max_decode_bytes))
            self.slabs = [(s.offset, s.length) for v in volumes for s in v.slabs]
        elif tag in fmt.SINGLE_CHUNKS and tag in self.seen:
            raise FormatError(f"duplicate {name} chunk")
        elif tag == fmt.TAG_SRCH:
            kind, raw = fmt.parse_source(body, self.version)
            check_source_header(kind, raw, self.header)
        elif tag == fmt.TAG_TAIL:
            fmt.check_tail(len(body), self.version)
        elif tag == fmt.TAG_MODL:
            if self.models >= self.header.n_volumes:
                raise FormatError(f"more model chunks than volumes ({self.header.n_volumes})")
            model_blob.check_blob(body)
            self.models += 1
        elif tag == fmt.TAG_HEAD:
            raise FormatError("unsupported critical chunk 'HEAD' after the first")
        elif tag != fmt.TAG_META and fmt.is_critical(tag):
            raise FormatError(f"unsupported critical chunk {name!r} (written by a newer version?)")
        elif tag != fmt.TAG_META:
            if self.ancillary >= fmt.MAX_ANCILLARY_CHUNKS:
                raise FormatError("too many ancillary chunks")
            self.ancillary += 1
        self.seen.add(tag)

    def header_info(self) -> tuple[UploadInfo, int | None] | None:
        """What the HEAD chunk fed so far declares (the file size is known only from the index,
        so None here)."""
        h = self.header
        if h is None:
            return None
        return UploadInfo("nvc", tuple(int(n) for n in h.shape), h.dtype.name, h.voxels * h.dtype.itemsize), None

    def finish(self) -> UploadInfo:
        if self.pos == 0:
            raise UnrecognisedInputError("not an .nvc file (empty)")
        if self.state == "preamble":
            if fmt.MAGIC[: len(self.buf)] != bytes(self.buf):
                raise UnrecognisedInputError("not an .nvc file (bad magic)")
            raise FormatError(f"truncated file: {self.pos} bytes, not even a preamble")
        if not self.ended:
            expected = f"; the index declares {self.file_length} bytes" if self.file_length is not None else ""
            raise FormatError(f"truncated file: the upload ends after {self.pos} bytes{expected}")
        h = self.header
        return UploadInfo("nvc", tuple(int(n) for n in h.shape), h.dtype.name, h.voxels * h.dtype.itemsize)


def check_source_header(kind: str, raw: bytes, header: fmt.Header) -> None:
    """FormatError unless a kept source header describes the array of `header` (what writing
    the decoded voxels back with it will check)."""
    try:
        if kind == "npy":
            layout = headers.npy_layout(raw)
            if layout.data_offset != len(raw):
                raise UnsupportedInputError("the header has bytes after its end")
        else:
            layout, _ = headers.nifti_layout(raw)
            if len(raw) > layout.data_offset:
                raise UnsupportedInputError("the header extends past vox_offset")
    except CodecError as exc:
        raise FormatError(f"stored {kind} header is invalid: {exc}") from None
    if layout.shape != tuple(header.shape) or layout.dtype != header.dtype:
        raise FormatError(
            f"stored {kind} header describes {layout.dtype.str}{layout.shape}, the file holds "
            f"{header.dtype.str}{tuple(header.shape)}"
        )


def check_container(container: fmt.Container, *, max_volume_bytes: int | None = None,
                    max_decode_bytes: int | None = None) -> None:
    """Everything about a parsed file that a decode would refuse and that is known without
    decoding: each model blob (version, flags, framing, a shipped model), a kept source header
    that describes the array, the declared voxel bytes (against `max_volume_bytes`, when given)
    and the decode plan against the decode limit. :class:`NvcCheck` applies the same checks
    chunk by chunk; :func:`check_nvc` applies them to whole data."""
    from codec.api import decode_limit, plan_decode

    h = container.header
    nbytes = h.voxels * h.dtype.itemsize
    if max_volume_bytes is not None and nbytes > max_volume_bytes:
        raise _too_big(h.shape, h.dtype.name, nbytes, max_volume_bytes)
    for blob in container.models:
        model_blob.check_blob(blob)
    if container.source_kind is not None:
        check_source_header(container.source_kind, container.source_header, h)
    limit = decode_limit(max_decode_bytes)
    plan_decode(h, container.volumes, limit if max_volume_bytes is None else min(limit, max_volume_bytes))


def check_nvc(data, *, verify_all: bool = True, max_volume_bytes: int | None = None,
              max_decode_bytes: int | None = None) -> fmt.Container:
    """Parse `data` (bytes or a seekable file) and run :func:`check_container`: what an upload
    check accepts, as one call (with `verify_all`, every slab CRC and the END chunk too)."""
    container, _ = fmt.parse(data, verify_all=verify_all)
    check_container(container, max_volume_bytes=max_volume_bytes, max_decode_bytes=max_decode_bytes)
    return container


def checker_for(kind: str, max_volume_bytes: int, max_decode_bytes: int | None = None):
    """The incremental check of a file to `compress` or to `decompress`."""
    if kind == "compress":
        return VolumeCheck(max_volume_bytes)
    return NvcCheck(max_volume_bytes, max_decode_bytes)
