"""Input validation and the mapping between user arrays and the engine's volumes.

Users hand us arrays in NIfTI axis order: (x, y) for an image, (x, y, z) for a volume (z, the
last axis, is the slice axis), (x, y, z, t) for a series. The engine wants one C-contiguous
int32 array (Z, Y, X) per 3-D volume, so a volume is ``transpose(2, 1, 0)`` of the user's array
(a 2-D image becomes one slice, a 4-D series is coded one 3-D volume at a time).

The engine codes values in [vmin, vmax] with vmax - vmin <= 65535 in int32. Data whose values
fit in int32 is passed unchanged (base 0), so the engine sees the real values (e.g. CT air at
-1024); wider data (uint32/int64/uint64 beyond the int32 range) is shifted by its minimum
(base = vmin). The decoder adds `base` back in the original dtype, so every value and the exact
dtype (byte order included) are restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from codec.errors import UnsupportedInputError
from codec.format import MAX_SPAN, MAX_VOXELS, spacing_problem

#: dtypes the codec accepts (any byte order). Wider than 16 bits only while the values of each
#: coded 3-D volume span at most 16 bits.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class VolumeRange:
    """Value range of one coded 3-D volume, and the shift applied for the engine."""

    vmin: int  # engine-side minimum (original minimum - base)
    vmax: int
    base: int


def check_array(array: object) -> np.ndarray:
    """Validate dtype, dimensions and size; returns the input as an ndarray (no copy).

    Raises UnsupportedInputError with a message that says what is wrong. The value range is
    checked per coded volume by :func:`volume_range`.
    """
    if not isinstance(array, np.ndarray):
        if isinstance(array, (list, tuple)):
            array = np.asarray(array)
        else:
            raise UnsupportedInputError(f"expected a numpy array, got {type(array).__name__}")
    check_dtype_shape(array.dtype, array.shape)
    return array


def check_dtype_shape(dt: np.dtype, shape: tuple[int, ...]) -> None:
    """The dtype and shape rules of :func:`check_array`, usable before any voxel is read."""
    dt = np.dtype(dt)
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise UnsupportedInputError(f"dtype {dt} is not supported: need a plain integer array ({', '.join(SUPPORTED_DTYPES)})")
    if dt.kind == "b":
        raise UnsupportedInputError("bool arrays are not supported: convert to uint8")
    if dt.kind == "f":
        raise UnsupportedInputError(f"floating-point dtype {dt} is not supported: the codec is lossless for integers only")
    if dt.kind == "c":
        raise UnsupportedInputError(f"complex dtype {dt} is not supported")
    if dt.kind not in "ui" or dt.name not in SUPPORTED_DTYPES:
        raise UnsupportedInputError(f"dtype {dt} is not supported: need one of {', '.join(SUPPORTED_DTYPES)}")
    if len(shape) not in (2, 3, 4):
        raise UnsupportedInputError(
            f"{len(shape)}-D arrays are not supported: need a 2-D image (x, y), a 3-D volume (x, y, z) "
            "or a 4-D series (x, y, z, t)"
        )
    if any(n < 0 for n in shape):
        raise UnsupportedInputError(f"array of shape {shape} has a negative dimension")
    if any(n == 0 for n in shape):
        raise UnsupportedInputError(f"array of shape {shape} is empty")
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise UnsupportedInputError(f"array of shape {shape} has {voxels} voxels, more than the limit of {MAX_VOXELS} (2**31)")


def check_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    """Normalise `spacing` (voxel size per axis, NIfTI order) to a tuple of 1..ndim valid floats."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise UnsupportedInputError(f"spacing must be a sequence of numbers, got {spacing!r}") from None
    if not 1 <= len(values) <= ndim:
        raise UnsupportedInputError(f"spacing has {len(values)} values for a {ndim}-D array (1 to {ndim})")
    problem = spacing_problem(values)
    if problem:
        raise UnsupportedInputError(problem)
    return values


def n_volumes(shape: tuple[int, ...]) -> int:
    return shape[3] if len(shape) == 4 else 1


def volume_view(array: np.ndarray, t: int) -> np.ndarray:
    """The t-th 3-D volume as an (x, y, z) view (a 2-D image gets z = 1)."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    return array[:, :, :, t]


def volume_range(vol: np.ndarray, t: int = 0) -> VolumeRange:
    """Value range of one (x, y, z) volume, checked against the 16-bit span limit."""
    lo, hi = int(vol.min()), int(vol.max())
    if hi - lo > MAX_SPAN:
        where = f"volume {t} of the series" if t else "the array"
        raise UnsupportedInputError(
            f"values of {where} span {lo}..{hi} ({hi - lo + 1} levels): at most 65536 levels (16 bits) can be coded"
        )
    base = 0 if (lo >= INT32_MIN and hi <= INT32_MAX) else lo
    return VolumeRange(vmin=lo - base, vmax=hi - base, base=base)


def to_engine(vol: np.ndarray, rng: VolumeRange) -> np.ndarray:
    """(x, y, z) volume of any supported dtype -> C-contiguous int32 (Z, Y, X) minus `base`."""
    zyx = vol.transpose(2, 1, 0)
    out = np.empty(zyx.shape, dtype=np.int32)
    if rng.base == 0:
        np.copyto(out, zyx, casting="unsafe")  # values checked to fit in int32
    else:
        # in the native dtype the difference is in [0, 65535]: no overflow, no wrap
        for z in range(zyx.shape[0]):
            out[z] = (zyx[z] - zyx.dtype.type(rng.base)).astype(np.int32)
    return out


def from_engine(zyx: np.ndarray, base: int, dtype: np.dtype) -> np.ndarray:
    """int32 (z, y, x) engine values -> original values in `dtype` (same layout)."""
    if base == 0:
        return zyx.astype(dtype)
    return zyx.astype(dtype) + np.asarray(base, dtype=dtype)


def canonical_bytes(zyx: np.ndarray) -> bytes:
    """The canonical layout of a (z, y, x) block: C order, little-endian, original integer dtype.

    For a whole array this is the NIfTI on-disk order (x fastest, then y, z, t) - see docs/format.md.
    """
    le = zyx.dtype.newbyteorder("<") if zyx.dtype.itemsize > 1 else zyx.dtype
    return np.ascontiguousarray(zyx, dtype=le).tobytes()


def iter_volumes(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for t in range(n_volumes(array.shape)):
        yield t, volume_view(array, t)


def empty_output(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Output array in NIfTI order, Fortran-ordered so each volume's (z, y, x) view is C-contiguous."""
    return np.empty(shape, dtype=dtype, order="F")


def output_zyx(out: np.ndarray, t: int) -> np.ndarray:
    """Writable (z, y, x) view of volume t of an output array made by :func:`empty_output`."""
    return volume_view(out, t).transpose(2, 1, 0)
