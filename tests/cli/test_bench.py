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


def test_bench_reports_the_best_other_codec_and_nvcs_ratio_to_it(volume_file, tmp_path):
    """Per volume: the lowest verified reference codec and nvc / it; for the corpus: the mean of
    the per-volume best, NVC's mean over it and the largest per-volume ratio."""
    path, a = volume_file
    b = (a[::-1] // 2).astype(np.int16)  # a second volume that codes differently
    path_b = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(b, np.eye(4), dtype=np.int16), str(path_b))
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", str(path), str(path_b), "--codecs", "jpegls,htj2k,jxl_e9", "--json", str(out_json),
                 "--md", str(out_md), "-q"]) == 0
    report = json.loads(out_json.read_text())
    ratios = []
    for v in report["volumes"]:
        others = {c: v["results"][c]["bits_per_voxel"] for c in ("jpegls", "htj2k", "jxl_e9")}
        best = min(others, key=others.get)
        assert v["best_other"] == {"codec": best, "bits_per_voxel": others[best]}
        nvc_bpv = v["results"]["nvc_default"]["bits_per_voxel"]
        assert v["ratio_to_best_other"]["nvc_default"] == pytest.approx(nvc_bpv / others[best])
        ratios.append(nvc_bpv / others[best])
    best_mean = sum(v["best_other"]["bits_per_voxel"] for v in report["volumes"]) / 2
    assert report["best_other_mean_bits_per_voxel"] == pytest.approx(best_mean)
    assert report["ratio_to_best_other_mean"]["nvc_default"] == pytest.approx(
        report["mean_bits_per_voxel"]["nvc_default"] / best_mean)
    assert report["ratio_to_best_other_max"]["nvc_default"] == pytest.approx(max(ratios))
    md = out_md.read_text()
    assert "| best other | nvc_default / best other |" in md
    first = report["volumes"][0]
    assert f"| {first['best_other']['codec']} {first['best_other']['bits_per_voxel']:.3f} | " in md
    assert f"**{report['ratio_to_best_other_mean']['nvc_default']:.3f}x** (max {max(ratios):.3f}x)" in md


def test_jpeg_xl_effort_9_is_a_default_reference_codec():
    assert "jxl_e9" in bench.DEFAULT_CODECS and set(bench.DEFAULT_CODECS) <= set(bench.ALL_CODECS)


def test_bench_plot_writes_a_chart(volume_file, tmp_path):
    from PIL import Image

    path, _ = volume_file
    out_png = tmp_path / "img" / "bench.png"
    out_json = tmp_path / "bench.json"
    assert main(["bench", str(path), "--codecs", "jpegls,htj2k", "--plot", str(out_png), "--json", str(out_json),
                 "-q"]) == 0
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # bars, text and hatching, not a blank canvas
    # the same chart from the saved report
    from nvc import bench_plot

    again = tmp_path / "again.png"
    assert bench_plot.main([str(out_json), str(again)]) == 0
    assert again.stat().st_size > 10_000
