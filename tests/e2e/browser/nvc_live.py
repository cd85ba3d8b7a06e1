"""A live `nvc serve` for end-to-end tests (test support, no tests here).

One server per pytest process, started on first use and shared by tests/e2e/test_web_e2e.py and
tests/e2e/test_remote_e2e.py (starting the stack costs seconds of a 2-core CI budget). It runs
with an embedded Redis on a free port and storage in a temporary folder; NVC_* variables of
the caller are dropped so a developer's configuration (e.g. NVC_REDIS_URL on DB 0) is never
touched. `stop()` ends it and everything it started (its process group).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "data"
PHANTOM = DATA / "mr_phantom_t1_3d_lowres.nii.gz"
#: The smallest real human CT of the shared data (512x512x20, 2 mm slices): the slice viewer's test.
CT = DATA / "ct_abdomen_petct_2mm.nii.gz"

_server: "LiveServer | None" = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def codec_works() -> str | None:
    """None when the codec's engine encodes and decodes here, else why not (a skip reason)."""
    try:
        import numpy as np

        import codec

        volume = np.arange(8 * 8 * 4, dtype=np.uint16).reshape(8, 8, 4)
        if not np.array_equal(codec.decode(codec.encode(volume)), volume):
            return "the codec does not round-trip a tiny volume"
    except Exception as exc:  # ImportError or an engine not ready
        return f"the codec is not usable here: {type(exc).__name__}: {exc}"
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM to `nvc serve` if the test process dies, so a crashed run leaks nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LiveServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="nvc-live-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
        env["NVC_DATA_DIR"] = str(self.folder / "var")
        env["NVC_CORS_ORIGINS"] = "http://portal.example"
        env["PYTHONUNBUFFERED"] = "1"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvc.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
            cwd=self.folder,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nvc serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"nvc serve was not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def server() -> LiveServer:
    """The shared live server (started and waited for on first call)."""
    global _server
    if _server is None:
        candidate = LiveServer()
        try:
            candidate.wait_ready()
        except BaseException:
            candidate.stop()
            raise
        _server = candidate
        atexit.register(stop)
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None
