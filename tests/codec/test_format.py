"""The .nvc container on its own (codec.format): layout as specified in docs/format.md, round trip,
random access, compatibility rules. Payloads and model blobs here are arbitrary bytes: the
container treats them as opaque."""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
import pytest

from codec import FormatError, IntegrityError
from codec import format as fmt


def header(shape=(6, 5, 7), dtype="<u2", spacing=(0.5, 0.5, 2.0)):
    return fmt.Header(dtype=np.dtype(dtype), shape=shape, spacing=spacing, sha256=hashlib.sha256(b"x").digest())


def sample_file(**kw):
    h = header(**kw.pop("header", {}))
    volumes = kw.pop("volumes", [(0, 100, 0, 0, [(0, 3, 11), (3, 7, 22)], [b"abcd" * 3, b"efgh"])])
    models = kw.pop("models", [b"model-blob"])
    return fmt.build(h, volumes, models, metadata=kw.pop("metadata", b"user meta"),
                     source_kind=kw.pop("source_kind", None), source_header=kw.pop("source_header", b""), **kw)


def test_crc32c_is_castagnoli():
    assert fmt.crc32c(b"123456789") == 0xE3069283
    assert fmt.crc32c(b"") == 0


def test_round_trip_of_every_field():
    data = sample_file(source_kind="nifti1", source_header=b"H" * 352)
    c, src = fmt.parse(data, verify_all=True)
    assert c.version == 1
    assert c.header == header()
    assert c.metadata == b"user meta"
    assert (c.source_kind, c.source_header) == ("nifti1", b"H" * 352)
    assert c.models == [b"model-blob"]
    assert c.file_length == len(data)
    (v,) = c.volumes
    assert (v.vmin, v.vmax, v.base, v.model) == (0, 100, 0, 0)
    assert [(s.z0, s.z1, s.voxel_crc, s.length) for s in v.slabs] == [(0, 3, 11, 12), (3, 7, 22, 4)]
    assert [bytes(fmt.read_slab(src, s)) for s in v.slabs] == [b"abcd" * 3, b"efgh"]


def test_layout_matches_the_specification():
    data = sample_file(metadata=b"")
    assert data[:8] == b"\x89NVC\r\n\x1a\n"
    assert struct.unpack_from("<HH", data, 8) == (1, 0)
    # first chunk: HEAD, its CRC covers tag + length + body
    tag, length = struct.unpack_from("<4sQ", data, 12)
    assert tag == b"HEAD" and length == 8 + 8 * 3 + 8 * 3 + 32
    body = data[24 : 24 + length]
    (crc,) = struct.unpack_from("<I", data, 24 + length)
    assert crc == fmt.crc32c(data[12 : 24 + length])
    code, order, ndim, nsp, flags = struct.unpack_from("<BBBBI", body)
    assert (code, order, ndim, nsp, flags) == (3, 0, 3, 3, 0)
    assert struct.unpack_from("<3Q3d", body, 8) == (6, 5, 7, 0.5, 0.5, 2.0)
    # last chunk: END, empty, and the file ends there
    assert data[-16:-4] == b"END " + struct.pack("<Q", 0)
    # index: slab offsets point at SLAB chunks whose length matches
    c, _ = fmt.parse(data)
    for s in c.volumes[0].slabs:
        assert data[s.offset : s.offset + 4] == b"SLAB"
        assert struct.unpack_from("<Q", data, s.offset + 4)[0] == s.length


@pytest.mark.parametrize("dtype", [">i2", ">u8", "<i8", "u1", "i1", "<u4"])
def test_dtype_and_byte_order(dtype):
    base = -5 if np.dtype(dtype).kind == "i" else 7
    data = sample_file(header={"dtype": dtype}, volumes=[(0, 100, base, 0, [(0, 7, 1)], [b"p"])])
    c, _ = fmt.parse(data)
    assert c.header.dtype == np.dtype(dtype) and c.header.dtype.byteorder == np.dtype(dtype).byteorder
    assert c.volumes[0].base == base


def test_2d_and_4d_shapes_constant_volumes_and_shared_models():
    d2 = sample_file(header={"shape": (9, 4), "spacing": None}, volumes=[(3, 3, 0, None, [], [])], models=[])
    c, _ = fmt.parse(d2, verify_all=True)
    assert c.header.shape == (9, 4) and c.header.spacing is None and c.volumes[0].model is None
    vols = [(0, 9, 0, 0, [(0, 7, 5)], [b"a"]), (4, 4, 0, None, [], []), (0, 9, 0, 0, [(0, 2, 6), (2, 7, 7)], [b"b", b"c"])]
    d4 = sample_file(header={"shape": (6, 5, 7, 3)}, volumes=vols, models=[b"shared"])
    c, src = fmt.parse(io.BytesIO(d4), verify_all=True)
    assert [v.model for v in c.volumes] == [0, None, 0]
    assert [len(v.slabs) for v in c.volumes] == [1, 0, 2]
    assert bytes(fmt.read_slab(src, c.volumes[2].slabs[1])) == b"c"


def test_ancillary_chunks_are_skipped_unknown_critical_refused():
    data = sample_file(ancillary=[(b"xtra", b"future data")])
    c, _ = fmt.parse(data, verify_all=True)
    assert c.ancillary == [b"xtra"]
    with pytest.raises(FormatError):
        sample_file(ancillary=[(b"XTRA", b"")])
    # forge a critical unknown chunk: same bytes, tag upper-cased, CRC fixed
    pos = data.index(b"xtra")
    length = struct.unpack_from("<Q", data, pos + 4)[0]
    body = data[pos + 12 : pos + 12 + length]
    forged = bytearray(data)
    forged[pos : pos + 4] = b"XTRA"
    forged[pos + 12 + length : pos + 16 + length] = struct.pack("<I", fmt.crc32c(body, fmt.crc32c(bytes(forged[pos : pos + 12]))))
    with pytest.raises(FormatError, match="critical chunk"):
        fmt.parse(bytes(forged))


def test_versions_magic_flags():
    data = bytearray(sample_file())
    newer = data[:8] + struct.pack("<H", 4) + data[10:]
    with pytest.raises(FormatError, match="newer"):
        fmt.parse(bytes(newer))
    archive = data[:8] + struct.pack("<H", fmt.ARCHIVE_VERSION) + data[10:]  # version 2: DICOM archives
    with pytest.raises(FormatError, match="DICOM series archive"):
        fmt.parse(bytes(archive))
    with pytest.raises(FormatError, match="version"):
        fmt.parse(bytes(data[:8] + struct.pack("<H", 0) + data[10:]))
    with pytest.raises(FormatError, match="magic"):
        fmt.parse(b"PK\x03\x04" + bytes(data[4:]))
    with pytest.raises(FormatError, match="flags"):
        fmt.parse(bytes(data[:10] + b"\x01\x00" + data[12:]))
    with pytest.raises(FormatError, match="magic"):
        fmt.parse(b"")


def test_trailing_data_and_truncation_are_refused():
    data = sample_file()
    with pytest.raises(FormatError, match="trailing"):
        fmt.parse(data + b"\0")
    with pytest.raises(FormatError, match="truncated"):
        fmt.parse(data[:-1])


def test_corrupted_slab_is_an_integrity_error_only_when_read():
    data = bytearray(sample_file())
    c, _ = fmt.parse(bytes(data))
    s = c.volumes[0].slabs[1]
    data[s.offset + 12] ^= 0x01  # first payload byte of the second slab
    c2, src = fmt.parse(bytes(data))  # header and index are intact
    assert bytes(fmt.read_slab(src, c2.volumes[0].slabs[0])) == b"abcd" * 3
    with pytest.raises(IntegrityError, match="CRC"):
        fmt.read_slab(src, c2.volumes[0].slabs[1])
    with pytest.raises(IntegrityError):
        fmt.parse(bytes(data), verify_all=True)


class CountingFile(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.ranges = []

    def read(self, n=-1):
        start = self.tell()
        out = super().read(n)
        self.ranges.append((start, start + len(out)))
        return out


def test_random_access_reads_only_header_index_and_the_slab():
    big = b"\xaa" * 100_000
    data = sample_file(volumes=[(0, 100, 0, 0, [(0, 3, 1), (3, 7, 2)], [big, b"tail"])])
    f = CountingFile(data)
    c, src = fmt.parse(f)
    fmt.read_slab(src, c.volumes[0].slabs[1])
    first = c.volumes[0].slabs[0]
    touched = sum(b - a for a, b in f.ranges)
    assert touched < 1000
    assert not any(a < first.offset + 12 + 100_000 and b > first.offset + 12 for a, b in f.ranges)


def test_writer_refuses_inconsistent_input():
    with pytest.raises(FormatError):
        sample_file(volumes=[(0, 1, 0, 0, [(0, 7, 1)], [])])
    with pytest.raises(FormatError):
        sample_file(volumes=[])
    with pytest.raises(FormatError):
        sample_file(source_kind="dicom", source_header=b"x")
