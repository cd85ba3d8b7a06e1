"""Reliability of the codec against hostile or unusual files (issue 8): decoding costs bounded by
the data present and by configured limits, only codec errors escaping, every header field
validated, and files that round-trip byte for byte (trailing data and .npy headers included)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import time
import tracemalloc

import numpy as np
import pytest

import codec
from codec import api, check, files, headers
from codec import format as fmt
from codec.errors import CodecError, FormatError, TooLargeError, UnsupportedInputError


def rewrite_head(data: bytes, **changes) -> bytes:
    """`data` with its HEAD chunk re-packed with `changes` (shape=, spacing=) and its CRC recomputed."""
    container, _ = fmt.parse(data)
    body = fmt.pack_head(dataclasses.replace(container.header, **changes))
    head = fmt.CHUNK_HEAD.pack(fmt.TAG_HEAD, len(body))
    start = fmt.PREAMBLE.size
    (old_len,) = struct.unpack_from("<Q", data, start + 4)
    assert old_len == len(body), "the rewrite must keep the chunk length (same ndim and spacing count)"
    crc = struct.pack("<I", fmt.crc32c(body, fmt.crc32c(head)))
    return data[:start] + head + body + crc + data[start + fmt.CHUNK_OVERHEAD + old_len :]


def rewrite_chunk(data: bytes, tag: bytes, new_body: bytes) -> bytes:
    """`data` with the first chunk `tag` given `new_body` of the same length, CRC recomputed."""
    pos = fmt.PREAMBLE.size
    while True:
        t, length = fmt.CHUNK_HEAD.unpack_from(data, pos)
        if t == tag:
            assert len(new_body) == length
            head = data[pos : pos + fmt.CHUNK_HEAD.size]
            crc = struct.pack("<I", fmt.crc32c(new_body, fmt.crc32c(head)))
            end = pos + fmt.CHUNK_HEAD.size + length
            return data[: pos + fmt.CHUNK_HEAD.size] + new_body + crc + data[end + 4 :]
        pos += fmt.CHUNK_OVERHEAD + length


@pytest.fixture(scope="module")
def realistic() -> tuple[np.ndarray, bytes]:
    """A smooth 128x128x32 int16 volume: a file of a few hundred KB, like the one in the report."""
    rng = np.random.default_rng(0)
    a = np.cumsum(rng.integers(-3, 4, size=(128, 128, 32)), axis=0).astype(np.int16)
    return a, codec.encode(a, spacing=(0.8, 0.8, 2.0))


def peak_of(fn):
    tracemalloc.start()
    try:
        start = time.perf_counter()
        result = fn()
        return result, tracemalloc.get_traced_memory()[1], time.perf_counter() - start
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- 1. memory before validity


# (the 32-slice file is coded as two 16-slice slabs since decision 0111: x = 131072 makes each
# slab need ~3.2 GB of working memory, as x = 65536 did for one 32-slice slab)
@pytest.mark.parametrize("x", [174762, 131072])
def test_forged_shape_is_refused_before_the_engine_allocates(realistic, x):
    """Issue 8 case 1: one dimension forged (CRC recomputed) made decode try an 8.6 GiB allocation
    (a bare MemoryError) or spend 12 s and 4.2 GB before a FormatError."""
    _, data = realistic
    bad = rewrite_head(data, shape=(x, 128, 32))

    def attempt():
        with pytest.raises(FormatError) as refused:
            codec.decode(bad)
        return refused.value

    err, peak, seconds = peak_of(attempt)
    assert isinstance(err, TooLargeError) and "working memory" in str(err)
    assert peak < 64 * 2**20 and seconds < 5, (peak, seconds)
    with pytest.raises(TooLargeError):
        check.check_nvc(bad)  # the upload check refuses it for the same reason


def test_forged_shape_within_the_limits_fails_quickly_as_corrupt(realistic):
    _, data = realistic
    bad = rewrite_head(data, shape=(4096, 128, 32))
    (_, peak, seconds) = peak_of(lambda: pytest.raises(FormatError, codec.decode, bad))
    assert seconds < 10 and peak < 1 << 30, (peak, seconds)


def constant_file(dtype, shape) -> bytes:
    """A valid file of a constant volume: no model, no slab, ~160 bytes whatever the shape."""
    voxels = int(np.prod(shape))  # the real digest when it is cheap; huge ones are refused before hashing
    digest = bytes.fromhex(api.voxel_sha256(np.full(shape, 7, dtype))) if voxels <= 2**20 else bytes(32)
    header = fmt.Header(dtype=np.dtype(dtype), shape=shape, spacing=None, sha256=digest)
    return fmt.build(header, [(7, 7, 0, None, [], [])], [])


def test_constant_volume_is_refused_above_the_decode_limit():
    """Issue 8 case 1: a 160-byte file for a constant 2**31-voxel volume decoded to 2 GiB (uint8)
    or 8 GiB (uint32) with nothing to refuse it."""
    small = constant_file("uint8", (2**10, 2**10, 2**11))
    assert len(small) < 200
    (_, peak, seconds) = peak_of(lambda: pytest.raises(TooLargeError, codec.decode, small, max_bytes=2**30))
    assert peak < 16 * 2**20 and seconds < 2
    big = constant_file("uint32", (2**10, 2**10, 2**11))
    with pytest.raises(TooLargeError, match="decode limit"):
        codec.decode(big)  # 8 GiB: over the default limit
    assert codec.info(big)["raw_bytes"] == 2**33  # describing it is fine
    with pytest.raises(TooLargeError):
        check.check_nvc(big, max_volume_bytes=2**30)


def test_decode_limit_from_the_environment(monkeypatch):
    data = constant_file("uint16", (64, 64, 64))
    assert codec.decode(data).shape == (64, 64, 64)
    monkeypatch.setenv(api.MAX_DECODE_BYTES_ENV, str(64 * 64 * 64 * 2 - 1))
    with pytest.raises(TooLargeError):
        codec.decode(data)
    monkeypatch.setenv(api.MAX_DECODE_BYTES_ENV, "lots")
    with pytest.raises(CodecError, match="not a number"):
        codec.decode(data)


def test_slabs_decoded_in_batches_give_the_same_voxels(monkeypatch):
    rng = np.random.default_rng(1)
    a = np.cumsum(rng.integers(-2, 3, size=(24, 20, 70)), axis=2).astype(np.int16)  # 4 slabs of <= 18 slices
    data = codec.encode(a)
    assert len(fmt.parse(data)[0].volumes[0].slabs) == 4
    whole = codec.decode(data)
    one_slab = 18 * 24 * 20 * api.ENGINE_BYTES_PER_VOXEL
    monkeypatch.setenv(api.DECODE_MEMORY_ENV, str(one_slab))  # one slab per engine call
    assert np.array_equal(codec.decode(data), whole) and np.array_equal(whole, a)
    monkeypatch.setenv(api.DECODE_MEMORY_ENV, str(one_slab - 1))
    with pytest.raises(TooLargeError, match="working memory"):
        codec.decode(data)


def test_memory_error_becomes_a_codec_error(monkeypatch):
    data = constant_file("uint8", (8, 8, 8))

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(api.vol, "empty_output", no_memory)
    with pytest.raises(TooLargeError, match="memory"):
        codec.decode(data)


# --------------------------------------------------------------------------- 2. header fields


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 5e-324, 1e-40, 1e39])
def test_spacing_is_validated_at_encode(bad):
    """Issue 8 case 2: spacing 0, negative or denormal was accepted; writing the NIfTI then raised
    nibabel's HeaderDataError ("internal error" in the service)."""
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    with pytest.raises(UnsupportedInputError, match="spacing"):
        codec.encode(a, spacing=(1.0, bad, 1.0))


@pytest.mark.parametrize("bad", [-1.0, 5e-324, 1e-40, float("inf")])
def test_spacing_is_validated_at_decode(bad):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    data = rewrite_head(codec.encode(a, spacing=(1.0, 1.0, 1.0)), spacing=(1.0, bad, 1.0))
    for call in (codec.decode, codec.info):
        with pytest.raises(FormatError, match="spacing"):
            call(data)


def test_zero_spacing_of_older_files_still_decodes_and_writes_a_nifti(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    data = rewrite_head(codec.encode(a, spacing=(1.0, 1.0, 1.0)), spacing=(1.0, 0.0, 1.0))
    assert np.array_equal(codec.decode(data), a)
    src = tmp_path / "old.nvc"
    src.write_bytes(data)
    out = files.decompress_file(src, tmp_path / "old.nii")
    assert np.array_equal(files.read_volume(out).array, a)


def test_nifti_zooms_that_are_no_spacing_are_not_stored():
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    img.header["pixdim"][2] = 0.0
    raw = img.to_bytes()
    vf = files.read_volume_bytes(raw)
    assert vf.spacing is None
    data = files.compress_bytes(raw)
    assert files.decompress_to_bytes(data, "nii")[0] == raw  # the header (pixdim 0 included) is kept whole


# --------------------------------------------------------------------------- 3. byte-for-byte round trips


def nifti_with_tail(tail: bytes, dtype=np.int16) -> bytes:
    import nibabel as nib

    a = (np.arange(6 * 5 * 4) % 37).astype(dtype).reshape(6, 5, 4)
    return nib.Nifti1Image(a, np.diag([0.7, 0.7, 3.0, 1.0])).to_bytes() + tail


@pytest.mark.parametrize("tail", [b"", bytes(range(256)) * 3 + b"x" * 212, b"\0"])
def test_nifti_trailing_bytes_round_trip(tmp_path, tail):
    """Issue 8 case 4: 980 bytes after the voxels were dropped and the job succeeded."""
    raw = nifti_with_tail(tail)
    data = files.compress_bytes(raw)
    assert codec.info(data)["trailing_bytes"] == len(tail)
    assert files.decompress_to_bytes(data, "nii")[0] == raw
    src = tmp_path / "scan.nii.gz"
    src.write_bytes(gzip.compress(raw))
    back = files.decompress_file(files.compress_file(src), tmp_path / "back.nii.gz")
    assert gzip.decompress(back.read_bytes()) == raw
    if tail:  # an older reader refuses the TAIL chunk clearly instead of writing a shorter file
        assert b"TAIL" in data
    else:
        assert b"TAIL" not in data


def test_too_many_trailing_bytes_are_refused_clearly():
    raw = nifti_with_tail(b"\1" * (headers.MAX_TRAILING_BYTES + 1))
    with pytest.raises(UnsupportedInputError, match="after the voxels"):
        files.compress_bytes(raw)
    v = check.VolumeCheck(2**30)
    with pytest.raises(UnsupportedInputError, match="after the voxels"):
        v.feed(raw)
        v.finish()


def npy_file(array, version=(1, 0), tail=b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    return buf.getvalue() + tail


@pytest.mark.parametrize("case", ["plain", "fortran", "version 2", "big-endian", "trailing"])
def test_npy_round_trips_byte_for_byte(case):
    a = (np.arange(7 * 6 * 5) % 50).astype(np.uint16).reshape(7, 6, 5)
    raw = {
        "plain": npy_file(a),
        "fortran": npy_file(np.asfortranarray(a)),
        "version 2": npy_file(a, version=(2, 0)),
        "big-endian": npy_file(a.astype(">u2")),
        "trailing": npy_file(a, tail=b"extra bytes"),
    }[case]
    data = files.compress_bytes(raw)
    back, fmt_name = files.decompress_to_bytes(data)
    assert fmt_name == "npy" and back == raw
    # a header the decoder writes anyway (Fortran order, numpy.save's version) is not stored, so
    # such files stay readable by older readers; any other is kept in the SRCH chunk
    assert (fmt.parse(data)[0].source_kind == "npy") == (case != "fortran")


# --------------------------------------------------------------------------- 4. what the worker checks, known early


def blob_variant(data: bytes, version: int | None = None, model_id: bytes | None = None) -> bytes:
    container, _ = fmt.parse(data)
    blob = bytearray(container.models[0])
    if version is not None:
        blob[0] = version
    if model_id is not None:
        n = blob[2]
        assert len(model_id) == n
        blob[3 : 3 + n] = model_id
    return rewrite_chunk(data, fmt.TAG_MODL, bytes(blob))


@pytest.mark.parametrize("change", ["version 33", "unknown model"])
def test_model_blob_problems_are_known_before_decoding(realistic, change):
    """Issue 8 case 3: a model blob version byte of 33 (CRCs recomputed) was accepted at upload
    and failed in the worker; the upload check now runs the decoder's own blob checks."""
    _, data = realistic
    n = fmt.parse(data)[0].models[0][2]
    bad = blob_variant(data, version=33) if change == "version 33" else blob_variant(data, model_id=b"z" * n)
    with pytest.raises(FormatError) as decoded:
        codec.decode(bad)
    with pytest.raises(FormatError) as checked:
        check.check_nvc(bad)
    streaming = check.NvcCheck(2**30)
    with pytest.raises(FormatError) as streamed:
        for i in range(0, len(bad), 4096):
            streaming.feed(bad[i : i + 4096])
        streaming.finish()
    assert str(decoded.value) == str(checked.value) == str(streamed.value)


def test_version_3_only_when_needed_and_its_chunks_refused_in_version_1():
    a = (np.arange(7 * 6 * 5) % 50).astype(np.uint16).reshape(7, 6, 5)
    plain = files.compress_bytes(npy_file(np.asfortranarray(a)))
    tailed = files.compress_bytes(npy_file(np.asfortranarray(a), tail=b"tail"))
    assert fmt.parse(plain)[0].version == 1 and fmt.parse(tailed)[0].version == 3
    downgraded = tailed[:8] + struct.pack("<H", 1) + tailed[10:]  # the preamble has no CRC
    with pytest.raises(FormatError, match="TAIL"):
        fmt.parse(downgraded)
    with pytest.raises(FormatError, match="TAIL"):
        check.check_nvc(downgraded)


def test_the_codec_api_does_not_import_the_file_pipeline():
    """Issue 10: codec/api.py and codec/files.py imported each other; files uses api, never the reverse."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(api.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any(name == "codec.files" or name.startswith("codec.files.") for name in names), names
