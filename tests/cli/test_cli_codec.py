"""`nvc compress / decompress / info` as a user runs them: real subprocesses, files and pipes,
exit statuses and one-line error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"


def nvc(*args, input: bytes | None = None, cwd=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nvc.cli", *map(str, args)], input=input, capture_output=True,
                          cwd=cwd or REPO, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"nvc {args} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.startswith("nvc: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.fixture
def nifti(tmp_path) -> Path:
    rng = np.random.default_rng(2)
    data = (rng.integers(0, 30, size=(10, 9, 6)) + np.arange(6) * 50 - 100).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 3.0, 1.0]), dtype=np.int16)
    img.header["descrip"] = b"cli test"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"an extension"))
    path = tmp_path / "scan.nii.gz"
    nib.save(img, str(path))
    return path


def test_compress_info_decompress_files(nifti, tmp_path):
    p = nvc("compress", nifti)
    # no progress bar when stderr is not a terminal: only the one-line summary
    assert p.stdout == b"" and p.stderr.decode().count("\n") == 1 and "bits/voxel" in p.stderr.decode()
    packed = tmp_path / "scan.nii.gz.nvc"
    assert packed.exists()
    table = nvc("info", packed).stdout.decode()
    assert "nvc version 1" in table and "int16" in table and "10 x 9 x 6" in table and "bits/voxel" in table
    d = json.loads(nvc("info", packed, "--json").stdout)
    assert d["shape"] == [10, 9, 6] and d["source_header"] == "nifti1" and d["file_bytes"] == packed.stat().st_size
    out = tmp_path / "back.nii"
    nvc("decompress", packed, "-o", out, "-q")
    a, b = nib.load(str(nifti)), nib.load(str(out))
    assert a.header.binaryblock == b.header.binaryblock
    assert [e.content for e in b.header.extensions] == [b"an extension"]
    assert np.array_equal(np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled()))
    assert np.asarray(b.dataobj.get_unscaled()).dtype == np.int16
    # the default name, and no silent overwrite
    proc = nvc("decompress", packed, check=False)
    assert_one_line_error(proc, "already exists")
    nvc("decompress", packed, "-f")
    assert nib.load(str(nifti)).header.binaryblock == a.header.binaryblock


def test_stdin_stdout_like_zstd(tmp_path):
    a = (np.arange(7 * 6 * 5).reshape(7, 6, 5) * 3 % 251).astype(">u2")
    np.save(tmp_path / "a.npy", a)
    packed = nvc("compress", "-", "-o", "-", input=(tmp_path / "a.npy").read_bytes()).stdout
    assert packed[:8] == b"\x89NVC\r\n\x1a\n"
    raw = nvc("decompress", "-", "--format", "npy", input=packed).stdout
    (tmp_path / "b.npy").write_bytes(raw)
    b = np.load(tmp_path / "b.npy")
    assert b.dtype == a.dtype and np.array_equal(a, b)
    assert json.loads(nvc("info", "-", "--json", input=packed).stdout)["dtype"] == "uint16"


def test_errors_are_one_line_with_non_zero_status(tmp_path):
    (tmp_path / "junk.nvc").write_bytes(b"hello world, not a codec file")
    assert_one_line_error(nvc("decompress", tmp_path / "junk.nvc", "-o", tmp_path / "x.npy", check=False), "bad magic")
    assert_one_line_error(nvc("info", tmp_path / "missing.nvc", check=False), "missing.nvc")
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 4), np.float64))
    assert_one_line_error(nvc("compress", tmp_path / "f.npy", check=False), "floating-point")
    assert_one_line_error(nvc("compress", "-", "-o", "-", input=b"", check=False), "unrecognised")
    assert not (tmp_path / "x.npy").exists()


def test_truncated_file_is_a_clean_error(tmp_path):
    a = (np.arange(60).reshape(5, 4, 3) % 7).astype(np.uint8)
    np.save(tmp_path / "a.npy", a)
    packed = nvc("compress", "-", input=(tmp_path / "a.npy").read_bytes()).stdout
    proc = nvc("decompress", "-", "--format", "npy", input=packed[:-3], check=False)
    assert_one_line_error(proc, "truncated")
    assert proc.stdout == b""


@pytest.mark.slow
def test_real_volume_through_the_cli_and_partial_decode(tmp_path):
    import codec

    src = DATA_DIR / "mr_phantom_t1_3d_lowres.nii.gz"
    if not src.exists():
        pytest.skip(f"real data not available at {src}")
    packed = tmp_path / "phantom.nvc"
    nvc("compress", src, "-o", packed)
    out = tmp_path / "phantom.nii.gz"
    nvc("decompress", packed, "-o", out)
    a, b = nib.load(str(src)), nib.load(str(out))
    va, vb = np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled())
    assert vb.dtype == va.dtype == np.uint16 and np.array_equal(va, vb)
    assert a.header.binaryblock == b.header.binaryblock and np.array_equal(a.affine, b.affine)
    d = codec.info(packed.read_bytes())
    assert d["bits_per_voxel"] < 16 and d["slab_count"] >= 2
    part = codec.decode(packed.read_bytes(), slices=(40, 47))
    assert part.dtype == np.uint16 and np.array_equal(part, va[:, :, 40:47])


def test_train_options_are_passed_through():
    p = nvc("train", "--help")
    assert b"usage: nvc train" in p.stdout and b"--steps" in p.stdout
