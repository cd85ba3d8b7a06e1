"""codec.files: NIfTI-1/-2 and .npy in and out. The voxel array (stored integers, exact dtype) and
the NIfTI header (every field, extensions included) must come back exactly."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import codec
from codec import UnsupportedInputError
from codec.files import compress_file, decompress_file, read_volume


def sheared_affine():
    aff = np.array([[-0.48, 0.0, 0.0, 120.0], [0.0, -0.48, 1.7, 110.0], [0.0, 0.0, 5.3, -60.0], [0, 0, 0, 1]])
    return aff


def make_nifti(path: Path, *, dtype="int16", shape=(12, 10, 5), klass=nib.Nifti1Image, endian=None, slope=2.0, inter=-1.0):
    rng = np.random.default_rng(11)
    data = (rng.integers(-300, 900, size=shape)).astype(dtype) if np.dtype(dtype).kind == "i" else \
        rng.integers(0, 1200, size=shape).astype(dtype)
    img = klass(data, sheared_affine(), dtype=np.dtype(dtype))
    hdr = img.header
    if endian:
        img = klass(data, sheared_affine(), header=hdr.as_byteswapped(endian), dtype=np.dtype(dtype).newbyteorder(endian))
        hdr = img.header
    hdr["descrip"] = b"NVC test volume"
    hdr["intent_name"] = b"testing"
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(sheared_affine(), code=1)
    hdr.set_sform(sheared_affine(), code=2)
    hdr.set_slope_inter(slope, inter)
    hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"first extension, keep me"))
    hdr.extensions.append(nib.nifti1.Nifti1Extension(40, b"\x00\x01\x02 binary extension \xff" * 3))
    nib.save(img, str(path))
    return path


def load_exact(path: Path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj.get_unscaled())


def assert_same_nifti(a: Path, b: Path):
    ia, da = load_exact(a)
    ib, db = load_exact(b)
    assert db.dtype == da.dtype and np.array_equal(db, da)
    assert type(ia.header) is type(ib.header)
    assert ia.header.binaryblock == ib.header.binaryblock  # every header field, byte for byte
    assert [(e.get_code(), e.content) for e in ia.header.extensions] == \
        [(e.get_code(), e.content) for e in ib.header.extensions]
    assert np.array_equal(ia.affine, ib.affine) and ia.header.get_zooms() == ib.header.get_zooms()
    assert ia.header.get_slope_inter() == ib.header.get_slope_inter()
    assert np.array_equal(ia.get_fdata(), ib.get_fdata())


def raw_nii(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("out_suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_is_exact(tmp_path, suffix, out_suffix):
    src = make_nifti(tmp_path / f"scan{suffix}")
    nvc = compress_file(src)
    assert nvc == tmp_path / f"scan{suffix}.nvc"
    out = decompress_file(nvc, tmp_path / f"back{out_suffix}")
    assert len(nib.load(str(out)).header.extensions) == 2
    assert_same_nifti(src, out)
    assert raw_nii(out) == raw_nii(src)  # the .nii bytes themselves are identical
    d = codec.info(nvc.read_bytes())
    assert d["source_header"] == "nifti1" and d["spacing"] == pytest.approx(list(nib.load(str(src)).header.get_zooms()))


@pytest.mark.parametrize(
    "kw",
    [
        dict(dtype="uint16"),
        dict(dtype="uint8", shape=(9, 8)),
        dict(dtype="int16", shape=(6, 5, 4, 3)),
        dict(dtype="int16", endian=">"),
        dict(dtype="int32", klass=nib.Nifti2Image),
        dict(dtype="int16", slope=np.nan, inter=np.nan),
    ],
)
def test_nifti_variants(tmp_path, kw):
    src = make_nifti(tmp_path / "v.nii.gz", **kw)
    if kw.get("endian"):
        assert read_volume(src).array.dtype == np.dtype(kw["dtype"]).newbyteorder(">")
    out = decompress_file(compress_file(src, tmp_path / "v.nvc"), tmp_path / "w.nii.gz")
    assert_same_nifti(src, out)
    assert raw_nii(out) == raw_nii(src)


def test_default_output_names(tmp_path):
    src = make_nifti(tmp_path / "a.nii.gz")
    nvc = compress_file(src)
    src.rename(tmp_path / "orig.nii.gz")
    out = decompress_file(nvc)
    assert out == tmp_path / "a.nii.gz"
    assert_same_nifti(tmp_path / "orig.nii.gz", out)


def test_read_volume_gives_the_stored_integers(tmp_path):
    src = make_nifti(tmp_path / "s.nii.gz", slope=3.0, inter=5.0)
    vf = read_volume(src)
    _, stored = load_exact(src)
    assert vf.array.dtype == stored.dtype and np.array_equal(vf.array, stored)
    assert vf.source_format == "nii.gz" and vf.nifti_header[344:348] == b"n+1\0"
    assert vf.spacing == pytest.approx(nib.load(str(src)).header.get_zooms())


@pytest.mark.parametrize("dtype", ["uint16", ">i2", "int8", "uint64"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_round_trip(tmp_path, dtype, order):
    a = np.asarray(np.arange(5 * 4 * 3).reshape(5, 4, 3) * 7 + 3, dtype=dtype, order=order)
    np.save(tmp_path / "a.npy", a)
    nvc = compress_file(tmp_path / "a.npy")
    out = decompress_file(nvc, tmp_path / "b.npy")
    b = np.load(out)
    assert b.dtype == a.dtype and np.array_equal(a, b)
    # no NIfTI header stored: a fresh one is made for .nii output
    nii = decompress_file(nvc, tmp_path / "b.nii.gz")
    img = nib.load(str(nii))
    assert np.array_equal(np.asarray(img.dataobj.get_unscaled()), a)


def test_npy_object_and_pickled_arrays_are_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UnsupportedInputError, match="object"):
        compress_file(tmp_path / "o.npy")
    np.save(tmp_path / "f.npy", np.zeros((3, 3, 3), np.float32))
    with pytest.raises(UnsupportedInputError, match="floating"):
        compress_file(tmp_path / "f.npy")
    np.savez(tmp_path / "z.npz", a=np.zeros(3))
    with pytest.raises(UnsupportedInputError, match="npz"):
        compress_file(tmp_path / "z.npz")


def test_hostile_npy_header_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False, "shape": (4096, 4096, 4096)})
    (tmp_path / "h.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(UnsupportedInputError, match="limit"):
        compress_file(tmp_path / "h.npy")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False, "shape": (64, 64, 64)})
    (tmp_path / "t.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(UnsupportedInputError, match="truncated"):
        compress_file(tmp_path / "t.npy")


def test_refused_nifti_inputs(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    nib.save(img, str(tmp_path / "f.nii"))
    with pytest.raises(UnsupportedInputError, match="integer"):
        compress_file(tmp_path / "f.nii")
    nib.save(nib.Nifti1Pair(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(tmp_path / "p.img"))
    with pytest.raises(UnsupportedInputError, match="pair"):
        compress_file(tmp_path / "p.hdr")
    good = make_nifti(tmp_path / "g.nii")
    (tmp_path / "cut.nii").write_bytes(good.read_bytes()[:-10])
    with pytest.raises(UnsupportedInputError, match="truncated"):
        compress_file(tmp_path / "cut.nii")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(UnsupportedInputError, match="gzip"):
        compress_file(tmp_path / "bad.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"\0" * 400)
    with pytest.raises(UnsupportedInputError):
        compress_file(tmp_path / "junk.nii")
    (tmp_path / "five.nii").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.int16), np.eye(4)), str(tmp_path / "five.nii"))
    with pytest.raises(UnsupportedInputError, match="5-D"):
        compress_file(tmp_path / "five.nii")


def test_nifti_header_must_match_the_array(tmp_path):
    vf = read_volume(make_nifti(tmp_path / "m.nii"))
    with pytest.raises(UnsupportedInputError, match="shape"):
        codec.encode(vf.array[:, :, :3], nifti_header=vf.nifti_header)
    with pytest.raises(UnsupportedInputError, match="dtype"):
        codec.encode(vf.array.astype(np.int32), nifti_header=vf.nifti_header)


def test_unknown_output_extension(tmp_path):
    src = make_nifti(tmp_path / "e.nii")
    nvc = compress_file(src)
    with pytest.raises(UnsupportedInputError, match="output format"):
        decompress_file(nvc, tmp_path / "out.tiff")
    assert not (tmp_path / "out.tiff").exists()


def test_hostile_stored_nifti_header_is_a_format_error(tmp_path):
    """An .nvc whose SRCH chunk holds junk still decodes as an array, but refuses to write a .nii."""
    a = (np.arange(5 * 4 * 3).reshape(5, 4, 3) % 9).astype(np.uint8)
    good = codec.encode(a)
    from codec import format as fmt

    c, _ = fmt.parse(good)
    forged = fmt.build(c.header, [(v.vmin, v.vmax, v.base, v.model, [(s.z0, s.z1, s.voxel_crc) for s in v.slabs],
                                   [bytes(good[s.offset + 12 : s.offset + 12 + s.length]) for s in v.slabs])
                                  for v in c.volumes], c.models, source_kind="nifti1", source_header=b"\x5c\x01" + b"\0" * 400)
    assert np.array_equal(codec.decode(forged), a)
    (tmp_path / "f.nvc").write_bytes(forged)
    with pytest.raises(codec.FormatError, match="NIfTI header"):
        decompress_file(tmp_path / "f.nvc", tmp_path / "f.nii")
    assert np.array_equal(np.load(decompress_file(tmp_path / "f.nvc", tmp_path / "f.npy")), a)
