"""Validate an upload while it streams in, before a job is queued for it.

Why here and not only in the worker: a bad upload should be a 4xx problem that says what is
wrong while the client is still connected, not a job that fails minutes later; and a header
that declares a huge volume, or gzip data that inflates far beyond what its header declares,
must be refused before a worker allocates anything for it.

What is checked, with the codec's own rules (the same functions the codec reader runs, so
the API does not accept what the worker refuses, nor the other way round):

- volumes to compress (.nii, .nii.gz, .npy): the format from the magic bytes (else 415); the
  NIfTI-1/2 header with its extensions (nibabel, via `codec.files`), or the .npy header
  (numpy's own header parser); an integer dtype the codec supports, 2-4 dimensions, at most
  2**31 voxels (else 422); the declared voxel bytes at most NVC_MAX_VOLUME_BYTES (else 413);
  and the data actually present: never less than the header declares, never more than
  TRAILING_SLACK beyond it (a gzip bomb stops being inflated there). gzip members are
  inflated incrementally, at most INFLATE_PIECE bytes at a time, and only the header bytes
  are kept, so memory stays bounded whatever the data claims.
- .nvc files to decompress: the preamble, then every chunk in order as `codec.format.parse`
  would read it (HEAD first, its CRC-32C, the index parsed by `codec.format.parse_index`), and
  then every SLAB chunk and the END chunk at the offsets the index gives, each CRC checked
  while the bytes stream past: the file is structurally what the decoder will accept, and not
  damaged in transit.

Feed bytes with `feed()`; `finish()` returns what was learned (format, shape, dtype). Every
refusal is a `Problem` (415, 422 or 413) whose detail says why.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass

from service.problems import Problem

GZIP_MAGIC = b"\x1f\x8b"
NPY_MAGIC = b"\x93NUMPY"
NVC_MAGIC = b"\x89NVC\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
#: Bytes of data accepted after the voxels a header declares (some writers pad a little).
TRAILING_SLACK = 1024 * 1024
#: Largest NIfTI header + extensions (vox_offset) the API buffers to check.
MAX_NIFTI_HEADER_BYTES = 16 * 1024 * 1024
#: numpy refuses larger .npy headers by default (and so does the codec).
MAX_NPY_HEADER_BYTES = 10000
#: Largest .nvc index chunk the API buffers (32 bytes per slab: half a million slabs).
MAX_NVC_INDEX_BYTES = 16 * 1024 * 1024
#: Most bytes inflated from a gzip member in one step.
INFLATE_PIECE = 1024 * 1024


@dataclass(frozen=True)
class VolumeInfo:
    """What the header of a valid upload declares."""

    format: str  # "nii.gz", "nii", "npy" or "nvc"
    shape: tuple[int, ...]
    dtype: str
    voxel_bytes: int


def _unsupported(detail: str) -> Problem:
    return Problem(415, detail, slug="unsupported-input")


def _invalid(detail: str) -> Problem:
    return Problem(422, detail, slug="invalid-input")


def _too_big(shape, dtype, nbytes: int, limit: int) -> Problem:
    return Problem(
        413, f"the header declares a {dtype} volume of shape {tuple(shape)} ({nbytes} bytes of voxels), more than "
        f"the limit of {limit} bytes", slug="volume-too-large",
    )


# ----------------------------------------------------------------------------- gzip


class _Inflater:
    """Incremental gunzip with the semantics of `gzip.decompress` (what the codec uses):
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
                raise _invalid(f"broken gzip data: {exc}") from None
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
                raise _invalid(f"broken gzip data: {exc}") from None
            if out:
                yield out
            if self._d.eof:
                return
            if len(out) < INFLATE_PIECE:
                raise _invalid("broken gzip data: compressed file ended before the end-of-stream marker was reached")


# ----------------------------------------------------------------------------- NIfTI / .npy


class _VolumeStream:
    """The (inflated) bytes of a .nii or .npy file: parse the header, then count the data."""

    def __init__(self, gz: bool, max_volume_bytes: int):
        self.gz = gz
        self.max_volume_bytes = max_volume_bytes
        self.buf = bytearray()
        self.count = 0
        self.expected: int | None = None  # header + voxel bytes the header declares
        self.info: VolumeInfo | None = None
        self._buffer_limit = 4096  # grows to vox_offset once the NIfTI header is read

    def feed(self, data: bytes, final: bool = False) -> None:
        self.count += len(data)
        if self.expected is None:
            room = self._buffer_limit - len(self.buf)
            if room > 0:
                self.buf += data[:room]
            self._try_parse(final)
        if self.expected is not None and self.count > self.expected + TRAILING_SLACK:
            raise _invalid(
                f"the file holds more than {self.expected + TRAILING_SLACK} bytes"
                f"{' once inflated' if self.gz else ''}, but its header declares {self.expected} (header + voxels): "
                "refused (damaged, or a decompression bomb)"
            )

    def finish(self) -> VolumeInfo:
        if self.expected is None:
            self._try_parse(final=True)
        assert self.expected is not None and self.info is not None
        if self.count < self.expected:
            raise _invalid(
                f"truncated {self.info.format} file: its header declares {self.expected} bytes (header + voxels), "
                f"the upload has {self.count}{' once inflated' if self.gz else ''}"
            )
        return self.info

    # -- header parsing; `final`: no more bytes will come

    def _try_parse(self, final: bool) -> None:
        buf = self.buf
        if len(buf) < 8 and not final:
            return
        head = bytes(buf[:8])
        if head.startswith(NPY_MAGIC):
            if self.gz:
                raise _unsupported("gzip-compressed .npy is not supported: upload the .npy itself")
            self._parse_npy(final)
        elif head.startswith(NVC_MAGIC):
            raise _unsupported("the upload is already an .nvc file: use POST /decompress")
        elif head.startswith(ZIP_MAGIC):
            raise _unsupported(".npz archives are not supported: save one array as .npy")
        elif len(buf) >= 348 or final:
            self._parse_nifti(final)

    def _parse_npy(self, final: bool) -> None:
        from codec import UnsupportedInputError, files

        buf = self.buf
        if len(buf) < 12 and not final:
            return
        major = buf[6] if len(buf) > 6 else 0
        size_bytes = 2 if major == 1 else 4
        if len(buf) >= 8 + size_bytes:
            header_len = int.from_bytes(buf[8 : 8 + size_bytes], "little")
            if header_len > MAX_NPY_HEADER_BYTES:
                raise _invalid(f"broken .npy header: {header_len} header bytes (numpy reads at most "
                               f"{MAX_NPY_HEADER_BYTES})")
            need = 8 + size_bytes + header_len
            self._buffer_limit = max(self._buffer_limit, need)
            if len(buf) < need and not final:
                return
        fp = io.BytesIO(bytes(buf))
        try:
            shape, _, dtype = files.read_npy_header(fp)
        except UnsupportedInputError as exc:
            raise _invalid(str(exc)) from None
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.max_volume_bytes:
            raise _too_big(shape, dtype, nbytes, self.max_volume_bytes)
        self.expected = fp.tell() + nbytes
        self.info = VolumeInfo("npy", tuple(int(n) for n in shape), dtype.name, nbytes)
        self.buf = bytearray()

    def _parse_nifti(self, final: bool) -> None:
        from codec import UnsupportedInputError
        from codec import files
        from codec import volume as vol

        buf = self.buf
        if len(buf) < 544 and not final:  # enough for a NIfTI-2 header and its extension flag
            return
        if len(buf) < 348:
            raise _unsupported("the upload is not a NIfTI (.nii, .nii.gz) or NumPy (.npy) file: too short")
        try:
            kind, _ = files._nifti_kind(buf)
        except UnsupportedInputError as exc:
            raise _unsupported(f"the upload is not a NIfTI (.nii, .nii.gz) or NumPy (.npy) file: {exc}") from None
        fixed = 348 if kind == "nifti1" else 540
        if len(buf) < fixed + 4 and not final:
            return
        try:
            # the fixed header alone (extension flag cleared) gives vox_offset: how much to buffer
            bare = bytes(buf[:fixed]) + b"\0\0\0\0"
            kind, hdr = files._parse_nifti_header(bare)
            shape, dtype, offset = files._header_layout(kind, hdr, len(bare))
            if offset > MAX_NIFTI_HEADER_BYTES:
                raise UnsupportedInputError(
                    f"{kind} header: vox_offset {offset} (header + extensions) is larger than the "
                    f"{MAX_NIFTI_HEADER_BYTES} bytes the service accepts"
                )
            need = max(offset, fixed + 4)
            self._buffer_limit = max(self._buffer_limit, need)
            if len(buf) < need and not final:
                return
            kind, hdr = files._parse_nifti_header(bytes(buf[:need]))
            shape, dtype, offset = files._header_layout(kind, hdr, need)
            if any(n < 0 for n in shape):  # the codec's own check only catches 0 (reported)
                raise UnsupportedInputError(f"{kind} header declares shape {shape}: a dimension is negative")
            if dtype.kind not in "ui" or dtype.fields is not None:
                raise UnsupportedInputError(
                    f"NIfTI data type {dtype} is not supported: the codec is lossless for integer volumes only"
                )
            vol.check_dtype_shape(dtype, shape)
        except UnsupportedInputError as exc:
            raise _invalid(str(exc)) from None
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.max_volume_bytes:
            raise _too_big(shape, dtype, nbytes, self.max_volume_bytes)
        self.expected = offset + nbytes
        self.info = VolumeInfo("nii.gz" if self.gz else "nii", tuple(shape), dtype.name, nbytes)
        self.buf = bytearray()


class VolumeUploadValidator:
    """A .nii / .nii.gz / .npy upload (POST /compress)."""

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
            gz = data[:2] == GZIP_MAGIC
            self._stream = _VolumeStream(gz, self.max_volume_bytes)
            self._inflater = _Inflater() if gz else None
        if self._inflater is not None:
            for piece in self._inflater.feed(data):
                self._stream.feed(piece)
        else:
            self._stream.feed(data)

    def header_info(self) -> tuple[VolumeInfo, int | None] | None:
        """What the header fed so far declares, once it is complete: (info, file size it implies;
        None for .nii.gz, whose stored size the header does not give). For checking the head of
        an object already stored (direct uploads) without reading all of it."""
        if self._stream is None or self._stream.info is None:
            return None
        return self._stream.info, (None if self._stream.gz else self._stream.expected)

    def finish(self) -> VolumeInfo:
        if self._stream is None:  # fewer than 2 bytes in all
            self._stream = _VolumeStream(False, self.max_volume_bytes)
            self._stream.feed(self._first, final=True)
        if self._inflater is not None:
            for piece in self._inflater.finish():
                self._stream.feed(piece)
        return self._stream.finish()


# ----------------------------------------------------------------------------- .nvc


class NvcUploadValidator:
    """A .nvc upload (POST /decompress), checked chunk by chunk as `codec.format.parse(verify_all=True)`."""

    def __init__(self, max_volume_bytes: int):
        from codec import format as fmt

        self.fmt = fmt
        self.max_volume_bytes = max_volume_bytes
        self.pos = 0  # bytes consumed so far
        self.buf = bytearray()  # bytes of the current fixed-size piece (preamble, chunk head, CRC)
        self.state = "preamble"
        self.tag = b""
        self.length = 0
        self.offset = 0  # of the current chunk
        self.left = 0  # body bytes still to come
        self.crc = 0
        self.keep: bytearray | None = None
        self.header = None
        self.models = 0
        self.seen: set[bytes] = set()
        self.ancillary = 0
        self.slabs: list[tuple[int, int]] = []  # (offset, length) still expected, in order
        self.file_length: int | None = None
        self.ended = False

    def _bad(self, detail: str) -> Problem:
        return _invalid(f"not a valid .nvc file: {detail}")

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.ended:
                raise self._bad(
                    f"trailing data after the end of the file: the index declares {self.file_length} bytes, "
                    "the upload has more"
                )
            if self.state == "body":
                n = min(self.left, len(view))
                piece = view[:n]
                self.crc = self.fmt.crc32c(piece, self.crc)
                if self.keep is not None:
                    self.keep += piece
                self.left -= n
                self.pos += n
                view = view[n:]
                if self.left == 0:
                    self.state = "crc"
                continue
            want = {"preamble": self.fmt.PREAMBLE.size, "head": self.fmt.CHUNK_HEAD.size, "crc": 4}[self.state]
            n = min(want - len(self.buf), len(view))
            self.buf += view[:n]
            self.pos += n
            view = view[n:]
            if len(self.buf) == want:
                piece, self.buf = bytes(self.buf), bytearray()
                getattr(self, f"_on_{self.state}")(piece)

    def _on_preamble(self, piece: bytes) -> None:
        fmt = self.fmt
        magic, version, flags = fmt.PREAMBLE.unpack(piece)
        if magic != fmt.MAGIC:
            raise _unsupported("the upload is not an .nvc file (bad magic)")
        if version not in fmt.READABLE_VERSIONS:
            if version > fmt.FORMAT_VERSION:
                raise self._bad(f"format version {version} is newer than this service reads "
                                f"(version {fmt.FORMAT_VERSION})")
            raise self._bad(f"unknown format version {version}")
        if flags != 0:
            raise self._bad(f"unknown preamble flags {flags:#x}")
        self.state = "head"

    def _on_head(self, piece: bytes) -> None:
        fmt = self.fmt
        tag, length = fmt.CHUNK_HEAD.unpack(piece)
        self.tag, self.length, self.offset = tag, length, self.pos - len(piece)
        name = fmt._tag_text(tag)
        if self.header is None and tag != fmt.TAG_HEAD:
            raise self._bad(f"the first chunk must be HEAD, found {name!r}")
        if self.file_length is not None:  # after the index: SLAB chunks where it says, then END
            if self.slabs:
                offset, slab_length = self.slabs[0]
                if tag != fmt.TAG_SLAB or self.offset != offset:
                    raise self._bad(f"expected a SLAB chunk at offset {offset}, found {name!r} at {self.offset}")
                if length != slab_length:
                    raise self._bad(f"slab at offset {offset} is {length} bytes, the index says {slab_length}")
                self.slabs.pop(0)
            elif tag != fmt.TAG_END or length != 0 or self.offset != self.file_length - fmt.CHUNK_OVERHEAD:
                raise self._bad("malformed END chunk")
        keep_limit = 0
        if tag == fmt.TAG_HEAD:
            keep_limit = 4096
        elif tag == fmt.TAG_INDX:
            h = self.header
            z_len, n_vol = h.volume_shape_zyx[0], h.n_volumes
            keep_limit = fmt.INDX_FIXED.size + fmt.VOLUME_REC.size * n_vol + fmt.SLAB_REC.size * z_len * n_vol
            if length <= keep_limit and length > MAX_NVC_INDEX_BYTES:
                raise self._bad(f"the index chunk is {length} bytes, more than the {MAX_NVC_INDEX_BYTES} the service "
                                "accepts")
        elif tag == fmt.TAG_SRCH:
            keep_limit = 1
        if tag in (fmt.TAG_HEAD, fmt.TAG_INDX) and length > keep_limit:
            raise self._bad(f"the {name!r} chunk at offset {self.offset} declares {length} bytes, more than it can hold")
        self.keep = bytearray() if keep_limit else None
        self.crc = fmt.crc32c(piece)
        self.left = length
        self.state = "body" if length else "crc"

    def _on_crc(self, piece: bytes) -> None:
        fmt = self.fmt
        (stored,) = struct.unpack("<I", piece)
        name = fmt._tag_text(self.tag)
        if stored != self.crc:
            raise self._bad(f"CRC-32C mismatch in the {name!r} chunk at offset {self.offset}: the file is corrupted")
        body = bytes(self.keep) if self.keep is not None else b""
        self.keep = None
        self.state = "head"
        tag = self.tag
        try:
            if tag == fmt.TAG_HEAD and self.header is None:
                self.header = fmt.parse_head(body)
                h = self.header
                nbytes = h.voxels * h.dtype.itemsize
                if nbytes > self.max_volume_bytes:
                    raise _too_big(h.shape, h.dtype.name, nbytes, self.max_volume_bytes)
            elif self.file_length is not None:
                if tag == fmt.TAG_END:
                    self.ended = True
            elif tag == fmt.TAG_INDX:
                self.file_length, volumes = fmt.parse_index(body, self.header, self.models, self.pos)
                self.slabs = [(s.offset, s.length) for v in volumes for s in v.slabs]
            elif tag in (fmt.TAG_META, fmt.TAG_SRCH) and tag in self.seen:
                raise fmt.FormatError(f"duplicate {fmt._tag_text(tag)} chunk")
            elif tag == fmt.TAG_SRCH:
                if len(body) < 1 or body[0] not in fmt.SOURCE_KINDS:
                    raise fmt.FormatError("SRCH chunk: unknown source header kind")
            elif tag == fmt.TAG_MODL:
                if self.models >= self.header.n_volumes:
                    raise fmt.FormatError(f"more model chunks than volumes ({self.header.n_volumes})")
                self.models += 1
            elif tag == fmt.TAG_HEAD:
                raise fmt.FormatError("unsupported critical chunk 'HEAD' after the first")
            elif tag != fmt.TAG_META and fmt._is_critical(tag):
                raise fmt.FormatError(f"unsupported critical chunk {fmt._tag_text(tag)!r} (written by a newer version?)")
            elif tag != fmt.TAG_META:
                if self.ancillary >= fmt.MAX_ANCILLARY_CHUNKS:
                    raise fmt.FormatError("too many ancillary chunks")
                self.ancillary += 1
            self.seen.add(tag)
        except fmt.FormatError as exc:
            raise self._bad(str(exc)) from None

    def header_info(self) -> tuple[VolumeInfo, int | None] | None:
        """What the header chunk fed so far declares (see VolumeUploadValidator.header_info); the
        file size is known only once the index has been read, so None here."""
        h = self.header
        if h is None:
            return None
        return VolumeInfo("nvc", tuple(int(n) for n in h.shape), h.dtype.name, h.voxels * h.dtype.itemsize), None

    def finish(self) -> VolumeInfo:
        if self.pos == 0:
            raise _unsupported("the upload is not an .nvc file (empty)")
        if self.state == "preamble":
            if NVC_MAGIC[: len(self.buf)] != bytes(self.buf):
                raise _unsupported("the upload is not an .nvc file (bad magic)")
            raise self._bad(f"truncated file: {self.pos} bytes, not even a preamble")
        if not self.ended:
            expected = f"; the index declares {self.file_length} bytes" if self.file_length is not None else ""
            raise self._bad(f"truncated file: the upload ends after {self.pos} bytes{expected}")
        h = self.header
        return VolumeInfo("nvc", tuple(int(n) for n in h.shape), h.dtype.name, h.voxels * h.dtype.itemsize)


def validator_for(kind: str, max_volume_bytes: int):
    """The validator of a `compress` or `decompress` upload."""
    if kind == "compress":
        return VolumeUploadValidator(max_volume_bytes)
    return NvcUploadValidator(max_volume_bytes)
