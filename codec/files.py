"""Files in and out: NIfTI-1/-2 (.nii, .nii.gz) and .npy <-> .nvc.

NIfTI fidelity: the voxels are the *stored* integers (what ``img.dataobj.get_unscaled()`` returns;
scl_slope/scl_inter are never applied) in the stored dtype, and the header is kept as the original
raw bytes - the nifti1/nifti2 header, the extension flag, every extension and any padding up to
vox_offset - in the container's SRCH chunk. Decompressing to .nii writes those bytes back followed
by the voxels, so the .nii is byte-identical to the (uncompressed) original up to the end of the
voxel data, and every header field (affine, zooms, scaling, description, intent, extensions)
round-trips exactly.

.npy: plain integer arrays only; object/pickled arrays and structured dtypes are refused. The
array header is validated against the bytes present before anything is allocated.
"""

from __future__ import annotations

import gzip
import zlib
import io
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from codec import volume as vol
from codec.errors import FormatError, UnsupportedInputError

NIFTI1_MAGIC = b"n+1\x00"
NIFTI1_PAIR_MAGIC = b"ni1\x00"
NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"
NIFTI2_PAIR_MAGIC = b"ni2\x00\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
NVC_SUFFIX = ".nvc"
#: Output formats, by file-name ending.
FORMATS = {".nii.gz": "nii.gz", ".nii": "nii", ".npy": "npy"}
#: A NIfTI header (with extensions) larger than this is refused (hostile vox_offset).
MAX_HEADER_BYTES = 64 * 2**20

Progress = Callable[[float], None] | None


@dataclass
class VolumeFile:
    """A volume read from a file: the stored integers and what is needed to write it back."""

    array: np.ndarray  # NIfTI axis order, exact stored dtype
    spacing: tuple[float, ...] | None
    nifti_header: bytes | None  # raw header + extensions up to vox_offset (NIfTI input only)
    source_format: str  # "nii", "nii.gz" or "npy"


# --------------------------------------------------------------------------- NIfTI


def _nifti_kind(raw: bytes | memoryview) -> tuple[str, str]:
    """Return ("nifti1" | "nifti2", endian "<" | ">") or raise UnsupportedInputError."""
    if len(raw) < 348:
        raise UnsupportedInputError("not a NIfTI file: shorter than a NIfTI-1 header")
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", bytes(raw[:4]))
        if sizeof_hdr == 348:
            magic = bytes(raw[344:348])
            if magic == NIFTI1_PAIR_MAGIC:
                raise UnsupportedInputError("NIfTI pairs (.hdr/.img) are not supported: convert to a single .nii file")
            if magic != NIFTI1_MAGIC:
                raise UnsupportedInputError("not a single-file NIfTI-1 image (bad magic; Analyze 7.5 is not supported)")
            return "nifti1", endian
        if sizeof_hdr == 540:
            if len(raw) < 540:
                raise UnsupportedInputError("truncated NIfTI-2 header")
            magic = bytes(raw[4:12])
            if magic == NIFTI2_PAIR_MAGIC:
                raise UnsupportedInputError("NIfTI pairs (.hdr/.img) are not supported: convert to a single .nii file")
            if magic != NIFTI2_MAGIC:
                raise UnsupportedInputError("not a single-file NIfTI-2 image (bad magic)")
            return "nifti2", endian
    raise UnsupportedInputError("not a NIfTI file (sizeof_hdr is neither 348 nor 540)")


def _parse_nifti_header(raw: bytes | memoryview):
    """Parse header + extensions from the start of a .nii byte string with nibabel."""
    import nibabel as nib

    kind, _ = _nifti_kind(raw)
    klass = nib.Nifti1Header if kind == "nifti1" else nib.Nifti2Header
    try:
        hdr = klass.from_fileobj(io.BytesIO(bytes(raw[:MAX_HEADER_BYTES])), check=False)
    except Exception as exc:  # nibabel raises a zoo of types on broken headers
        raise UnsupportedInputError(f"broken {kind} header: {exc}") from None
    return kind, hdr


def _header_layout(kind: str, hdr, n_raw: int) -> tuple[tuple[int, ...], np.dtype, int]:
    try:
        shape = tuple(int(n) for n in hdr.get_data_shape())
        dtype = np.dtype(hdr.get_data_dtype())
        offset = int(hdr.get_data_offset())
    except Exception as exc:
        raise UnsupportedInputError(f"broken {kind} header: {exc}") from None
    minimum = 348 if kind == "nifti1" else 540
    if offset < minimum:
        raise UnsupportedInputError(f"{kind} header: vox_offset {offset} is inside the header")
    if offset > MAX_HEADER_BYTES:
        raise UnsupportedInputError(f"{kind} header: vox_offset {offset} is larger than {MAX_HEADER_BYTES} bytes")
    return shape, dtype, offset


def check_nifti_header(raw: bytes, array: np.ndarray) -> str:
    """Check that `raw` (header bytes up to vox_offset) describes `array`; returns "nifti1" | "nifti2"."""
    kind, hdr = _parse_nifti_header(raw)
    shape, dtype, offset = _header_layout(kind, hdr, len(raw))
    if len(raw) > offset:
        raise UnsupportedInputError(f"{kind} header bytes ({len(raw)}) extend past vox_offset ({offset})")
    if shape != tuple(array.shape):
        raise UnsupportedInputError(f"{kind} header describes shape {shape}, the array has {array.shape}")
    if dtype != array.dtype:
        raise UnsupportedInputError(f"{kind} header describes dtype {dtype.str}, the array has {array.dtype.str}")
    return kind


def _read_nifti(raw: bytes | bytearray, source_format: str) -> VolumeFile:
    kind, hdr = _parse_nifti_header(raw)
    shape, dtype, offset = _header_layout(kind, hdr, len(raw))
    if dtype.kind not in "ui" or dtype.fields is not None:
        raise UnsupportedInputError(f"NIfTI data type {dtype} is not supported: the codec is lossless for integer volumes only")
    vol.check_dtype_shape(dtype, shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes > len(raw):
        raise UnsupportedInputError(
            f"truncated NIfTI file: {kind} header needs {offset + nbytes} bytes of data, the file has {len(raw)}"
        )
    # The stored integers, exactly as nibabel's dataobj.get_unscaled() reads them (x fastest).
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape, order="F")
    zooms = tuple(float(z) for z in hdr.get_zooms())
    spacing = zooms if zooms and all(math.isfinite(z) for z in zooms) else None
    return VolumeFile(array=array, spacing=spacing, nifti_header=bytes(raw[:offset]), source_format=source_format)


def nifti_bytes(array: np.ndarray, *, nifti_header: bytes | None = None, spacing=None) -> bytes:
    """An uncompressed single-file .nii for `array`.

    With `nifti_header` (the raw bytes kept at compression) the original bytes are written back
    verbatim; without, a fresh NIfTI-1 header is made from the dtype, shape and spacing.
    """
    if nifti_header:
        try:
            kind, hdr = _parse_nifti_header(nifti_header)
            shape, dtype, offset = _header_layout(kind, hdr, len(nifti_header))
        except UnsupportedInputError as exc:
            raise FormatError(f"stored NIfTI header is invalid: {exc}") from None
        if shape != tuple(array.shape) or len(nifti_header) > offset:
            raise FormatError(f"stored NIfTI header describes shape {shape}, the data has {array.shape}")
        pad = b"\x00" * (offset - len(nifti_header))
        return b"".join([nifti_header, pad, np.asarray(array, dtype=dtype).tobytes(order="F")])
    import nibabel as nib

    data = np.asarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    zooms = [1.0] * data.ndim
    if spacing:
        for i, s in enumerate(spacing[: data.ndim]):
            zooms[i] = float(s)
    affine = np.diag([*(zooms + [1.0, 1.0])[:3], 1.0])
    img = nib.Nifti1Image(data, affine, dtype=data.dtype)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "sec")
    return img.to_bytes()


# --------------------------------------------------------------------------- .npy


def read_npy_header(fp: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy header, checked; `fp` is left at the data.

    Shared with the service's upload check, so both accept exactly the same files."""
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
    return tuple(shape), fortran, dtype


def _read_npy(raw: bytes | bytearray) -> VolumeFile:
    fp = io.BytesIO(raw)
    shape, fortran, dtype = read_npy_header(fp)
    count = math.prod(shape)
    offset = fp.tell()
    if offset + count * dtype.itemsize > len(raw):
        raise UnsupportedInputError(f"truncated .npy: {count * dtype.itemsize} bytes of data declared, {len(raw) - offset} present")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    return VolumeFile(array=array, spacing=None, nifti_header=None, source_format="npy")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- detection, reading


def _gunzip(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UnsupportedInputError(f"broken gzip data: {exc}") from None


def read_volume_bytes(data: bytes | bytearray) -> VolumeFile:
    """Read a volume from the bytes of a .nii, .nii.gz or .npy file (format detected by magic)."""
    fmt_name = "nii"
    if bytes(data[:2]) == GZIP_MAGIC:
        data = _gunzip(bytes(data))
        fmt_name = "nii.gz"
    if bytes(data[:6]) == NPY_MAGIC:
        if fmt_name == "nii.gz":
            raise UnsupportedInputError("gzip-compressed .npy is not supported")
        return _read_npy(data)
    if bytes(data[:8]) == b"\x89NVC\r\n\x1a\n":
        raise UnsupportedInputError("input is already an .nvc file (use decompress)")
    if bytes(data[:4]) == b"PK\x03\x04":
        raise UnsupportedInputError(".npz archives are not supported: save one array as .npy")
    if len(data) >= 348:
        return _read_nifti(data, fmt_name)
    raise UnsupportedInputError("unrecognised input: expected a NIfTI (.nii, .nii.gz) or .npy file")


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


def volume_bytes(array: np.ndarray, fmt_name: str, *, nifti_header: bytes | None = None, spacing=None) -> bytes:
    """Serialise `array` as a file of format `fmt_name` ("nii.gz", "nii" or "npy")."""
    if fmt_name == "npy":
        return npy_bytes(array)
    raw = nifti_bytes(array, nifti_header=nifti_header, spacing=spacing)
    if fmt_name == "nii":
        return raw
    if fmt_name == "nii.gz":
        return gzip.compress(raw, compresslevel=6, mtime=0)
    raise UnsupportedInputError(f"unknown output format {fmt_name!r} (nii.gz, nii, npy)")


def write_volume(dst, array: np.ndarray, *, nifti_header: bytes | None = None, spacing=None, fmt_name: str | None = None) -> Path:
    """Write `array` to `dst` (format from the extension unless `fmt_name`), atomically."""
    fmt_name = fmt_name or output_format(dst)
    return write_bytes(dst, volume_bytes(array, fmt_name, nifti_header=nifti_header, spacing=spacing))


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


def compress_bytes(data: bytes | bytearray, *, profile: str = "default", progress: Progress = None) -> bytes:
    """.nii / .nii.gz / .npy bytes -> .nvc bytes (keeps the NIfTI header)."""
    from codec.api import encode

    vf = read_volume_bytes(data)
    return encode(vf.array, spacing=vf.spacing, nifti_header=vf.nifti_header, profile=profile, progress=progress)


def compress_file(src, dst=None, *, profile: str = "default", progress: Progress = None) -> Path:
    """Compress a .nii / .nii.gz / .npy file to .nvc (default name: `src` + ".nvc"). Returns the output path."""
    from codec.api import encode

    src = Path(src)
    vf = read_volume(src)
    data = encode(vf.array, spacing=vf.spacing, nifti_header=vf.nifti_header, profile=profile, progress=progress)
    return write_bytes(Path(dst) if dst is not None else src.with_name(src.name + NVC_SUFFIX), data)


def default_output(src: Path, source_kind: str | None) -> Path:
    """`src` without ".nvc"; a known extension is added when what remains has none."""
    name = src.name
    if name.lower().endswith(NVC_SUFFIX) and len(name) > len(NVC_SUFFIX):
        name = name[: -len(NVC_SUFFIX)]
    else:
        name = name + ".out"
    if not any(name.lower().endswith(s) for s in FORMATS):
        name += ".nii.gz" if source_kind else ".npy"
    return src.with_name(name)


def decompress_to_bytes(data, fmt_name: str | None = None, *, progress: Progress = None) -> tuple[bytes, str]:
    """.nvc data -> (file bytes, format). Default format: .nii for NIfTI input, .npy otherwise."""
    from codec.api import read

    dec = read(data, progress=progress)
    fmt_name = fmt_name or ("nii" if dec.source_kind else "npy")
    return volume_bytes(dec.array, fmt_name, nifti_header=dec.nifti_header, spacing=dec.spacing), fmt_name


def decompress_file(src, dst=None, *, progress: Progress = None) -> Path:
    """Decompress an .nvc file; the output format follows `dst`'s extension (.nii.gz, .nii, .npy).

    Without `dst`: `src` minus ".nvc" (e.g. scan.nii.gz.nvc -> scan.nii.gz).
    """
    from codec.api import read

    src = Path(src)
    with open(src, "rb") as f:
        dec = read(f, progress=progress)
    out = Path(dst) if dst is not None else default_output(src, dec.source_kind)
    return write_volume(out, dec.array, nifti_header=dec.nifti_header, spacing=dec.spacing)

