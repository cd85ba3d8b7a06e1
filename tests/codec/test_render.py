"""Slice rendering (codec/render.py): the documented window/level formula, recomputed here
independently in plain Python; the presets and the CT intercept rule; the automatic window;
NIfTI rescale parsing; PNG and .npy bytes that give back exactly what went in."""

from __future__ import annotations

import io
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from codec import render


def reference_grey(value: float, center: float, width: float) -> int:
    """Step 4 of codec/render.py's docstring, one value at a time (Python's round is half-even too)."""
    g = round((value - (center - width / 2)) * 255.0 / width)
    return min(255, max(0, g))


def test_render_is_the_documented_formula_and_transposes_x_y_to_rows_columns():
    rng = np.random.default_rng(1)
    s = rng.integers(-1200, 2500, (7, 5)).astype(np.int16)  # (x, y)
    resc = render.Rescale(2.0, -5.0, True)
    img = render.render(s, render.Window(-100.0, 900.0), resc)
    assert img.shape == (5, 7) and img.dtype == np.uint8  # rows = y, columns = x
    for x in range(7):
        for y in range(5):
            assert img[y, x] == reference_grey(float(s[x, y]) * 2.0 - 5.0, -100.0, 900.0)
    assert 0 in img and 255 in img  # clipped at both ends


def test_ct_presets_shift_unsigned_data_without_a_rescale_by_minus_1024():
    s = np.array([[0, 1024, 1064, 3000]], dtype=np.uint16)  # air, water, +40 HU, bone
    window, resc = render.choose_window(s, render.Rescale(), "soft_tissue")
    assert window == render.Window(40.0, 400.0) and resc.intercept == -1024.0
    img = render.render(s, window, resc)
    assert img[:, 0].tolist() == [0, reference_grey(0, 40, 400), 128, 255]
    # signed data, or a file that declares its rescale: values are used as they are
    signed = s.astype(np.int16) - 1024
    assert render.choose_window(signed, render.Rescale(), "lung")[1] == render.Rescale()
    declared = render.Rescale(1.0, -1000.0, True)
    assert render.choose_window(s, declared, "bone")[1] == declared
    assert set(render.PRESETS) == {"auto", "lung", "soft_tissue", "bone", "brain"}


def test_auto_window_spans_the_half_percentiles_of_the_slice():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 700, (40, 30)).astype(np.uint16)
    window, resc = render.choose_window(s, render.Rescale())
    lo, hi = np.percentile(s.astype(np.float64), [0.5, 99.5])
    assert window == render.Window((lo + hi) / 2, hi - lo) and resc == render.Rescale()
    flat = np.full((4, 4), 9, dtype=np.uint16)
    assert render.choose_window(flat, render.Rescale())[0] == render.Window(9.0, 1.0)  # never a zero width


def test_window_requests_that_make_no_sense_are_refused_with_a_reason():
    s = np.zeros((3, 3), np.int16)
    with pytest.raises(ValueError, match="unknown window preset"):
        render.choose_window(s, render.Rescale(), "liver")
    with pytest.raises(ValueError, match="both center and width"):
        render.choose_window(s, render.Rescale(), center=10.0)
    with pytest.raises(ValueError, match="positive"):
        render.choose_window(s, render.Rescale(), center=10.0, width=0.0)
    with pytest.raises(ValueError, match="2-D"):
        render.render(np.zeros((2, 2, 2)), render.Window(0, 1))


def test_rescale_of_reads_nifti_1_and_2_scaling():
    def header(cls, slope, inter):
        h = cls(np.zeros((2, 2, 2), np.int16), np.eye(4)).header
        h.set_slope_inter(slope, inter)
        return h.binaryblock

    assert render.rescale_of(header(nib.Nifti1Image, 2.0, -1024.0)) == render.Rescale(2.0, -1024.0, True)
    assert render.rescale_of(header(nib.Nifti2Image, 0.5, 3.0)) == render.Rescale(0.5, 3.0, True)
    assert render.rescale_of(header(nib.Nifti1Image, 1.0, 0.0)) == render.Rescale(1.0, 0.0, False)
    assert render.rescale_of(header(nib.Nifti1Image, math.nan, math.nan)) == render.Rescale()
    assert render.rescale_of(None) == render.Rescale() and render.rescale_of(b"short") == render.Rescale()


def test_png_and_npy_bytes_give_back_exactly_what_went_in():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    with Image.open(io.BytesIO(render.png_bytes(img))) as back:
        assert back.mode == "L" and np.array_equal(np.asarray(back), img)
    s = np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert np.array_equal(np.load(io.BytesIO(render.npy_bytes(s))), s)


def test_slice_index_checks_the_range_and_counts_negative_from_the_end():
    assert render.slice_index([4, 4, 140], 139) == (139, 0)
    assert render.slice_index([4, 4, 140], -1) == (139, 0)
    assert render.slice_index([4, 4, 10, 3], 2, 2) == (2, 2)
    with pytest.raises(ValueError, match="has 140 slices"):
        render.slice_index([4, 4, 140], 140)
    with pytest.raises(ValueError, match="volume 3 is out of range"):
        render.slice_index([4, 4, 10, 3], 0, 3)
