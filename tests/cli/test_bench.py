"""`nvc bench`: every codec on the same data, verified round trips, figures that match an
independent computation with the documented methodology, JSON and Markdown outputs."""

from __future__ import annotations

import json

import imagecodecs
import nibabel as nib
import numpy as np
import pytest

from nvc import bench
from nvc.cli import main


@pytest.fixture
def volume_file(tmp_path):
    rng = np.random.default_rng(4)
    x, y, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(5), indexing="ij")
    a = (-300 + 200 * np.sin(x / 4) + 150 * np.cos(y / 5) + 20 * z + rng.integers(0, 30, x.shape)).astype(np.int16)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(a, np.eye(4), dtype=np.int16), str(path))
    return path, a


def test_bench_all_codecs(volume_file, tmp_path, capsys):
    path, a = volume_file
    out_json, out_md = tmp_path / "r" / "bench.json", tmp_path / "r" / "bench.md"
    rc = main(["bench", str(path), "--profiles", "default", "--codecs", ",".join(bench.ALL_CODECS),
               "--json", str(out_json), "--md", str(out_md), "-q"])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["all_verified"] and report["columns"] == ["nvc_default", *bench.ALL_CODECS]
    (v,) = report["volumes"]
    assert v["name"] == "vol" and v["shape"] == [24, 20, 5] and v["raw_bytes"] == a.size * 2
    for col, r in v["results"].items():
        assert r["verified"], col
        assert r["bits_per_voxel"] == pytest.approx(8 * r["bytes"] / a.size)
        assert r["encode_MBps"] == pytest.approx(a.size * 2 / 1e6 / r["encode_s"])
    # independent check of the per-slice methodology: slice k as (rows=y, cols=x), minus the negative minimum
    expect = sum(len(imagecodecs.jpegls_encode(np.ascontiguousarray((a[:, :, k].T.astype(np.int32) - a.min())
                                                                   .astype(np.uint16)))) for k in range(5))
    assert v["results"]["jpegls"]["bytes"] == expect
    import tomoz

    assert v["results"]["tomoz"]["bytes"] == len(tomoz.encode(np.ascontiguousarray(a.transpose(2, 1, 0))))
    import codec

    assert v["results"]["nvc_default"]["bytes"] == len(codec.encode(a, spacing=(1.0, 1.0, 1.0)))
    assert report["mean_bits_per_voxel"]["jpegls"] == pytest.approx(v["results"]["jpegls"]["bits_per_voxel"])
    md = out_md.read_text()
    assert "| vol | (24,20,5) |" in md and "**mean**" in md
    assert md in capsys.readouterr().out


def test_bench_reports_a_broken_round_trip(volume_file, tmp_path, monkeypatch, capsys):
    path, _ = volume_file
    real = imagecodecs.jpegls_decode
    monkeypatch.setattr(imagecodecs, "jpegls_decode", lambda b: real(b) ^ 1)
    out_json = tmp_path / "b.json"
    rc = main(["bench", str(path), "--profiles", "none", "--codecs", "jpegls,htj2k", "--json", str(out_json), "-q"])
    assert rc == 1
    assert "not bit-exact" in capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert not report["all_verified"]
    assert not report["volumes"][0]["results"]["jpegls"]["verified"]
    assert report["volumes"][0]["results"]["htj2k"]["verified"]


def test_bench_argument_errors(volume_file, capsys):
    path, _ = volume_file
    assert main(["bench", str(path), "--codecs", "gzip"]) == 1
    assert "unknown codec" in capsys.readouterr().err
    assert main(["bench", str(path), "--profiles", "turbo", "--codecs", "none"]) == 1
    assert "unknown profile" in capsys.readouterr().err
    assert main(["bench", str(path) + ".missing"]) == 1


def test_unsigned_slices_methodology():
    a = np.array([[[-5, 3], [0, 7]]], dtype=np.int16)  # shape (1, 2, 2): x=1, y=2, z=2
    s = bench.unsigned_slices(a)
    assert [t.dtype for t in s] == [np.uint16, np.uint16]
    assert np.array_equal(s[0], (a[:, :, 0].T + 5).astype(np.uint16))
    u = np.array([[[3, 9]]], dtype=np.uint16)
    assert np.array_equal(bench.unsigned_slices(u)[1], u[:, :, 1].T)  # unsigned data: unchanged


def test_centre_crop_takes_the_middle_and_clips_to_the_array() -> None:
    import numpy as np

    from nvc.bench import centre_crop

    a = np.arange(10 * 8 * 6).reshape(10, 8, 6)
    c = centre_crop(a, (4, 8, 100))
    assert c.shape == (4, 8, 6)
    assert np.array_equal(c, a[3:7, :, :])
    assert centre_crop(a, None) is a
