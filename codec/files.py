"""Files in and out: NIfTI-1/-2 (.nii, .nii.gz) and .npy <-> .nvc.

NIfTI fidelity: the voxels are the *stored* integers (what ``img.dataobj.get_unscaled()`` returns;
scl_slope/scl_inter are never applied) in the stored dtype, and the header is kept as the original
raw bytes - the nifti1/nifti2 header, the extension flag, every extension and any padding up to
vox_offset - in the container's SRCH chunk, and any bytes after the voxel data (at most
``codec.format.MAX_TRAILING_BYTES``; more is refused) in its TAIL chunk. Decompressing to .nii
writes those bytes back around the voxels, so the .nii is byte-identical to the (uncompressed)
original, and every header field (affine, zooms, scaling, description, intent, extensions)
round-trips exactly.

.npy: plain integer arrays only; object/pickled arrays and structured dtypes are refused. The
array header is validated against the bytes present before anything is allocated; it is kept
when ``numpy.save`` would not write the same one, and trailing bytes are kept as for NIfTI, so
a .npy round trip is byte for byte too.

The header rules (magic numbers, limits, parsers) are in :mod:`codec.headers`; this module
reads and writes whole files and calls :mod:`codec.api` (which never imports it back).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec import api, headers
from codec.api import codec_errors
from codec.errors import FormatError, UnrecognisedInputError, UnsupportedInputError
from codec.naming import FORMATS, NVC_SUFFIX, compressed_name, decompressed_name  # noqa: F401  (re-exported)
from codec.progress import Progress


@dataclass
class VolumeFile:
    """A volume read from a file: the stored integers and what is needed to write it back."""

    array: np.ndarray  # NIfTI axis order, exact stored dtype
    spacing: tuple[float, ...] | None
    nifti_header: bytes | None  # raw header + extensions up to vox_offset (NIfTI input only)
    source_format: str  # "nii", "nii.gz" or "npy"
    npy_header: bytes | None = None  # raw .npy header, magic to data (.npy input only)
    trailing_bytes: bytes = b""  # what the file held after its voxels


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(raw: bytes | bytearray, source_format: str) -> VolumeFile:
    layout, hdr = headers.nifti_layout(raw)
    offset, nbytes = layout.data_offset, layout.data_bytes
    if offset + nbytes > len(raw):
        raise UnsupportedInputError(
            f"truncated NIfTI file: {layout.kind} header needs {offset + nbytes} bytes of data, the file has {len(raw)}"
        )
    headers.check_trailing(len(raw) - offset - nbytes, "the NIfTI file")
    # The stored integers, exactly as nibabel's dataobj.get_unscaled() reads them (x fastest).
    count = math.prod(layout.shape)
    array = np.frombuffer(raw, dtype=layout.dtype, count=count, offset=offset).reshape(layout.shape, order="F")
    return VolumeFile(array=array, spacing=headers.nifti_spacing(hdr), nifti_header=bytes(raw[:offset]),
                      source_format=source_format, trailing_bytes=bytes(raw[offset + nbytes :]))


def nifti_bytes(array: np.ndarray, *, nifti_header: bytes | None = None, spacing=None, trailing: bytes = b"") -> bytes:
    """An uncompressed single-file .nii for `array`.

    With `nifti_header` (the raw bytes kept at compression) the original bytes are written back
    verbatim, then the voxels, then `trailing` (what the original held after them); without, a
    fresh NIfTI-1 header is made from the dtype, shape and spacing.
    """
    if nifti_header:
        try:
            layout, _ = headers.nifti_layout(nifti_header)
        except UnsupportedInputError as exc:
            raise FormatError(f"stored NIfTI header is invalid: {exc}") from None
        if layout.shape != tuple(array.shape) or layout.dtype != array.dtype or len(nifti_header) > layout.data_offset:
            raise FormatError(f"stored NIfTI header describes {layout.dtype.str}{layout.shape}, the data is "
                              f"{array.dtype.str}{tuple(array.shape)}")
        pad = b"\x00" * (layout.data_offset - len(nifti_header))
        return b"".join([nifti_header, pad, np.asarray(array, dtype=layout.dtype).tobytes(order="F"), trailing])
    import nibabel as nib

    data = np.asarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    zooms = [1.0] * data.ndim
    if spacing:
        for i, s in enumerate(spacing[: data.ndim]):
            zooms[i] = float(s)
    affine = np.diag([*([z or 1.0 for z in zooms] + [1.0, 1.0])[:3], 1.0])  # a 0 zoom ("unknown") scales by 1
    try:
        img = nib.Nifti1Image(data, affine, dtype=data.dtype)
        img.header.set_zooms(zooms)
        img.header.set_xyzt_units("mm", "sec")
        return img.to_bytes() + trailing
    except Exception as exc:  # nibabel's HeaderDataError & co: the stored spacing cannot be a NIfTI header
        raise FormatError(f"cannot write a NIfTI header for spacing {tuple(zooms)}: {exc}; decompress to .npy") from None


# --------------------------------------------------------------------------- .npy


def _read_npy(raw: bytes | bytearray) -> VolumeFile:
    need = headers.npy_header_length(raw)
    if need is None or need > len(raw):
        raise UnsupportedInputError("truncated .npy: the file ends inside its header")
    layout = headers.npy_layout(raw[:need])
    count = math.prod(layout.shape)
    offset, nbytes = layout.data_offset, layout.data_bytes
    if offset + nbytes > len(raw):
        raise UnsupportedInputError(f"truncated .npy: {nbytes} bytes of data declared, {len(raw) - offset} present")
    headers.check_trailing(len(raw) - offset - nbytes, "the .npy file")
    order = "F" if layout.fortran_order else "C"
    array = np.frombuffer(raw, dtype=layout.dtype, count=count, offset=offset).reshape(layout.shape, order=order)
    return VolumeFile(array=array, spacing=None, nifti_header=None, source_format="npy",
                      npy_header=bytes(raw[:offset]), trailing_bytes=bytes(raw[offset + nbytes :]))


def npy_bytes(array: np.ndarray, *, npy_header: bytes | None = None, trailing: bytes = b"") -> bytes:
    """A .npy of `array`: with `npy_header` (kept at compression) that header and the voxels in the
    order it declares, then `trailing`; without, what ``numpy.save`` writes."""
    if npy_header:
        try:
            layout = headers.npy_layout(npy_header)
        except UnsupportedInputError as exc:
            raise FormatError(f"stored .npy header is invalid: {exc}") from None
        if layout.shape != tuple(array.shape) or layout.dtype != array.dtype or layout.data_offset != len(npy_header):
            raise FormatError(f"stored .npy header describes {layout.dtype.str}{layout.shape}, the data is "
                              f"{array.dtype.str}{tuple(array.shape)}")
        order = "F" if layout.fortran_order else "C"
        return b"".join([npy_header, np.asarray(array, dtype=layout.dtype).tobytes(order=order), trailing])
    array = np.asarray(array)
    head = headers.npy_header(array.shape, array.dtype)
    fortran = headers.npy_layout(head).fortran_order
    return b"".join([head, array.tobytes(order="F" if fortran else "C"), trailing])


# --------------------------------------------------------------------------- detection, reading


def _gunzip(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UnsupportedInputError(f"broken gzip data: {exc}") from None


@codec_errors
def read_volume_bytes(data: bytes | bytearray) -> VolumeFile:
    """Read a volume from the bytes of a .nii, .nii.gz or .npy file (format detected by magic)."""
    fmt_name = "nii"
    if headers.sniff(data[:8]) == "gzip":
        data = _gunzip(bytes(data))
        fmt_name = "nii.gz"
    kind = headers.sniff(data[:352])
    if kind == "npy":
        if fmt_name == "nii.gz":
            raise UnrecognisedInputError("gzip-compressed .npy is not supported")
        return _read_npy(data)
    if kind == "nvc":
        raise UnrecognisedInputError("input is already an .nvc file (use decompress)")
    if kind == "zip":
        raise UnrecognisedInputError(".npz archives are not supported: save one array as .npy")
    if len(data) >= headers.NIFTI1_HEADER_BYTES:
        return _read_nifti(data, fmt_name)
    raise UnrecognisedInputError("unrecognised input: expected a NIfTI (.nii, .nii.gz) or .npy file")


def _read_path(path: Path) -> bytearray:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        n = f.readinto(buf)
        if n != size:
            del buf[n:]
        return buf


def read_volume(src: str | os.PathLike | bytes | bytearray) -> VolumeFile:
    """Read a .nii / .nii.gz / .npy file (path) or its bytes; the format is detected by magic."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return read_volume_bytes(bytes(src) if isinstance(src, memoryview) else src)
    path = Path(src)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    return read_volume_bytes(_read_path(path))


def output_format(dst: str | os.PathLike) -> str:
    """"nii.gz", "nii" or "npy" from a file name's ending."""
    name = str(dst).lower()
    for suffix, fmt_name in FORMATS.items():
        if name.endswith(suffix):
            return fmt_name
    raise UnsupportedInputError(f"cannot tell the output format of {dst}: use a name ending in .nii.gz, .nii or .npy")


def volume_bytes(array: np.ndarray, fmt_name: str, *, nifti_header: bytes | None = None, spacing=None,
                 npy_header: bytes | None = None, trailing: bytes = b"") -> bytes:
    """Serialise `array` as a file of format `fmt_name` ("nii.gz", "nii" or "npy").

    The original header and `trailing` bytes are written back when the output has the source's
    format (NIfTI header to .nii/.nii.gz, .npy header to .npy): a round trip is byte for byte. A
    different format gets a fresh header and no trailing bytes (they belong to the source format).
    """
    if fmt_name == "npy":
        return npy_bytes(array, npy_header=npy_header, trailing=trailing if nifti_header is None else b"")
    if fmt_name not in ("nii", "nii.gz"):
        raise UnsupportedInputError(f"unknown output format {fmt_name!r} (nii.gz, nii, npy)")
    raw = nifti_bytes(array, nifti_header=nifti_header, spacing=spacing, trailing=trailing if nifti_header else b"")
    if fmt_name == "nii":
        return raw
    return gzip.compress(raw, compresslevel=6, mtime=0)


def write_volume(dst, array: np.ndarray, *, nifti_header: bytes | None = None, spacing=None, fmt_name: str | None = None,
                 npy_header: bytes | None = None, trailing: bytes = b"") -> Path:
    """Write `array` to `dst` (format from the extension unless `fmt_name`), atomically."""
    fmt_name = fmt_name or output_format(dst)
    return write_bytes(dst, volume_bytes(array, fmt_name, nifti_header=nifti_header, spacing=spacing,
                                         npy_header=npy_header, trailing=trailing))


def _umask() -> int:
    """The process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(dst, data: bytes) -> Path:
    """Write via a temporary file in the same folder, then rename: never a half-written output."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent if str(dst.parent) else ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dst


# --------------------------------------------------------------------------- compress / decompress


def _encode_file(vf: VolumeFile, profile: str, progress: Progress) -> bytes:
    return api.encode(vf.array, spacing=vf.spacing, nifti_header=vf.nifti_header, npy_header=vf.npy_header,
                      trailing_bytes=vf.trailing_bytes, profile=profile, progress=progress)


def compress_bytes(data: bytes | bytearray, *, profile: str = "default", progress: Progress = None) -> bytes:
    """.nii / .nii.gz / .npy bytes -> .nvc bytes (keeps the original header and any trailing bytes)."""
    return _encode_file(read_volume_bytes(data), profile, progress)


def compress_file(src, dst=None, *, profile: str = "default", progress: Progress = None) -> Path:
    """Compress a .nii / .nii.gz / .npy file to .nvc (default name: `src` + ".nvc"). Returns the output path."""
    src = Path(src)
    data = _encode_file(read_volume(src), profile, progress)
    return write_bytes(Path(dst) if dst is not None else src.with_name(compressed_name(src.name)), data)


def default_output(src: Path, source_kind: str | None) -> Path:
    """Where `decompress_file` writes by default: the naming rule of `codec.naming`."""
    return src.with_name(decompressed_name(src.name, from_nifti=source_kind in ("nifti1", "nifti2")))


def _decoded_bytes(dec: api.Decoded, fmt_name: str) -> bytes:
    return volume_bytes(dec.array, fmt_name, nifti_header=dec.nifti_header, spacing=dec.spacing,
                        npy_header=dec.npy_header, trailing=dec.trailing_bytes)


def decompress_to_bytes(data, fmt_name: str | None = None, *, progress: Progress = None) -> tuple[bytes, str]:
    """.nvc data -> (file bytes, format). Default format: .nii for NIfTI input, .npy otherwise."""
    dec = api.read(data, progress=progress)
    fmt_name = fmt_name or ("nii" if dec.nifti_header else "npy")
    return _decoded_bytes(dec, fmt_name), fmt_name


def decompress_file(src, dst=None, *, progress: Progress = None) -> Path:
    """Decompress an .nvc file; the output format follows `dst`'s extension (.nii.gz, .nii, .npy).

    Without `dst`: `src` minus ".nvc" (e.g. scan.nii.gz.nvc -> scan.nii.gz).
    """
    src = Path(src)
    with open(src, "rb") as f:
        dec = api.read(f, progress=progress)
    out = Path(dst) if dst is not None else default_output(src, dec.source_kind)
    return write_bytes(out, _decoded_bytes(dec, output_format(out)))
