"""One output naming rule (codec/naming.py) for the CLI, the SDK, `nvc remote` and the service."""

from __future__ import annotations

from pathlib import Path

import pytest

from codec.files import default_output
from codec.naming import compressed_name, decompressed_name
from nvc.commands.remote import _out_name
from nvc.sdk._base import compressed_name as sdk_compressed, decompressed_name as sdk_decompressed
from service.submission import output_name


@pytest.mark.parametrize(("name", "packed"), [
    ("scan.nii.gz", "scan.nii.gz.nvc"), ("scan.nii", "scan.nii.nvc"), ("a.b.npy", "a.b.npy.nvc"),
    ("dir/scan.NII.GZ", "scan.NII.GZ.nvc"),
])
def test_compress_appends_nvc_everywhere(name, packed):
    assert compressed_name(name) == sdk_compressed(name) == _out_name(name, "compress", "") == packed
    assert output_name("compress", name, "nii.gz", "nvc") == packed.replace(" ", "_")


@pytest.mark.parametrize(("name", "fmt", "out"), [
    ("scan.nii.gz.nvc", "nii.gz", "scan.nii.gz"), ("scan.nii.gz.nvc", "npy", "scan.npy"),
    ("scan.npy.nvc", "nii", "scan.nii"), ("scan.nvc", "nii.gz", "scan.nii.gz"), ("scan.nvc", "npy", "scan.npy"),
])
def test_decompress_takes_it_off_again_everywhere(name, fmt, out):
    assert decompressed_name(name, fmt) == sdk_decompressed(name, fmt) == _out_name(name, "decompress", fmt) == out
    assert output_name("decompress", name, "nvc", fmt) == out


def test_without_a_format_the_name_or_the_source_decides():
    assert decompressed_name("scan.nii.gz.nvc") == "scan.nii.gz"
    assert default_output(Path("d/scan.nvc"), "nifti1") == Path("d/scan.nii.gz")
    assert default_output(Path("d/scan.nvc"), None) == Path("d/scan.npy")
    # not named .nvc: never the input's own name
    assert decompressed_name("scan.npy", "npy") == "scan.npy.out.npy"


def test_a_round_trip_gives_the_original_name_back():
    for name in ("ct.nii.gz", "mr.nii", "vol.npy"):
        assert decompressed_name(compressed_name(name)) == name


def test_the_service_keeps_names_safe():
    assert output_name("compress", "../../etc/x y.nii.gz", "nii.gz", "nvc") == "x_y.nii.gz.nvc"
    assert output_name("compress", None, "npy", "nvc") == "volume.npy.nvc"
    assert output_name("decompress", None, "nvc", "nii") == "volume.nii"
