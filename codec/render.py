"""Slices for people to look at: window/level to 8-bit grey, PNG and .npy bytes.

Shared by `nvc slice` and the API's slice route (`GET /jobs/{id}/slices/{z}`), so the file a
user renders on the command line and the image the web page shows are the same pixels. It
needs only numpy (and Pillow for PNG); nothing here decodes, the caller hands in voxels.

The rendering, exactly (a test recomputes it independently from the source volume):

1. the slice is a 2-D array in NIfTI order (x, y); the image has rows = y (row 0 at the top)
   and columns = x, i.e. ``image = slice.T``. For DICOM-derived volumes (array axes = DICOM
   columns, rows) this is the scanner's own display orientation;
2. values become physical units: ``v = stored * slope + intercept`` in float64, where
   (slope, intercept) is the volume's rescale (`rescale_of`: the NIfTI scl_slope/scl_inter
   when the file has them, else 1 and 0);
3. a CT preset (lung, soft_tissue, bone, brain; Hounsfield units) on unsigned stored values
   whose rescale is the identity (none in the file, or slope 1 and intercept 0: unsigned values
   cannot be HU, air would be 0) assumes the intercept CT scanners use for unsigned pixel data,
   -1024 (HU = stored - 1024); an explicit slope or intercept always wins;
4. the window (center C, width W, in the units of step 2/3) maps linearly to grey:
   ``grey = clip(rint((v - (C - W / 2)) * 255 / W), 0, 255)`` as uint8 (rint: round half to
   even, numpy's);
5. the automatic window (``auto``, for MR and anything without a preset) spans the 0.5th to
   the 99.5th percentile of that slice's values (numpy's default linear interpolation):
   C = (lo + hi) / 2, W = max(hi - lo, 1).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A display window: values in [center - width/2, center + width/2] span black to white."""

    center: float
    width: float


#: CT windows in Hounsfield units (the usual radiology presets).
CT_PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "soft_tissue": Window(40.0, 400.0),
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
}
#: Every preset name a caller may ask for; ``auto`` is computed from the slice (MR, other data).
PRESETS: tuple[str, ...] = ("auto", *CT_PRESETS)
#: The intercept assumed for CT presets on unsigned data stored without a rescale (step 3).
UNSIGNED_CT_INTERCEPT = -1024.0
AUTO_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Rescale:
    """Physical value = stored * slope + intercept; `known`: it says something (not the identity
    by default: a file's 1 and 0, or none at all), or the caller gave it explicitly."""

    slope: float = 1.0
    intercept: float = 0.0
    known: bool = False


def rescale_of(nifti_header: bytes | None) -> Rescale:
    """The rescale a NIfTI-1/2 header declares (scl_slope, scl_inter), or the identity.

    NIfTI says a slope of 0 or NaN means "no scaling"; then the stored integers are the values.
    """
    if not nifti_header or len(nifti_header) < 348:
        return Rescale()
    import struct

    for order in "<>":
        size = struct.unpack(order + "i", nifti_header[:4])[0]
        if size == 348:  # NIfTI-1: scl_slope, scl_inter are float32 at bytes 112, 116
            slope, inter = struct.unpack(order + "ff", nifti_header[112:120])
            break
        if size == 540 and len(nifti_header) >= 540:  # NIfTI-2: float64 at 176, 184
            slope, inter = struct.unpack(order + "dd", nifti_header[176:192])
            break
    else:
        return Rescale()
    if not math.isfinite(slope) or slope == 0:
        return Rescale()
    inter = float(inter) if math.isfinite(inter) else 0.0
    return Rescale(float(slope), inter, (slope, inter) != (1.0, 0.0))


def slice_index(shape, z: int, volume: int = 0) -> tuple[int, int]:
    """(z, volume) checked against an (x, y[, z[, t]]) shape, negative z counting from the end;
    ValueError naming the valid range otherwise."""
    depth = int(shape[2]) if len(shape) >= 3 else 1
    count = int(shape[3]) if len(shape) >= 4 else 1
    if not -depth <= z < depth:
        raise ValueError(f"slice {z} is out of range: the volume has {depth} slices (0..{depth - 1})")
    if not 0 <= volume < count:
        raise ValueError(f"volume {volume} is out of range: the file holds {count} volume(s) (0..{count - 1})")
    return z % depth, volume


def first_slice(array: np.ndarray, volume: int = 0) -> np.ndarray:
    """The 2-D (x, y) image at slice offset 0 of a decoded slice range (x, y[, n[, t]])."""
    if array.ndim == 2:
        return array
    return array[:, :, 0] if array.ndim == 3 else array[:, :, 0, volume]


def physical(slice_xy: np.ndarray, rescale: Rescale) -> np.ndarray:
    """Step 2: the slice's values in physical units (float64, same (x, y) layout)."""
    return np.asarray(slice_xy, dtype=np.float64) * rescale.slope + rescale.intercept


def auto_window(values: np.ndarray) -> Window:
    """Step 5: the window from the 0.5th to the 99.5th percentile of `values`."""
    lo, hi = np.percentile(values, AUTO_PERCENTILES)
    return Window(float((lo + hi) / 2), float(max(hi - lo, 1.0)))


def choose_window(
    slice_xy: np.ndarray,
    rescale: Rescale,
    preset: str | None = None,
    center: float | None = None,
    width: float | None = None,
) -> tuple[Window, Rescale]:
    """The window and rescale a request means: explicit center and width, else the named
    preset (default ``auto``). CT presets apply step 3. Raises ValueError with a readable
    message for an unknown preset, a half-given window or a width that is not positive."""
    if (center is None) != (width is None):
        raise ValueError("give both center and width, or neither")
    if center is not None:
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise ValueError(f"the window width must be a positive number and the center finite (got {center}, {width})")
        return Window(float(center), float(width)), rescale
    name = preset or "auto"
    if name not in PRESETS:
        raise ValueError(f"unknown window preset {name!r}: choose one of {', '.join(PRESETS)}")
    if name == "auto":
        return auto_window(physical(slice_xy, rescale)), rescale
    if not rescale.known and np.issubdtype(np.asarray(slice_xy).dtype, np.unsignedinteger):
        rescale = Rescale(rescale.slope, UNSIGNED_CT_INTERCEPT, False)
    return CT_PRESETS[name], rescale


def render(slice_xy: np.ndarray, window: Window, rescale: Rescale = Rescale()) -> np.ndarray:
    """Steps 1, 2 and 4: the (y, x) uint8 grey image of a 2-D (x, y) slice."""
    if np.ndim(slice_xy) != 2:
        raise ValueError(f"a slice is 2-D (x, y), got shape {np.shape(slice_xy)}")
    if not window.width > 0:
        raise ValueError("the window width must be positive")
    v = physical(slice_xy, rescale).T
    lo = window.center - window.width / 2
    return np.clip(np.rint((v - lo) * 255.0 / window.width), 0, 255).astype(np.uint8)  # this order: the doc's


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a (rows, columns) uint8 image (Pillow; lossless)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError("png_bytes takes a 2-D uint8 image")
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """The exact stored values as a .npy file (dtype and NIfTI (x, y[, z]) axis order kept)."""
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()
