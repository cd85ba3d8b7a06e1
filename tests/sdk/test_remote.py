"""`nvc remote` against the scripted server (tests/sdk/test_sdk_support.py): directory walking
and output layout, the skip-if-done manifest, the summary and exit status, and that it runs
with only the client extra (torch, numpy, codec, FastAPI blocked from importing)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvc.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sdk_support import FakeNVC, transform  # noqa: E402


@pytest.fixture
def server():
    with FakeNVC(polls_to_finish=1) as fake:
        yield fake


def tree(root: Path) -> list[Path]:
    files = {
        "a.nii.gz": b"A" * 70_000,
        "sub/b.nii": b"B" * 50_000,
        "sub/deeper/c.npy": b"C" * 30_000,
        "sub/readme.txt": b"not a volume",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return [root / n for n in files]


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_walks_directories_keeps_the_layout_and_skips_what_is_done(server, tmp_path, capsys):
    archive = tmp_path / "archive"
    tree(archive)
    out = tmp_path / "out"
    args = [
        "remote",
        "compress",
        str(archive),
        "--server",
        server.url,
        "-j",
        "3",
        "-o",
        str(out),
        "--verify",
        "sha256",
        "--json",
    ]
    code, summary, err = run_cli(args, capsys)
    assert code == 0, err
    assert summary["ok"] == 3 and summary["failed"] == 0 and summary["skipped"] == 0
    expected = {
        "a.nii.gz.nvc": "a.nii.gz",  # the layout under the input folder, not nested in its name
        "sub/b.nii.nvc": "sub/b.nii",
        "sub/deeper/c.npy.nvc": "sub/deeper/c.npy",
    }
    for result_path, source in expected.items():
        assert (out / result_path).read_bytes() == transform((archive / source).read_bytes())
    assert summary["bytes_in"] == 150_000 and summary["bytes_out"] == sum((out / p).stat().st_size for p in expected)
    assert summary["verified"] == {"sha256": 3}
    assert "nvc remote compress: 3 ok, 0 failed, 0 skipped" in err and "throughput" in err
    assert len(server.jobs) == 3

    # a rerun skips everything: same inputs, same options, outputs intact
    code, summary, err = run_cli(args, capsys)
    assert code == 0 and summary["skipped"] == 3 and summary["ok"] == 0 and len(server.jobs) == 3
    assert err.count("skip ") == 3

    # a changed input, a damaged output and a changed option are redone; the rest is skipped
    (archive / "a.nii.gz").write_bytes(b"a" * 70_000)
    (out / "sub/b.nii.nvc").write_bytes(b"damaged")
    code, summary, err = run_cli(args, capsys)
    assert code == 0 and summary["ok"] == 2 and summary["skipped"] == 1 and len(server.jobs) == 5
    assert (out / "a.nii.gz.nvc").read_bytes() == transform(b"a" * 70_000)
    code, summary, _ = run_cli(args + ["--profile", "archive"], capsys)
    assert summary["ok"] == 3 and {j["profile"] for j in list(server.jobs.values())[-3:]} == {"archive"}


def test_failures_are_named_with_their_reason_and_the_exit_status_is_1(server, tmp_path, capsys):
    good = tmp_path / "good.nii.gz"
    good.write_bytes(b"G" * 10_000)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"X" * 10_000)
    code, summary, err = run_cli(
        ["remote", "compress", str(good), str(broken), "--server", server.url, "--verify", "sha256", "--json"], capsys
    )
    assert code == 1
    assert summary["ok"] == 1 and summary["failed"] == 1
    assert summary["failures"] == [{"path": str(broken), "error": summary["failures"][0]["error"]}]
    assert "bad header" in summary["failures"][0]["error"]
    assert f"FAILED {broken}: " in err and "bad header" in err
    assert (tmp_path / "good.nii.gz.nvc").is_file() and not (tmp_path / "broken.nii.gz.nvc").exists()


def test_decompress_writes_the_chosen_format_next_to_the_inputs(server, tmp_path, capsys):
    for name in ("x.nvc", "y.nvc"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
    code, summary, err = run_cli(
        [
            "remote",
            "decompress",
            str(tmp_path),
            "--server",
            server.url,
            "--format",
            "npy",
            "--verify",
            "sha256",
            "--json",
            "-j",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["x.npy", "y.npy"]
    assert (tmp_path / "x.npy").read_bytes() == transform(b"x.nvc" * 1000)
    assert {j["output_format"] for j in server.jobs.values()} == {"npy"}


def test_bad_arguments_fail_before_anything_is_sent(server, tmp_path, capsys):
    for folder in ("x", "y"):  # the same layout under two input folders, one -o: outputs would clash
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.nii").write_bytes(b"1" * 100)
    args = ["remote", "compress", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(tmp_path / "out")]
    assert main([*args, "--server", server.url]) == 1
    assert "would both be written to" in capsys.readouterr().err
    (tmp_path / "a.nii").write_bytes(b"1" * 100)
    assert main(["remote", "compress", str(tmp_path / "missing"), "--server", server.url]) == 1
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["remote", "compress", str(tmp_path / "a.nii"), "--server", server.url, "-j", "0"]) == 1
    assert not server.attempts


def test_an_unreachable_server_fails_every_file_with_the_reason(tmp_path, capsys):
    import socket

    (tmp_path / "a.nii").write_bytes(b"1" * 100)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(
        ["remote", "compress", str(tmp_path / "a.nii"), "--server", f"http://127.0.0.1:{port}", "--retries", "1"]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"FAILED {tmp_path / 'a.nii'}" in err and "gave up after 2 attempts" in err


BLOCKER = """
import sys, importlib.abc
# A client-only install: the nvc distribution's packages are there (codec/naming.py, the pure
# naming rule, included) but none of the codec's or the server's dependencies.
BLOCKED = {"torch", "numpy", "nibabel", "constriction", "fastapi", "starlette", "celery", "redis", "app", "worker",
           "service"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: client-only install)", name=name)
sys.meta_path.insert(0, Block())
from nvc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_works_with_only_the_client_extra_and_falls_back_to_the_jobs_sha256(server, tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"S" * 20_000)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "remote", "compress", str(tmp_path), "--server", server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["ok"] == 1 and summary["verified"] == {"sha256": 1}
    # --verify decode cannot be honoured without the codec: the file fails, saying why
    (tmp_path / "other.nii").write_bytes(b"O" * 100)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER,
            "remote",
            "compress",
            str(tmp_path / "other.nii"),
            "--server",
            server.url,
            "--verify",
            "decode",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "needs the codec installed" in proc.stderr


def test_progress_bars_draw_one_line_per_file_in_flight_and_an_overall_bar():
    from nvc.commands.remote import Item, Progress
    from nvc.sdk import ProgressEvent

    items = [Item(Path("/d/a.nii.gz"), Path("/o/a.nvc"), 1000), Item(Path("/d/b.nii.gz"), Path("/o/b.nvc"), 3000)]
    stream = io.StringIO()
    progress = Progress(items, stream, bars=True)
    progress.event(ProgressEvent(source="/d/a.nii.gz", stage="upload", fraction=0.5, done=500, total=1000))
    progress.last = 0
    progress.event(ProgressEvent(source="/d/b.nii.gz", stage="running", fraction=0.5))
    screen = stream.getvalue().split("\x1b[J")[-1]
    lines = screen.strip().splitlines()
    assert len(lines) == 3
    assert "a.nii.gz" in lines[0] and "upload" in lines[0] and "0.0/0.0 MB" in lines[0]
    assert "b.nii.gz" in lines[1] and "job  50%" in lines[1]
    # overall: (1000 * 0.075 + 3000 * 0.475) / 4000 = 37.5 %
    assert lines[2].startswith("overall [") and " 38%" in lines[2] and "0/2 files" in lines[2]
    progress.line("ok   /d/a.nii.gz")
    assert "ok   /d/a.nii.gz\n" in stream.getvalue() and progress.finished == 1
