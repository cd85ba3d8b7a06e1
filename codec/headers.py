"""The input file formats' rules, in one place: magic numbers, header limits and the validating
header parsers of NIfTI-1/-2 (.nii, .nii.gz) and .npy.

Everything that reads these files uses this module: the codec's own reader (:mod:`codec.files`),
:func:`codec.encode` when it is handed an original NIfTI header, and the incremental check of an
upload (:mod:`codec.check`, called by the service while the bytes stream in). So a file is
accepted or refused for the same reasons everywhere. The ``.nvc`` container's own rules live in
:mod:`codec.format`.

Every refusal is an :class:`codec.UnsupportedInputError` (:class:`codec.UnrecognisedInputError`
when the bytes are not this format at all).
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np

from codec import volume as vol
from codec.errors import UnrecognisedInputError, UnsupportedInputError
from codec.format import MAGIC as NVC_MAGIC
from codec.format import MAX_TRAILING_BYTES

NIFTI1_MAGIC = b"n+1\x00"
NIFTI1_PAIR_MAGIC = b"ni1\x00"
NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"
NIFTI2_PAIR_MAGIC = b"ni2\x00\r\n\x1a\n"
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"

#: Largest NIfTI header with its extensions (vox_offset) that is read: a hostile vox_offset
#: cannot make a reader buffer more. Files compressed earlier kept at most this much too.
MAX_NIFTI_HEADER_BYTES = 64 * 2**20
#: Largest .npy header (numpy's own default `max_header_size`).
MAX_NPY_HEADER_BYTES = 10000
#: Bytes a file may hold after the voxels its header declares (`codec.format.MAX_TRAILING_BYTES`):
#: they are kept in the .nvc (TAIL chunk) and written back, so a round trip is byte for byte;
#: more is refused (a damaged file, or a decompression bomb the upload check stops inflating).


@dataclass(frozen=True)
class Layout:
    """What a volume file's header declares: enough to check sizes before reading any voxel."""

    kind: str  # "nifti1", "nifti2" or "npy"
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes before the voxels (header, extensions, padding)
    fortran_order: bool = True  # NIfTI always; .npy as its header says

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# --------------------------------------------------------------------------- NIfTI


def nifti_kind(raw: bytes | memoryview) -> tuple[str, str]:
    """("nifti1" | "nifti2", endian "<" | ">") from the first bytes of a single-file NIfTI."""
    if len(raw) < NIFTI1_HEADER_BYTES:
        raise UnrecognisedInputError("not a NIfTI file: shorter than a NIfTI-1 header")
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", bytes(raw[:4]))
        if sizeof_hdr == NIFTI1_HEADER_BYTES:
            magic = bytes(raw[344:348])
            if magic == NIFTI1_PAIR_MAGIC:
                raise UnsupportedInputError("NIfTI pairs (.hdr/.img) are not supported: convert to a single .nii file")
            if magic != NIFTI1_MAGIC:
                raise UnrecognisedInputError("not a single-file NIfTI-1 image (bad magic; Analyze 7.5 is not supported)")
            return "nifti1", endian
        if sizeof_hdr == NIFTI2_HEADER_BYTES:
            magic = bytes(raw[4:12])
            if magic == NIFTI2_PAIR_MAGIC:
                raise UnsupportedInputError("NIfTI pairs (.hdr/.img) are not supported: convert to a single .nii file")
            if magic != NIFTI2_MAGIC:
                raise UnrecognisedInputError("not a single-file NIfTI-2 image (bad magic)")
            if len(raw) < NIFTI2_HEADER_BYTES:
                raise UnsupportedInputError("truncated NIfTI-2 header")
            return "nifti2", endian
    raise UnrecognisedInputError("not a NIfTI file (sizeof_hdr is neither 348 nor 540)")


def parse_nifti_header(raw: bytes | memoryview):
    """(kind, nibabel header) of the header + extensions at the start of `raw`."""
    import nibabel as nib

    kind, _ = nifti_kind(raw)
    klass = nib.Nifti1Header if kind == "nifti1" else nib.Nifti2Header
    try:
        hdr = klass.from_fileobj(io.BytesIO(bytes(raw[:MAX_NIFTI_HEADER_BYTES])), check=False)
    except Exception as exc:  # nibabel raises a zoo of types on broken headers
        raise UnsupportedInputError(f"broken {kind} header: {exc}") from None
    return kind, hdr


def nifti_offset(raw: bytes | memoryview) -> int:
    """vox_offset from the fixed header alone (how many bytes the header with its extensions
    needs), checked against :data:`MAX_NIFTI_HEADER_BYTES`."""
    kind, _ = nifti_kind(raw)
    fixed = NIFTI1_HEADER_BYTES if kind == "nifti1" else NIFTI2_HEADER_BYTES
    _, hdr = parse_nifti_header(bytes(raw[:fixed]) + b"\0\0\0\0")  # extension flag cleared
    return _nifti_layout(kind, hdr).data_offset


def _nifti_layout(kind: str, hdr) -> Layout:
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        offset = int(hdr.get_data_offset())
    except Exception as exc:
        raise UnsupportedInputError(f"broken {kind} header: {exc}") from None
    minimum = NIFTI1_HEADER_BYTES if kind == "nifti1" else NIFTI2_HEADER_BYTES
    if offset < minimum:
        raise UnsupportedInputError(f"{kind} header: vox_offset {offset} is inside the header")
    if offset > MAX_NIFTI_HEADER_BYTES:
        raise UnsupportedInputError(
            f"{kind} header: vox_offset {offset} (header + extensions) is larger than {MAX_NIFTI_HEADER_BYTES} bytes"
        )
    return Layout(kind, shape, dtype, offset)


def nifti_layout(raw: bytes | memoryview) -> tuple[Layout, object]:
    """The checked layout (and nibabel header) of a NIfTI file whose header + extensions are in
    `raw`: a supported integer dtype, 2-4 dimensions, at most 2**31 voxels."""
    kind, hdr = parse_nifti_header(raw)
    layout = _nifti_layout(kind, hdr)
    if any(n < 0 for n in layout.shape):
        raise UnsupportedInputError(f"{kind} header declares shape {layout.shape}: a dimension is negative")
    if layout.dtype.kind not in "ui" or layout.dtype.fields is not None:
        raise UnsupportedInputError(
            f"NIfTI data type {layout.dtype} is not supported: the codec is lossless for integer volumes only"
        )
    vol.check_dtype_shape(layout.dtype, layout.shape)
    return layout, hdr


def nifti_spacing(hdr) -> tuple[float, ...] | None:
    """The header's zooms when every one is a valid spacing (see `codec.volume.check_spacing`),
    else None (the original header, kept whole, still has them)."""
    try:
        return vol.check_spacing(tuple(float(z) for z in hdr.get_zooms()), len(hdr.get_data_shape()))
    except (UnsupportedInputError, ValueError, TypeError):
        return None


def check_nifti_header(raw: bytes, array: np.ndarray) -> str:
    """Check that `raw` (header bytes up to vox_offset) describes `array`; returns "nifti1" | "nifti2"."""
    kind, hdr = parse_nifti_header(raw)
    layout = _nifti_layout(kind, hdr)
    if len(raw) > layout.data_offset:
        raise UnsupportedInputError(f"{kind} header bytes ({len(raw)}) extend past vox_offset ({layout.data_offset})")
    if layout.shape != tuple(array.shape):
        raise UnsupportedInputError(f"{kind} header describes shape {layout.shape}, the array has {array.shape}")
    if layout.dtype != array.dtype:
        raise UnsupportedInputError(
            f"{kind} header describes dtype {layout.dtype.str}, the array has {array.dtype.str}"
        )
    return kind


# --------------------------------------------------------------------------- .npy


def npy_header_length(raw: bytes | memoryview) -> int | None:
    """Bytes of the whole .npy header (magic to data) from its first 12 bytes; None: need more."""
    if len(raw) < 8:
        return None
    if bytes(raw[:6]) != NPY_MAGIC:
        raise UnrecognisedInputError("not a .npy file (bad magic)")
    major = raw[6]
    size_bytes = 2 if major == 1 else 4
    if len(raw) < 8 + size_bytes:
        return None
    header_len = int.from_bytes(bytes(raw[8 : 8 + size_bytes]), "little")
    if header_len > MAX_NPY_HEADER_BYTES:
        raise UnsupportedInputError(
            f"broken .npy header: {header_len} header bytes (at most {MAX_NPY_HEADER_BYTES} are read)"
        )
    return 8 + size_bytes + header_len


def npy_layout(raw: bytes | memoryview) -> Layout:
    """The checked layout of the .npy file starting with `raw` (which must hold the whole header)."""
    fp = io.BytesIO(bytes(raw))
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise UnsupportedInputError(f".npy format version {version} is not supported")
    except UnsupportedInputError:
        raise
    except Exception as exc:
        raise UnsupportedInputError(f"broken .npy header: {exc}") from None
    if dtype.hasobject:
        raise UnsupportedInputError(".npy holds an object (pickled) array: refused; save a plain integer array")
    vol.check_dtype_shape(dtype, tuple(shape))
    return Layout("npy", tuple(int(n) for n in shape), dtype, fp.tell(), bool(fortran))


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The header `numpy.save` writes for a decoded array of `shape` and `dtype` (decoded arrays
    are Fortran-ordered, NIfTI's order): what a fresh .npy of it starts with."""
    fortran = sum(n > 1 for n in shape) > 1  # numpy says C order for arrays that are both
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": fortran, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:  # numpy.save's own choice: version 1.0 unless the header does not fit, then 2.0
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def check_npy_header(raw: bytes, array: np.ndarray) -> None:
    """Check that `raw` (a whole .npy header) describes `array`."""
    layout = npy_layout(raw)
    if layout.data_offset != len(raw):
        raise UnsupportedInputError(f".npy header is {layout.data_offset} bytes, {len(raw)} were given")
    if layout.shape != tuple(array.shape) or layout.dtype != array.dtype:
        raise UnsupportedInputError(
            f".npy header describes {layout.dtype.str}{layout.shape}, the array is {array.dtype.str}{array.shape}"
        )


# --------------------------------------------------------------------------- detection


def sniff(head: bytes | memoryview) -> str | None:
    """"nvc", "gzip", "npy", "zip", "nii" or None from the first bytes of a file (at least 352
    for NIfTI-1; fewer bytes answer what they can)."""
    head = bytes(head)
    if head.startswith(NVC_MAGIC):
        return "nvc"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    try:
        nifti_kind(head)
    except UnrecognisedInputError:
        return None
    except UnsupportedInputError:
        return "nii"
    return "nii"


def check_trailing(extra: int, what: str) -> None:
    """Refuse more than :data:`MAX_TRAILING_BYTES` after the voxels a header declares."""
    if extra > MAX_TRAILING_BYTES:
        raise UnsupportedInputError(
            f"{what} holds {extra} bytes after the voxels its header declares, more than the {MAX_TRAILING_BYTES} "
            "that are kept: refused (damaged, or a decompression bomb)"
        )
