"""`nvc slice`: one slice of an .nvc file as PNG (the documented rendering of the source slice)
or as .npy (the exact stored values), decoding only the slab that holds it."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import codec
from codec import format as fmt
from codec import render
from nvc.cli import main


@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    """A 140-slice CT-like uint16 volume (air 0, tissue around 1064) coded with the default profile."""
    rng = np.random.default_rng(7)
    x, y, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(140), indexing="ij")
    body = ((x - 12) ** 2 + (y - 10) ** 2) < 64
    a = np.where(body, 1000 + 3 * z + rng.integers(0, 80, x.shape), rng.integers(0, 4, x.shape)).astype(np.uint16)
    folder = tmp_path_factory.mktemp("slice")
    src = folder / "tall.nii.gz"
    nib.save(nib.Nifti1Image(a, np.diag([0.7, 0.7, 1.5, 1.0])), str(src))
    out = folder / "tall.nvc"
    assert main(["compress", str(src), "-o", str(out), "-q"]) == 0
    return a, out


def test_png_is_the_reference_rendering_of_the_source_slice(tall, tmp_path):
    a, nvc = tall
    png = tmp_path / "s.png"
    assert main(["slice", str(nvc), "77", "-o", str(png), "--window", "soft_tissue", "-q"]) == 0
    window, resc = render.choose_window(a[:, :, 77], render.Rescale(), "soft_tissue")
    with Image.open(png) as image:
        assert np.array_equal(np.asarray(image), render.render(a[:, :, 77], window, resc))
    assert main(["slice", str(nvc), "-1", "-o", str(png), "--center", "1100", "--width", "300",
                 "--intercept", "0", "-f", "-q"]) == 0
    with Image.open(png) as image:
        expect = render.render(a[:, :, 139], render.Window(1100, 300), render.Rescale(1.0, 0.0, True))
        assert np.array_equal(np.asarray(image), expect)


def test_npy_is_the_exact_slice_and_only_its_slab_is_read(tall, tmp_path, monkeypatch):
    a, nvc = tall
    slabs = codec.info(nvc.read_bytes())["slabs"][0]
    assert len(slabs) >= 4  # the default profile's 32-slice slabs: 5 of them
    reads = []
    real = fmt.read_slab
    monkeypatch.setattr(fmt, "read_slab", lambda src, s: reads.append((s.z0, s.z1)) or real(src, s))
    out = tmp_path / "s.npy"
    assert main(["slice", str(nvc), "100", "--npy", "-o", str(out), "-q"]) == 0
    back = np.load(out)
    assert back.dtype == a.dtype and np.array_equal(back, a[:, :, 100])
    (only,) = reads
    assert only[0] <= 100 < only[1]
    reads.clear()
    codec.decode(nvc.read_bytes())
    assert len(reads) == len(slabs)


def test_default_output_name_and_readable_errors(tall, tmp_path, capsys):
    a, nvc = tall
    assert main(["slice", str(nvc), "3", "-q"]) == 0
    default = nvc.with_name("tall_z3.png")
    assert default.is_file()
    assert main(["slice", str(nvc), "3", "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["slice", str(nvc), "140", "-o", str(tmp_path / "x.png")]) == 1
    assert "out of range: the volume has 140 slices (0..139)" in capsys.readouterr().err
    assert main(["slice", str(nvc), "3", "--window", "liver", "-o", str(tmp_path / "x.png")]) == 1
    assert "unknown window preset" in capsys.readouterr().err
    not_nvc = tmp_path / "n.nvc"
    not_nvc.write_bytes(b"hello" * 20)
    assert main(["slice", str(not_nvc), "0", "-o", str(tmp_path / "y.png")]) == 1
    assert "nvc" in capsys.readouterr().err
