"""`nvc compress DIR`, `nvc info`, `nvc decompress -o DIR` on a DICOM study, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")

from dicom_series import (  # noqa: E402
    CORPUS_ONE_BIT,
    CORPUS_VERBATIM_REASONS,
    NOT_CODABLE,
    PATIENT_NAME,
    pydicom_corpus,
    real_crop,
    write_series,
    write_structured_report,
)

REPO = Path(__file__).resolve().parents[2]


def nvc(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nvc.cli", *map(str, args)], capture_output=True, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"nvc {args} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "study"
    ct = real_crop("ct_head_phantom_thick_5mm.nii.gz", (48, 40, 4))
    write_series(root / "ct", ct, series_number=1, syntax="explicit")
    mr = np.minimum(real_crop("mr_phantom_t1_3d_lowres.nii.gz", (32, 32, 3)), 4095).astype(np.uint16)
    write_series(root / "mr", mr, modality="MR", series_number=2, syntax="implicit", bits_stored=12, junk_high_bits=True,
                 description="T1")
    write_structured_report(root / "sr.dcm")
    return root


def test_compress_info_decompress_folder(study, tmp_path):
    archive = tmp_path / "study.nvc"
    p = nvc("compress", study, "-o", archive)
    assert "instances coded" in p.stderr.decode() and "1 files stored verbatim" in p.stderr.decode()
    table = nvc("info", archive).stdout.decode()
    assert "DICOM archive" in table and "CT" in table and "MR" in table
    assert "1.2.826.0.1.3680043.8.498.1.2.1" in table and "48x40x4" in table and "4 instances (4 coded" in table
    assert PATIENT_NAME.split("^")[0] not in table
    d = json.loads(nvc("info", archive, "--json").stdout)
    assert d["instances_coded"] == 7 and d["files_verbatim"] == 1 and d["file_bytes"] == archive.stat().st_size
    out = tmp_path / "restored"
    p = nvc("decompress", archive, "-o", out)
    assert "8 files restored" in p.stderr.decode()
    assert tree(out) == tree(study)
    # a second run refuses to overwrite, -f allows it
    p = nvc("decompress", archive, "-o", out, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr.decode() and "Traceback" not in p.stderr.decode()
    nvc("decompress", archive, "-o", out, "-f", "-q")


def test_default_names_and_zip_input(study, tmp_path):
    zpath = tmp_path / "series.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, content in tree(study / "ct").items():
            zf.writestr(name, content)
    nvc("compress", zpath, "-q")
    assert (tmp_path / "series.nvc").exists()
    nvc("decompress", tmp_path / "series.nvc", "-q")
    assert tree(tmp_path / "series") == tree(study / "ct")


def test_damaged_archive_names_lost_files(study, tmp_path):
    archive = tmp_path / "a.nvc"
    nvc("compress", study, "-o", archive, "-q")
    from codec import dicom

    ai = dicom.open_archive(archive.read_bytes())
    vol = next(v for v in ai.volumes if ai.series[v["series"]]["modality"] == "MR")
    ref = ai.archive.chunks[vol["chunk"]]
    data = bytearray(archive.read_bytes())
    data[ref.offset + 40] ^= 0x55
    archive.write_bytes(bytes(data))
    p = nvc("decompress", archive, "-o", tmp_path / "out", check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "Traceback" not in err
    assert err.count("cannot restore mr/") == 3 and "ct/" not in err.replace("3 failed", "")
    restored = tree(tmp_path / "out")
    assert set(restored) == {k for k in tree(study) if not k.startswith("mr/")}


def test_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    p = nvc("compress", tmp_path / "empty", check=False)
    assert p.returncode == 1 and "holds no files" in p.stderr.decode() and p.stderr.decode().count("\n") == 1
    p = nvc("decompress", tmp_path / "nothing.nvc", "-o", tmp_path / "x", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr.decode()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_whole_corpus_round_trips_through_the_cli(tmp_path):
    """The whole DICOM test corpus (every file pydicom and, when installed, pydicom-data ship: 244
    files, 60 MB) as one folder: one `nvc compress`, one `nvc info --json`, one `nvc decompress`,
    every file compared byte for byte; the 1-bit segmentations coded, the broken files counted as
    verbatim with their reasons. 53 s on the 2-core machine at load average 2.5-3."""
    corpus = pydicom_corpus()
    src = tmp_path / "corpus"
    for name, content in corpus.items():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    nvc("compress", src, "-o", tmp_path / "c.nvc", "-q")
    d = json.loads(nvc("info", tmp_path / "c.nvc", "--json").stdout)
    assert d["files"] == len(corpus) and d["instances_coded"] + d["files_verbatim"] == len(corpus)
    reasons = d["verbatim_reasons"]
    for reason in set(CORPUS_VERBATIM_REASONS.values()):
        assert reasons.get(reason) == list(CORPUS_VERBATIM_REASONS.values()).count(reason), reason
    assert all(reason.startswith(NOT_CODABLE) for reason in reasons), reasons
    one_bit = sum(1 for name in corpus if name.rsplit("/", 1)[-1] in CORPUS_ONE_BIT)
    assert one_bit >= 2 and d["instances_coded"] >= 60
    nvc("decompress", tmp_path / "c.nvc", "-o", tmp_path / "back", "-q")
    assert tree(tmp_path / "back") == corpus
