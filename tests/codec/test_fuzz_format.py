"""Hostile and damaged .nvc data: every truncation, random bit flips, forged headers with valid
CRCs. Each must end in a FormatError (IntegrityError for checksum mismatches) quickly, without a
crash, a hang or an allocation the data present does not justify."""

from __future__ import annotations

import hashlib
import struct
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec
from codec import CodecError, FormatError, IntegrityError
from codec import format as fmt


@pytest.fixture(scope="module")
def small_file() -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng(3)
    a = (rng.integers(0, 50, size=(7, 5, 6)) + np.arange(6) * 3).astype(np.int16)
    a[0, 0, 0] = -7
    return a, codec.encode(a, spacing=(1.0, 1.0, 2.5), metadata=b'{"k": 1}')


@pytest.fixture(scope="module")
def series_file() -> tuple[np.ndarray, bytes]:
    a = np.zeros((4, 3, 5, 3), np.uint8)
    a[..., 0] = np.arange(60).reshape(4, 3, 5)
    a[..., 1] = 9  # constant volume: no model, no slab
    a[..., 2] = np.arange(60).reshape(4, 3, 5)[::-1]
    return a, codec.encode(a, metadata=b"m")


def test_the_fixtures_decode(small_file, series_file):
    for a, data in (small_file, series_file):
        back = codec.decode(data)
        assert back.dtype == a.dtype and np.array_equal(back, a)


def test_every_truncation_is_a_format_error(small_file, series_file):
    for _, data in (small_file, series_file):
        t0 = time.perf_counter()
        for n in range(len(data)):
            with pytest.raises(FormatError):
                codec.decode(data[:n])
            with pytest.raises(FormatError):
                codec.info(data[:n])
        assert time.perf_counter() - t0 < 20


def test_every_single_byte_corruption_is_detected_by_full_decode(small_file):
    _, data = small_file
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(FormatError):
            codec.decode(bytes(bad))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 7)), min_size=1, max_size=8))
def test_random_bit_flips(small_file, flips):
    _, data = small_file
    bad = bytearray(data)
    for pos, bit in flips:
        bad[pos % len(bad)] ^= 1 << bit
    if bytes(bad) == data:  # flips cancelled out
        return
    with pytest.raises(FormatError):
        codec.decode(bytes(bad))
    with pytest.raises(FormatError):
        codec.decode(bytes(bad), slices=(0, 6))
    try:  # info reads only the header chunks and the index: it may not see a payload flip
        codec.info(bytes(bad))
    except FormatError:
        pass


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(min_size=0, max_size=300))
def test_random_bytes_after_the_magic(junk):
    with pytest.raises(FormatError):
        codec.decode(fmt.MAGIC + junk)
    with pytest.raises(FormatError):
        codec.decode(fmt.PREAMBLE.pack(fmt.MAGIC, 1, 0) + junk)


# --------------------------------------------------------------------------- forged files

def chunk(tag: bytes, body: bytes) -> bytes:
    head = struct.pack("<4sQ", tag, len(body))
    return head + body + struct.pack("<I", fmt.crc32c(body, fmt.crc32c(head)))


def head_body(shape, dtype_code=3, order=0, spacing=(), flags=0, ndim=None) -> bytes:
    ndim = len(shape) if ndim is None else ndim
    return (struct.pack("<BBBBI", dtype_code, order, ndim, len(spacing), flags) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack(f"<{len(spacing)}d", *spacing) + hashlib.sha256(b"").digest())


def forge(shape=(4, 4, 4), *, head=None, models=(b"\x01\x00\x00",), volumes=None, slabs=None, payloads=(b"\0" * 8,),
          file_length=None, n_volumes=None, pre_chunks=(), version=1, extra_tail=b"") -> bytes:
    """A file with valid CRCs everywhere and whatever index the caller asks for.

    volumes: [(vmin, vmax, base, model, n_slabs)]; slabs: [(z0, z1, offset, length, vcrc, reserved)] where an
    offset/length of None is filled in with the true position of the payloads written.
    """
    pre = fmt.PREAMBLE.pack(fmt.MAGIC, version, 0)
    body = chunk(b"HEAD", head if head is not None else head_body(shape))
    for m in models:
        body += chunk(b"MODL", m)
    for tag, b in pre_chunks:
        body += chunk(tag, b)
    z = shape[2] if len(shape) > 2 else 1
    volumes = volumes if volumes is not None else [(0, 100, 0, 0, 1)]
    slabs = slabs if slabs is not None else [(0, z, None, None, 0, 0)]
    index_len = 12 + 24 * len(volumes) + 32 * len(slabs)
    pos = len(pre) + len(body) + 16 + index_len
    recs, offs = [], []
    for p in payloads:
        offs.append(pos)
        pos += 16 + len(p)
    end = pos + 16
    vol_recs = b"".join(struct.pack("<ii8sII", a, b, struct.pack("<q", c), d, e) for a, b, c, d, e in volumes)
    for i, (z0, z1, off, length, vcrc, res) in enumerate(slabs):
        off = offs[i] if off is None and i < len(offs) else (off or 0)
        length = len(payloads[i]) if length is None and i < len(payloads) else (length or 0)
        recs.append(struct.pack("<IIQQII", z0, z1, off, length, vcrc, res))
    index = struct.pack("<QI", end if file_length is None else file_length,
                        len(volumes) if n_volumes is None else n_volumes) + vol_recs + b"".join(recs)
    body += chunk(b"INDX", index)
    for p in payloads:
        body += chunk(b"SLAB", p)
    body += chunk(b"END ", b"")
    return pre + body + extra_tail


def test_forge_helper_makes_a_parseable_file():
    c, _ = fmt.parse(forge(), verify_all=True)
    assert c.header.shape == (4, 4, 4) and len(c.volumes[0].slabs) == 1


HOSTILE = {
    "huge shape": dict(head=head_body((2**40, 2**40, 2**40))),
    "shape over the voxel cap": dict(head=head_body((2**16, 2**15, 2))),
    "empty axis": dict(head=head_body((4, 0, 4))),
    "5-D": dict(head=head_body((2, 2, 2, 2, 2))),
    "1-D": dict(head=head_body((8,))),
    "ndim lies about the body": dict(head=head_body((4, 4, 4), ndim=4)),
    "unknown dtype": dict(head=head_body((4, 4, 4), dtype_code=9)),
    "float dtype code": dict(head=head_body((4, 4, 4), dtype_code=0)),
    "bad byte order": dict(head=head_body((4, 4, 4), order=2)),
    "byte order on uint8": dict(head=head_body((4, 4, 4), dtype_code=1, order=1)),
    "head flags": dict(head=head_body((4, 4, 4), flags=1)),
    "nan spacing": dict(head=head_body((4, 4, 4), spacing=(float("nan"), 1, 1))),
    "too many spacings": dict(head=head_body((4, 4), spacing=(1, 1, 1))),
    "head too short": dict(head=b"\x03\x00"),
    "volume count mismatch": dict(n_volumes=2),
    "huge volume count": dict(n_volumes=2**32 - 1),
    "huge slab count": dict(volumes=[(0, 100, 0, 0, 2**32 - 1)]),
    "more slabs than slices": dict(volumes=[(0, 100, 0, 0, 5)], slabs=[(i, i + 1, None, None, 0, 0) for i in range(5)],
                                   payloads=[b"\0" * 4] * 5),
    "slab count mismatch": dict(volumes=[(0, 100, 0, 0, 2)]),
    "model out of range": dict(volumes=[(0, 100, 0, 7, 1)]),
    "no model but slabs": dict(volumes=[(5, 5, 0, 0xFFFFFFFF, 1)]),
    "no model, not constant": dict(volumes=[(0, 5, 0, 0xFFFFFFFF, 0)], slabs=[], payloads=[]),
    "vmin > vmax": dict(volumes=[(10, 5, 0, 0, 1)]),
    "span over 16 bits": dict(volumes=[(0, 70000, 0, 0, 1)]),
    "range outside the dtype": dict(volumes=[(0, 100, 65500, 0, 1)]),
    "negative base for unsigned": dict(volumes=[(0, 100, -1, 0, 1)]),
    "slab not starting at 0": dict(slabs=[(1, 4, None, None, 0, 0)]),
    "slab past the volume": dict(slabs=[(0, 9, None, None, 0, 0)]),
    "empty slab": dict(slabs=[(0, 0, None, None, 0, 0)]),
    "gap between slabs": dict(volumes=[(0, 100, 0, 0, 2)], slabs=[(0, 2, None, None, 0, 0), (3, 4, None, None, 0, 0)],
                              payloads=[b"\0" * 4, b"\0" * 4]),
    "overlapping slabs": dict(volumes=[(0, 100, 0, 0, 2)], slabs=[(0, 3, None, None, 0, 0), (2, 4, None, None, 0, 0)],
                              payloads=[b"\0" * 4, b"\0" * 4]),
    "slab offset into the header": dict(slabs=[(0, 4, 12, None, 0, 0)]),
    "slab offset out of range": dict(slabs=[(0, 4, 2**63, None, 0, 0)]),
    "slab length huge": dict(slabs=[(0, 4, None, 2**62, 0, 0)]),
    "slab length short": dict(slabs=[(0, 4, None, 3, 0, 0)]),
    "slab reserved field": dict(slabs=[(0, 4, None, None, 0, 1)]),
    "file length lies": dict(file_length=10**12),
    "file length short": dict(file_length=40),
    "trailing bytes": dict(extra_tail=b"\0" * 16),
    "too many models": dict(models=(b"a", b"b")),
    "unknown critical chunk": dict(pre_chunks=[(b"ZZZZ", b"")]),
    "duplicate META": dict(pre_chunks=[(b"META", b"a"), (b"META", b"b")]),
    "bad SRCH kind": dict(pre_chunks=[(b"SRCH", b"\x09hdr")]),
    "empty SRCH": dict(pre_chunks=[(b"SRCH", b"")]),
    "too many ancillary chunks": dict(pre_chunks=[(b"anci", b"")] * 1025),
    "version 4": dict(version=4),
    "version 0": dict(version=0),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_structure_is_refused_by_the_parser(name):
    data = forge(**HOSTILE[name])
    with pytest.raises(FormatError):
        fmt.parse(data)
    with pytest.raises(FormatError):
        codec.decode(data)
    with pytest.raises(FormatError):
        codec.info(data)


def test_huge_chunk_length_in_head():
    data = bytearray(forge())
    data[16:24] = struct.pack("<Q", 2**64 - 1)
    with pytest.raises(FormatError, match="truncated"):
        codec.decode(bytes(data))


def test_head_must_come_first():
    data = forge()
    pre = data[:12]
    head_len = 12 + struct.unpack_from("<Q", data, 16)[0] + 4
    swapped = pre + chunk(b"META", b"x") + data[12:]
    with pytest.raises(FormatError, match="HEAD"):
        fmt.parse(swapped)
    assert head_len > 0


@pytest.mark.parametrize("payload", [b"", b"\0" * 4, b"\xff" * 8, bytes(range(256))])
def test_hostile_payload_with_valid_crcs_is_refused_without_a_big_allocation(payload):
    # a structurally valid file declaring 2**31 voxels (4 GiB of uint16) from a few payload bytes
    shape = (2**11, 2**10, 2**10)
    data = forge(shape, head=head_body(shape), payloads=[payload],
                 slabs=[(0, shape[2], None, None, 0, 0)])
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(FormatError):
            codec.decode(data)
        with pytest.raises(FormatError):
            codec.decode(data, slices=(5, 6))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak allocation {peak} bytes"
    assert time.perf_counter() - t0 < 10


def test_garbage_payload_for_a_small_volume_is_a_codec_error(small_file):
    """A payload replaced by noise with a recomputed CRC: the engine or the voxel CRC must refuse it."""
    a, data = small_file
    c, _ = fmt.parse(data)
    s = c.volumes[0].slabs[0]
    rng = np.random.default_rng(0)
    for trial in range(5):
        noise = rng.integers(0, 256, s.length, dtype=np.uint8).tobytes()
        bad = bytearray(data)
        bad[s.offset + 12 : s.offset + 12 + s.length] = noise
        head = bytes(bad[s.offset : s.offset + 12])
        bad[s.offset + 12 + s.length : s.offset + 16 + s.length] = struct.pack("<I", fmt.crc32c(noise, fmt.crc32c(head)))
        with pytest.raises(CodecError):
            codec.decode(bytes(bad))


def test_swapped_voxel_crc_is_an_integrity_error(small_file):
    """Valid payloads but a wrong voxel CRC in the index (CRC of INDX recomputed): IntegrityError."""
    a, data = small_file
    c, _ = fmt.parse(data)
    s = c.volumes[0].slabs[0]
    bad = bytearray(data)
    # locate the INDX chunk: it ends where the first SLAB starts
    indx_end = s.offset
    body_len = 12 + 24 * len(c.volumes) + 32 * sum(len(v.slabs) for v in c.volumes)
    indx_start = indx_end - 16 - body_len
    assert bad[indx_start : indx_start + 4] == b"INDX"
    rec = indx_start + 12 + 12 + 24 * len(c.volumes)  # first slab record
    struct.pack_into("<I", bad, rec + 24, s.voxel_crc ^ 1)
    body = bytes(bad[indx_start + 12 : indx_start + 12 + body_len])
    struct.pack_into("<I", bad, indx_start + 12 + body_len, fmt.crc32c(body, fmt.crc32c(bytes(bad[indx_start : indx_start + 12]))))
    with pytest.raises(IntegrityError, match="CRC"):
        codec.decode(bytes(bad))
    with pytest.raises(IntegrityError):
        codec.decode(bytes(bad), slices=(0, 1))


def test_wrong_sha_is_an_integrity_error_on_full_decode_only(small_file):
    a, data = small_file
    bad = bytearray(data)
    head_len = struct.unpack_from("<Q", bad, 16)[0]
    sha_pos = 24 + head_len - 32
    bad[sha_pos] ^= 0xFF
    struct.pack_into("<I", bad, 24 + head_len, fmt.crc32c(bytes(bad[24 : 24 + head_len]), fmt.crc32c(bytes(bad[12:24]))))
    with pytest.raises(IntegrityError, match="SHA-256"):
        codec.decode(bytes(bad))
    assert np.array_equal(codec.decode(bytes(bad), slices=(1, 3)), a[:, :, 1:3])  # partial decode: CRCs only
