"""codec.encode / decode / info with the real engine: lossless round trips of every dtype and
dimensionality (hypothesis), partial decoding, what info reports, and refused inputs."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import codec
from codec import CodecError, UnsupportedInputError
from codec import format as fmt
from codec.api import voxel_sha256

DTYPES = ["uint8", "int8", "uint16", "int16", ">u2", ">i2", "uint32", "int32", "uint64", "int64"]


@st.composite
def volumes(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    ndim = draw(st.sampled_from([2, 3, 3, 4]))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    info = np.iinfo(dtype)
    span = draw(st.sampled_from([0, 1, 255, 4095, 65535])) if dtype.itemsize > 1 else draw(st.sampled_from([0, 1, 255]))
    lo = draw(st.integers(int(info.min), int(info.max) - span))
    offsets = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, span)))
    return (np.asarray(lo, dtype=object) + offsets.astype(object)).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(a=volumes())
def test_round_trip_is_exact(a):
    data = codec.encode(a)
    back = codec.decode(data)
    assert back.dtype == a.dtype and back.shape == a.shape
    assert np.array_equal(back, a)
    sha = hashlib.sha256(a.astype(a.dtype.newbyteorder("<")).tobytes(order="F")).hexdigest()
    assert codec.info(data)["sha256"] == sha == voxel_sha256(a)


@settings(max_examples=15, deadline=None)
@given(a=volumes().filter(lambda v: v.ndim >= 3), data=st.data())
def test_partial_decode_equals_slicing(a, data):
    enc = codec.encode(a)
    z = a.shape[2]
    start = data.draw(st.integers(0, z))
    stop = data.draw(st.integers(start, z))
    got = codec.decode(enc, slices=(start, stop))
    assert got.dtype == a.dtype and np.array_equal(got, a[:, :, start:stop])


@pytest.fixture(scope="module")
def volume40():
    """40 slices: more than one slab with the default profile (32 slices per slab)."""
    rng = np.random.default_rng(5)
    x, y, z = np.meshgrid(np.arange(9), np.arange(7), np.arange(40), indexing="ij")
    a = (1000 + 40 * np.sin(x / 2) + 30 * np.cos(y / 3) + 2 * z + rng.integers(-3, 4, x.shape)).astype(np.int16)
    return a, codec.encode(a, spacing=(0.5, 0.5, 2.0), metadata=b"patient-free metadata")


def test_slices_forms_and_partial_reads(volume40):
    a, data = volume40
    info = codec.info(data)
    assert info["slab_count"] >= 2
    for sel, ref in [
        ((3, 9), a[:, :, 3:9]),
        (range(30, 35), a[:, :, 30:35]),
        (slice(-4, None), a[:, :, -4:]),
        (slice(None, 2), a[:, :, :2]),
        ((35, 100), a[:, :, 35:]),
        ((10, 10), a[:, :, 10:10]),
        ((0, 40), a),
    ]:
        got = codec.decode(data, slices=sel)
        assert got.dtype == a.dtype and got.shape == ref.shape and np.array_equal(got, ref), sel
    # a seekable file works too and gives the same answer
    assert np.array_equal(codec.decode(io.BytesIO(data), slices=(33, 36)), a[:, :, 33:36])


def test_partial_decode_reads_only_the_slabs_it_needs(volume40):
    a, data = volume40
    c, _ = fmt.parse(data)
    last = c.volumes[0].slabs[-1]
    bad = bytearray(data)
    bad[last.offset + 20] ^= 0xFF  # damage the last slab
    assert np.array_equal(codec.decode(bytes(bad), slices=(0, last.z0)), a[:, :, : last.z0])
    with pytest.raises(codec.IntegrityError):
        codec.decode(bytes(bad), slices=(last.z0, last.z0 + 1))
    with pytest.raises(codec.IntegrityError):
        codec.decode(bytes(bad))


@pytest.mark.parametrize("bad", [(0, 5, 2), range(0, 10, 2), slice(0, 5, 3), "1:3", (1.5, 3), 3, (1, 2, 3)])
def test_bad_slices(volume40, bad):
    _, data = volume40
    with pytest.raises(UnsupportedInputError):
        codec.decode(data, slices=bad)


def test_info_reports_what_the_file_holds(volume40):
    a, data = volume40
    d = codec.info(data)
    assert d["format_version"] == 1
    assert d["dtype"] == "int16" and d["shape"] == [9, 7, 40] and d["spacing"] == [0.5, 0.5, 2.0]
    assert d["voxels"] == a.size and d["volumes"] == 1 and d["slices"] == 40
    assert d["value_range"] == [int(a.min()), int(a.max())]
    assert d["profile"] == "default" and len(d["models"]) == 1 and d["models"][0]["bytes"] > 0
    assert d["file_bytes"] == len(data)
    assert d["bits_per_voxel"] == pytest.approx(8 * len(data) / a.size)
    assert d["payload_bytes"] + d["model_bytes"] + d["metadata_bytes"] + d["overhead_bytes"] == len(data)
    assert d["metadata_bytes"] == len(b"patient-free metadata")
    assert sum(d["chunk_bytes"].values()) == len(data)
    assert [s[:2] for s in d["slabs"][0]][0][0] == 0 and d["slabs"][0][-1][1] == 40


def test_metadata_and_spacing_round_trip(volume40):
    from codec.api import read

    a, data = volume40
    dec = read(data)
    assert dec.metadata == b"patient-free metadata" and dec.spacing == (0.5, 0.5, 2.0)
    assert dec.nifti_header is None and dec.slices is None


def test_constant_volumes_and_series_share_models():
    const = np.full((5, 4, 3), 1234, np.uint16)
    data = codec.encode(const)
    assert np.array_equal(codec.decode(data), const)
    assert codec.info(data)["models"] == [] and codec.info(data)["slab_count"] == 0
    series = np.stack([np.arange(60, dtype=np.uint8).reshape(5, 4, 3)] * 3 + [const.astype(np.uint8)], axis=-1)
    data = codec.encode(series)
    d = codec.info(data)
    assert d["volumes"] == 4 and len(d["models"]) == 1  # three identical volumes coded alike: one blob
    assert np.array_equal(codec.decode(data), series)
    assert np.array_equal(codec.decode(data, slices=(1, 2)), series[:, :, 1:2, :])


def test_wide_dtypes_beyond_int32_range():
    a = (np.arange(4 * 3 * 2, dtype=np.uint64).reshape(4, 3, 2) * 2000 + np.uint64(2**64 - 50_000)).astype(np.uint64)
    assert np.array_equal(codec.decode(codec.encode(a)), a)
    b = (np.arange(24, dtype=np.int64).reshape(4, 3, 2) - 2**62).astype(">i8")
    back = codec.decode(codec.encode(b))
    assert back.dtype == np.dtype(">i8") and np.array_equal(back, b)


def test_2d_image_and_its_single_slice():
    img = np.arange(35, dtype=np.int16).reshape(7, 5) * 13 - 200
    data = codec.encode(img, spacing=(0.3, 0.3))
    assert np.array_equal(codec.decode(data), img)
    assert np.array_equal(codec.decode(data, slices=(0, 1)), img)
    with pytest.raises(UnsupportedInputError):
        codec.decode(data, slices=(0, 0))


def test_progress_is_reported_and_reaches_one(volume40):
    a, _ = volume40
    seen = []
    data = codec.encode(a, progress=seen.append)
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    seen.clear()
    codec.decode(data, progress=seen.append)
    assert seen and seen[-1] == 1.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(profile="nonexistent"), "profile"),
        (dict(metadata="text"), "metadata must be bytes"),
        (dict(spacing=(1, 2, 3, 4)), "spacing"),
        (dict(nifti_header=b"\0" * 10), "NIfTI"),
    ],
)
def test_refused_arguments(kwargs, words):
    with pytest.raises(UnsupportedInputError, match=words):
        codec.encode(np.zeros((3, 3, 3), np.uint16) + np.arange(3, dtype=np.uint16), **kwargs)


@pytest.mark.parametrize(
    "array",
    [np.zeros((3, 3, 3), np.float32), np.zeros((3, 3, 3), bool), np.zeros((3, 0, 3), np.uint16),
     np.zeros((2,) * 5, np.uint8), np.array([[0, 70000]], np.int32)],
)
def test_refused_volumes(array):
    with pytest.raises(UnsupportedInputError):
        codec.encode(array)


def test_errors_are_value_errors_and_codec_errors():
    with pytest.raises(ValueError):
        codec.decode(b"not nvc at all")
    with pytest.raises(CodecError):
        codec.decode(b"")
    with pytest.raises(TypeError):
        codec.decode(12345)
