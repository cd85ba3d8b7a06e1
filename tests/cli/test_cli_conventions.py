"""Conventions users of zstd and nibabel expect from `nvc`: `--version`, a one-line summary on
stderr (silenced by `-q`), outputs created with the usual permissions, and advice instead of a
traceback when an optional dependency is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args, umask: int | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "nvc.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


@pytest.fixture
def volume(tmp_path) -> Path:
    path = tmp_path / "scan.npy"
    np.save(path, (np.arange(12 * 10 * 4) % 97).astype(np.uint16).reshape(12, 10, 4))
    return path


def test_version_is_the_distributions():
    import codec
    import nvc

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert codec.__version__ == nvc.__version__ == declared
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"nvc {declared}"


def test_summary_line_after_compress_and_decompress_and_quiet_silences_it(volume, tmp_path):
    proc = run("compress", volume)
    assert proc.returncode == 0, proc.stderr
    line = proc.stderr.strip()
    assert proc.stderr.count("\n") == 1
    packed = volume.with_name("scan.npy.nvc")
    # sizes, the ratio against the raw voxels, bits/voxel, time
    pattern = (rf"^{re.escape(str(volume))} -> {re.escape(str(packed))}: [\d.]+ (B|KiB) -> [\d.]+ (B|KiB), "
               r"ratio [\d.]+ \(raw voxels [\d.]+ (B|KiB) / \.nvc\), [\d.]+ bits/voxel, [\d.]+ s$")
    assert re.match(pattern, line), line
    raw = 12 * 10 * 4 * 2
    ratio = float(re.search(r"ratio ([\d.]+)", line).group(1))
    assert ratio == pytest.approx(raw / packed.stat().st_size, abs=0.01)

    back = tmp_path / "back.npy"
    proc = run("decompress", packed, "-o", back)
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1
    assert f"ratio {ratio:.2f}" in proc.stderr  # the same ratio, whichever way the data went

    assert run("compress", volume, "-f", "-q").stderr == ""
    assert run("decompress", packed, "-o", back, "-f", "-q").stderr == ""


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_follow_the_umask(volume, tmp_path, umask, mode):
    out = tmp_path / f"out-{umask:o}.nvc"
    assert run("compress", volume, "-o", out, "-q", umask=umask).returncode == 0
    assert out.stat().st_mode & 0o777 == mode
    back = tmp_path / f"back-{umask:o}.npy"
    assert run("decompress", out, "-o", back, "-q", umask=umask).returncode == 0
    assert back.stat().st_mode & 0o777 == mode


def test_a_missing_optional_dependency_gives_install_advice(volume):
    # (torch is no longer needed to compress a small volume: only fitting imports it)
    code = ("import sys; sys.modules['constriction'] = None; from nvc.cli import main; "
            f"sys.exit(main(['compress', '-f', {str(volume)!r}]))")
    proc = run(code=code)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "nvc: this needs the optional package 'constriction', which is not installed: pip install 'nvc[codec]'"
    )


def test_decompress_gives_back_the_file_byte_for_byte(tmp_path):
    """An .npy with a header numpy would not write, and bytes after the data, comes back exactly
    through `nvc compress` / `nvc decompress` (files and pipes)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, (np.arange(8 * 6 * 3) % 50).astype(">u2").reshape(8, 6, 3), version=(2, 0))
    raw = buf.getvalue() + b"trailing bytes"
    src = tmp_path / "odd.npy"
    src.write_bytes(raw)
    assert run("compress", src, "-q").returncode == 0
    packed = tmp_path / "odd.npy.nvc"
    assert run("decompress", packed, "-o", tmp_path / "back.npy", "-q").returncode == 0
    assert (tmp_path / "back.npy").read_bytes() == raw
    piped = subprocess.run([sys.executable, "-m", "nvc.cli", "decompress", "-", "-q"], input=packed.read_bytes(),
                           capture_output=True, cwd=REPO, timeout=300)
    assert piped.returncode == 0 and piped.stdout == raw  # stdin: .npy, since the source was not NIfTI
