"""codec.volume: which arrays are accepted, what is refused (and how it is said), axis mapping."""

from __future__ import annotations

import numpy as np
import pytest

from codec import UnsupportedInputError
from codec import volume as vol
from codec.format import MAX_VOXELS


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", ">u2", ">i4"])
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2), (4, 3, 2, 2)])
def test_accepts_integer_arrays(dtype, shape):
    a = np.zeros(shape, dtype=dtype)
    assert vol.check_array(a) is a


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 4, 4), np.float32), "floating-point"),
        (np.zeros((4, 4, 4), np.float64), "floating-point"),
        (np.zeros((4, 4, 4), np.float16), "floating-point"),
        (np.zeros((4, 4, 4), np.complex64), "complex"),
        (np.zeros((4, 4, 4), bool), "bool"),
        (np.empty((4, 4, 4), object), "dtype object"),
        (np.zeros((4, 4, 4), [("a", "u2"), ("b", "u2")]), "not supported"),
        (np.zeros((4, 4, 4), "U3"), "not supported"),
        (np.zeros((4, 4, 4), "datetime64[s]"), "not supported"),
        (np.zeros((5,), np.uint16), "1-D"),
        (np.zeros((), np.uint16), "0-D"),
        (np.zeros((2, 2, 2, 2, 2), np.uint16), "5-D"),
        (np.zeros((4, 0, 4), np.uint16), "empty"),
        (np.zeros((0, 4), np.uint8), "empty"),
    ],
)
def test_refuses_with_a_message(array, words):
    with pytest.raises(UnsupportedInputError, match=words):
        vol.check_array(array)


def test_refuses_non_arrays():
    with pytest.raises(UnsupportedInputError, match="numpy array"):
        vol.check_array("volume")
    with pytest.raises(UnsupportedInputError, match="numpy array"):
        vol.check_array(None)


def test_refuses_absurd_sizes_without_allocating():
    # a broadcast view declares 2**31 + 1 voxels without owning them
    huge = np.broadcast_to(np.zeros(1, np.uint8), (2**16, 2**15 + 1, 1))
    assert huge.size == MAX_VOXELS + 2**16
    with pytest.raises(UnsupportedInputError, match="limit"):
        vol.check_array(huge)
    vol.check_dtype_shape(np.dtype(np.uint16), (2**16, 2**15, 1))  # exactly 2**31: allowed
    with pytest.raises(UnsupportedInputError, match="limit"):
        vol.check_dtype_shape(np.dtype(np.uint16), (2**40, 2**40, 2**40))


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0, 65536]], dtype=np.int32).reshape(1, 2),
        np.array([[-40000, 30000]], dtype=np.int32),
        np.array([[0, 2**40]], dtype=np.uint64),
        np.array([[-(2**62), 2**62]], dtype=np.int64),
    ],
)
def test_refuses_values_wider_than_16_bits(array):
    with pytest.raises(UnsupportedInputError, match="16 bits"):
        vol.volume_range(vol.volume_view(array, 0))


def test_16_bit_span_of_a_wide_dtype_is_accepted_and_shifted():
    a = np.array([[2**63, 2**63 + 65535]], dtype=np.uint64)
    r = vol.volume_range(vol.volume_view(a, 0))
    assert (r.vmin, r.vmax, r.base) == (0, 65535, 2**63)
    engine = vol.to_engine(vol.volume_view(a, 0), r)
    assert engine.dtype == np.int32 and engine.flags.c_contiguous
    back = vol.from_engine(engine, r.base, a.dtype)
    assert back.dtype == a.dtype
    assert np.array_equal(back.transpose(2, 1, 0)[:, :, 0], a)


def test_int32_range_values_are_not_shifted():
    a = np.array([[-1024, 3071]], dtype=np.int64)
    r = vol.volume_range(vol.volume_view(a, 0))
    assert (r.vmin, r.vmax, r.base) == (-1024, 3071, 0)


def test_series_ranges_are_per_volume():
    a = np.zeros((2, 2, 2, 2), np.int32)
    a[..., 0] = [[[0, 60000], [0, 0]], [[0, 0], [0, 0]]]
    a[..., 1] = 100000  # another 16-bit span, far from volume 0's
    assert vol.volume_range(vol.volume_view(a, 0), 0).vmax == 60000
    assert vol.volume_range(vol.volume_view(a, 1), 1).vmin == 100000


def test_axis_mapping_is_transpose_210():
    a = np.arange(4 * 3 * 2, dtype=np.uint16).reshape(4, 3, 2)
    r = vol.volume_range(a)
    zyx = vol.to_engine(a, r)
    assert zyx.shape == (2, 3, 4) and zyx.flags.c_contiguous and zyx.dtype == np.int32
    for x in range(4):
        for y in range(3):
            for z in range(2):
                assert zyx[z, y, x] == a[x, y, z]


def test_2d_image_is_one_slice_and_4d_is_volumes_in_turn():
    img = np.arange(12, dtype=np.int16).reshape(4, 3)
    v = vol.volume_view(img, 0)
    assert v.shape == (4, 3, 1)
    assert np.array_equal(vol.to_engine(v, vol.volume_range(v))[0], img.T)
    series = np.arange(4 * 3 * 2 * 5, dtype=np.uint8).reshape(4, 3, 2, 5)
    assert vol.n_volumes(series.shape) == 5
    assert np.array_equal(vol.volume_view(series, 3), series[:, :, :, 3])


def test_canonical_bytes_are_nifti_order_little_endian():
    a = np.arange(24, dtype=">u2").reshape(2, 3, 4)
    zyx = a.transpose(2, 1, 0)
    assert vol.canonical_bytes(zyx) == a.astype("<u2").tobytes(order="F")


def test_output_layout_gives_c_contiguous_volume_views():
    out = vol.empty_output((4, 3, 2, 2), np.dtype("<i2"))
    for t in range(2):
        assert vol.output_zyx(out, t).flags.c_contiguous


@pytest.mark.parametrize("spacing, ok", [((1.0, 2.0, 3.0), True), ((0.5,), True), ((1, 2, 3, 4), False),
                                         ((float("nan"), 1, 1), False), ("abc", False), ((), False)])
def test_spacing(spacing, ok):
    if ok:
        assert vol.check_spacing(spacing, 3) == tuple(float(s) for s in spacing)
    else:
        with pytest.raises(UnsupportedInputError):
            vol.check_spacing(spacing, 3)
