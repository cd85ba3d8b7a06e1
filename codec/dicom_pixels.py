"""One DICOM file: can its pixel data go through the codec, and how to put it back byte for byte.

Parsing is pydicom's (never a hand-written DICOM parser). What this module adds is the
mapping between the *bytes* of a file and the integers the codec sees:

* pydicom reads the file with deferred values and reports where the value of the top-level
  Pixel Data element (7FE0,0010) starts (``RawDataElement.value_tell``). The file is then
  ``prefix | pixel bytes | suffix``: prefix and suffix (preamble, file meta, every other
  element in its original encoding, the pad byte of an odd length, trailing bytes) are kept
  verbatim; only the pixel bytes are replaced by coded values.
* The pixel bytes are words of BitsAllocated (8, 16 or 32) bits in the file's byte order. The
  *value* of a sample is the BitsStored-bit field ending at HighBit, sign-extended when
  PixelRepresentation is 1 - what a viewer shows. Any other bits of a word (junk above
  BitsStored) are the *residual*, kept verbatim beside the header when not all zero.
* Colour (SamplesPerPixel > 1) is coded plane by plane: sample planes become slices.
* 1-bit images (BitsAllocated 1: segmentations, masks) are a bit stream: pixel `i` of the whole
  object - frames are packed one after the other, not byte-aligned per frame - is bit `i % 8`
  (least significant first) of byte `i // 8`, in every transfer syntax (pydicom's `unpack_bits`).
  The values are 0/1 planes; the bits after the last pixel in its byte (the padding) are the
  residual, kept beside the header when not all zero.

Anything this mapping cannot describe exactly - a compressed or deflated transfer syntax, no
Pixel Data, 12-bit-packed words, lengths that do not add up, a file pydicom cannot
read - is *not an error*: the file is stored verbatim with the reason (:class:`Verbatim`).
Every mapped file is re-serialised from its values and compared with the original bytes
before it is trusted (:func:`analyse`).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Native (uncompressed) transfer syntaxes whose pixel bytes are plain words.
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
}
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
#: Largest number of voxels one file's frames may declare before it is stored verbatim.
MAX_FILE_VOXELS = 2**31


@dataclass(frozen=True)
class PixelLayout:
    """How the pixel bytes of one file map to integer planes (all fields as the file says)."""

    offset: int  # byte offset of the first pixel byte (the Pixel Data value) in the file
    length: int  # number of pixel bytes: packed_length(frames * rows * columns * samples, bits_allocated)
    frames: int
    rows: int
    columns: int
    samples: int  # SamplesPerPixel
    planar: int  # PlanarConfiguration: 0 interleaved (r g b r g b), 1 by plane
    bits_allocated: int  # 1, 8, 16 or 32
    bits_stored: int
    high_bit: int
    signed: bool  # PixelRepresentation 1
    big_endian: bool

    @property
    def planes(self) -> int:
        """Slices this file contributes to a volume: one per sample per frame."""
        return self.frames * self.samples

    @property
    def values(self) -> int:
        """Pixel values (samples) the file holds: frames x rows x columns x samples."""
        return self.frames * self.rows * self.columns * self.samples

    @property
    def value_dtype(self) -> np.dtype:
        if self.bits_allocated == 1:
            return np.dtype("u1")
        return np.dtype(f"{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def residual_length(self) -> int:
        """Bytes of the residual when the file has one: every word (`length`), or for 1-bit
        data the last byte, which holds padding bits after the last pixel (0 when there are none)."""
        if self.bits_allocated == 1:
            return self.length - self.values // 8
        return self.length

    @property
    def word_dtype(self) -> np.dtype:
        n = self.bits_allocated // 8
        return np.dtype(f"{'>' if self.big_endian and n > 1 else '<'}u{n}")

    @property
    def shift(self) -> int:
        return self.high_bit + 1 - self.bits_stored

    @property
    def mask(self) -> int:
        return (1 << self.bits_stored) - 1

    def as_record(self) -> dict:
        return {
            "offset": self.offset, "length": self.length, "frames": self.frames, "rows": self.rows,
            "columns": self.columns, "samples": self.samples, "planar": self.planar,
            "bits_allocated": self.bits_allocated, "bits_stored": self.bits_stored, "high_bit": self.high_bit,
            "signed": self.signed, "big_endian": self.big_endian,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "PixelLayout":
        return cls(**{k: rec[k] for k in (
            "offset", "length", "frames", "rows", "columns", "samples", "planar", "bits_allocated", "bits_stored",
            "high_bit", "signed", "big_endian")})


def packed_length(values: int, bits_allocated: int) -> int:
    """Pixel bytes of `values` samples: whole words, or for 1-bit data ceil(values / 8) bytes."""
    return (values + 7) // 8 if bits_allocated == 1 else values * bits_allocated // 8


def check_layout(p: PixelLayout) -> str | None:
    """Why `p` is not a layout this module can map, or None when it is (also used on archive indexes)."""
    if p.bits_allocated not in (1, 8, 16, 32):
        return f"BitsAllocated {p.bits_allocated} (only 1, 8, 16 and 32 are coded)"
    if p.bits_allocated == 1 and (p.bits_stored, p.high_bit, p.signed, p.samples) != (1, 0, False, 1):
        return "1-bit pixel data with BitsStored, HighBit, PixelRepresentation or SamplesPerPixel other than 1, 0, 0, 1"
    if not 1 <= p.bits_stored <= p.bits_allocated:
        return f"BitsStored {p.bits_stored} with BitsAllocated {p.bits_allocated}"
    if not p.bits_stored - 1 <= p.high_bit < p.bits_allocated:
        return f"HighBit {p.high_bit} with BitsStored {p.bits_stored} and BitsAllocated {p.bits_allocated}"
    if min(p.rows, p.columns, p.frames, p.samples) < 1:
        return f"empty image ({p.rows} x {p.columns}, {p.frames} frames, {p.samples} samples)"
    if p.samples > 4 or p.planar not in (0, 1):
        return f"SamplesPerPixel {p.samples} / PlanarConfiguration {p.planar}"
    voxels = p.rows * p.columns * p.frames * p.samples
    if voxels > MAX_FILE_VOXELS:
        return f"{voxels} pixel values declared, more than {MAX_FILE_VOXELS}"
    if p.length != packed_length(voxels, p.bits_allocated) or p.offset < 0:
        return "pixel byte count does not match Rows x Columns x Frames x Samples"
    return None


@dataclass(frozen=True)
class SeriesTags:
    """The header values an archive may show: nothing that identifies a patient."""

    series_uid: str
    modality: str
    description: str
    study_uid: str


@dataclass(frozen=True)
class Geometry:
    """What orders and splits the slices of a series (None where the file does not say)."""

    orientation: tuple[float, ...] | None  # ImageOrientationPatient, rounded
    position: tuple[float, ...] | None  # ImagePositionPatient
    instance: int | None  # InstanceNumber

    def along_normal(self) -> float | None:
        if self.orientation is None or self.position is None:
            return None
        r, c = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        return float(np.dot(np.cross(r, c), np.array(self.position)))


@dataclass
class Analysed:
    """A file that can be coded: its layout, series, geometry and integer planes."""

    layout: PixelLayout
    series: SeriesTags
    geometry: Geometry
    values: np.ndarray  # (planes, rows, columns) in layout.value_dtype
    residual: bytes  # the non-value bits of every word (file byte order), b"" when all zero


@dataclass
class Verbatim:
    """A file stored as it is, and why (DICOM files keep their series for `info`)."""

    reason: str
    series: SeriesTags | None
    is_dicom: bool


# --------------------------------------------------------------------------- reading


def _text(ds, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()[:256]
    except Exception:  # a malformed value must not stop the analysis
        return ""


def _series(ds) -> SeriesTags:
    return SeriesTags(
        series_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality"),
        description=_text(ds, "SeriesDescription"),
        study_uid=_text(ds, "StudyInstanceUID"),
    )


def _floats(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        out = tuple(float(v) for v in value)
        return out if len(out) == n and all(math.isfinite(v) for v in out) else None
    except Exception:
        return None


def _geometry(ds) -> Geometry:
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    if orientation is not None:
        orientation = tuple(round(v, 4) for v in orientation)
    try:
        instance = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except Exception:
        instance = None
    return Geometry(orientation=orientation, position=_floats(ds, "ImagePositionPatient", 3), instance=instance)


class HeaderFieldError(ValueError):
    """An image attribute the pixel mapping needs is missing or not an integer. The message names
    the attribute, never its value (header values stay out of records and logs)."""


def _int(ds, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
    except Exception:  # pydicom converts the value lazily: a malformed one raises here
        raise HeaderFieldError(f"{keyword} is not readable") from None
    if value is None or value == "":
        if default is None:
            raise HeaderFieldError(f"no {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HeaderFieldError(f"{keyword} is not an integer") from None


@contextmanager
def quiet_pydicom():
    """pydicom warns (and logs) about odd values *quoting them*: header values must never reach a
    log (they may name the patient), so its warnings and log records are silenced while it reads."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _raw_dataset_start(data: bytes) -> bool:
    """A data set without preamble starts with a group 0x0002 or 0x0008 element (either byte order)."""
    if len(data) < 8:
        return False
    return int.from_bytes(data[:2], "little") in (0x0002, 0x0008) or int.from_bytes(data[:2], "big") in (0x0002, 0x0008)


def read_dataset(data: bytes):
    """pydicom's dataset with deferred values, and whether the file has the DICM preamble.

    Files without the preamble (raw data sets) are read with ``force=True``; such a read only
    counts as DICOM when it finds a SOP Class UID or Pixel Data.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    if not has_preamble and not _raw_dataset_start(data):
        return None, False  # not worth a forced parse (which walks any bytes as elements)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=64, force=not has_preamble)
    except InvalidDicomError:
        return None, has_preamble
    if not has_preamble:
        try:
            tags = set(ds.keys())
        except Exception:
            return None, False
        if 0x00080016 not in tags and PIXEL_DATA_TAG not in tags:
            return None, False
    return ds, has_preamble


def is_dicom(data: bytes) -> bool:
    """Whether pydicom reads `data` as a DICOM data set (the upload check uses this)."""
    with quiet_pydicom():
        try:
            ds, _ = read_dataset(data)
        except Exception:
            return len(data) >= 132 and data[128:132] == b"DICM"
    return ds is not None


def analyse(data: bytes) -> Analysed | Verbatim:
    """Decide how one file is archived. Never raises for bad input: bad input is stored verbatim."""
    with quiet_pydicom():
        try:
            ds, has_preamble = read_dataset(data)
        except Exception as exc:  # pydicom raises many types on broken files
            has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
            return Verbatim(f"not readable as DICOM ({type(exc).__name__})", None, has_preamble)
        if ds is None:
            return Verbatim("not a DICOM file", None, False)
        try:
            series = _series(ds)
        except Exception:
            series = SeriesTags("", "", "", "")
        try:
            return _analyse_dataset(ds, data, series)
        except HeaderFieldError as exc:
            return Verbatim(f"pixel data not mappable: {exc}", series, True)
        except Exception as exc:
            return Verbatim(f"pixel data not mappable ({type(exc).__name__})", series, True)


def _analyse_dataset(ds, data: bytes, series: SeriesTags) -> Analysed | Verbatim:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax == DEFLATED_SYNTAX:
        return Verbatim("deflated transfer syntax", series, True)
    if PIXEL_DATA_TAG not in ds:
        return Verbatim("not an image (no Pixel Data)", series, True)
    raw = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    if not hasattr(raw, "value_tell"):
        return Verbatim("pixel data not mappable", series, True)
    if raw.length == UNDEFINED_LENGTH or (syntax and syntax not in NATIVE_SYNTAXES):
        name = syntax or "encapsulated"
        try:
            from pydicom.uid import UID

            name = UID(syntax).name if syntax else "encapsulated pixel data"
        except Exception:
            pass
        return Verbatim(f"compressed transfer syntax ({name})", series, True)
    frames = _int(ds, "NumberOfFrames", 1)
    samples = _int(ds, "SamplesPerPixel", 1)
    columns = _int(ds, "Columns")
    if samples == 3 and _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        # 4:2:2 chroma subsampling stores Y Y Cb Cr per pair of pixels: two bytes per pixel,
        # coded as one plane twice as wide (the bytes as they are)
        samples, columns = 1, 2 * columns
    layout = PixelLayout(
        offset=int(raw.value_tell),
        length=0,
        frames=frames,
        rows=_int(ds, "Rows"),
        columns=columns,
        samples=samples,
        planar=_int(ds, "PlanarConfiguration", 0) if samples > 1 else 0,
        bits_allocated=_int(ds, "BitsAllocated"),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated")),
        high_bit=_int(ds, "HighBit", _int(ds, "BitsStored", _int(ds, "BitsAllocated")) - 1),
        signed=_int(ds, "PixelRepresentation", 0) == 1,
        big_endian=not raw.is_little_endian,
    )
    n_bytes = packed_length(layout.values, layout.bits_allocated)
    layout = PixelLayout(**{**layout.__dict__, "length": n_bytes})
    why = check_layout(layout)
    if why:
        return Verbatim(why, series, True)
    if raw.length < n_bytes:
        return Verbatim(f"Pixel Data holds {raw.length} bytes, Rows x Columns x Frames needs {n_bytes}", series, True)
    if layout.offset + n_bytes > len(data):
        return Verbatim("truncated pixel data", series, True)
    values, residual = extract(data, layout)
    if pixel_bytes(values, residual, layout) != data[layout.offset : layout.offset + n_bytes]:
        return Verbatim("pixel data does not re-serialise exactly", series, True)  # defensive: never trust blindly
    return Analysed(layout=layout, series=series, geometry=_geometry(ds), values=values, residual=residual)


# --------------------------------------------------------------------------- words <-> values


def _planes_view(words: np.ndarray, p: PixelLayout) -> np.ndarray:
    """(planes, rows, columns) view of the file's words, whatever the planar configuration."""
    if p.samples == 1:
        return words.reshape(p.frames, p.rows, p.columns)
    if p.planar == 0:
        return words.reshape(p.frames, p.rows, p.columns, p.samples).transpose(0, 3, 1, 2).reshape(
            p.planes, p.rows, p.columns)
    return words.reshape(p.planes, p.rows, p.columns)


def _extract_bits(data: bytes, p: PixelLayout) -> tuple[np.ndarray, bytes]:
    """1-bit data: 0/1 planes, and the last byte as residual when its padding bits are not all zero."""
    packed = np.frombuffer(data, dtype=np.uint8, count=p.length, offset=p.offset)
    bits = np.unpackbits(packed, count=p.values, bitorder="little")
    residual = b""
    used = p.values % 8
    if used and packed[-1] >> used:
        residual = bytes([int(packed[-1]) & (0xFF << used) & 0xFF])
    return bits.reshape(p.frames, p.rows, p.columns), residual


def _bits_bytes(values: np.ndarray, residual: bytes, p: PixelLayout) -> bytes:
    """Inverse of :func:`_extract_bits` (values other than 0 and 1 cannot come back: refused)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.size != p.values:
        raise ValueError("1-bit planes do not match the pixel count")
    if flat.size and flat.max() > 1:
        raise ValueError("1-bit planes hold values other than 0 and 1")
    packed = np.packbits(flat.astype(np.uint8, copy=False), bitorder="little")
    if residual:
        if len(residual) != p.residual_length or p.residual_length != 1:
            raise ValueError("1-bit padding bits do not match the pixel count")
        packed[-1] |= residual[0]
    return packed.tobytes()


def extract(data: bytes, p: PixelLayout) -> tuple[np.ndarray, bytes]:
    """The integer planes (values) and the residual bits of one file's pixel bytes."""
    if p.bits_allocated == 1:
        return _extract_bits(data, p)
    words = np.frombuffer(data, dtype=p.word_dtype, count=p.length // p.word_dtype.itemsize, offset=p.offset)
    native = words.astype(p.word_dtype.newbyteorder("="))
    field = (native >> p.shift) & native.dtype.type(p.mask) if p.shift or p.bits_stored < p.bits_allocated else native
    rest = native & ~native.dtype.type(p.mask << p.shift) if p.bits_stored < p.bits_allocated else None
    residual = b""
    if rest is not None and rest.any():
        residual = rest.astype(p.word_dtype).tobytes()
    if p.signed:
        wide = field.astype(np.int64)
        if p.bits_stored < 64:
            wide = np.where(wide >= (1 << (p.bits_stored - 1)), wide - (1 << p.bits_stored), wide)
        values = wide.astype(p.value_dtype)
    else:
        values = field.astype(p.value_dtype)
    return np.ascontiguousarray(_planes_view(values, p)), residual


def pixel_bytes(values: np.ndarray, residual: bytes, p: PixelLayout) -> bytes:
    """The exact pixel bytes of a file from its planes (``(planes, rows, columns)``) and residual."""
    if p.bits_allocated == 1:
        return _bits_bytes(values, residual, p)
    unsigned = np.dtype(f"u{p.bits_allocated // 8}")
    planes = np.asarray(values).astype(p.value_dtype, copy=False).view(unsigned)
    if p.samples > 1 and p.planar == 0:
        planes = planes.reshape(p.frames, p.samples, p.rows, p.columns).transpose(0, 2, 3, 1)
    words = np.ascontiguousarray(planes).reshape(-1)
    if p.bits_stored < p.bits_allocated or p.shift:
        words = (words & unsigned.type(p.mask)) << unsigned.type(p.shift)
        if residual:
            rest = np.frombuffer(residual, dtype=p.word_dtype).astype(unsigned)
            if rest.size != words.size:
                raise ValueError("residual bits do not match the pixel count")
            words = words | rest
    return words.astype(p.word_dtype, copy=False).tobytes()
