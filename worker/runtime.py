"""Per-process handles of a worker: settings, the job store, storage and the device.

Why per process: Celery forks its pool after the parent imported the task module, and a Redis
socket or an S3 client must not be shared across a fork, so each pool process builds its own
on first use (`runtime()`), and again if it finds itself in a new process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from service.jobs import JobStore
from service.settings import Settings, get_settings
from service.storage import Storage, make_storage

log = logging.getLogger("nvc.worker")


@dataclass
class Runtime:
    """Per-process handles (built after the pool forks: no shared sockets)."""

    settings: Settings
    store: JobStore
    storage: Storage
    device: str
    pid: int


_runtime: Runtime | None = None


def detect_device() -> str:
    """'cuda:0 (<name>)' when this process sees a GPU (pinned by CUDA_VISIBLE_DEVICES), else 'cpu'."""
    if os.environ.get("NVC_DEVICE", "auto") == "cpu":  # the codec's own switch
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    except Exception:  # no torch / broken driver: the CPU is the fallback
        pass
    return "cpu"


def runtime() -> Runtime:
    """This process's handles, built from the environment (or the last `configure`) on first use."""
    if _runtime is None or _runtime.pid != os.getpid():
        settings = _runtime.settings if _runtime is not None else get_settings()
        if not settings.redis_url:
            raise RuntimeError("NVC_REDIS_URL is not set")
        configure(settings)
    assert _runtime is not None
    return _runtime


def configure(settings: Settings) -> Runtime:
    """Use `settings` (instead of the environment) in this process, e.g. when embedding or testing."""
    global _runtime
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    # A Redis restart of a few seconds must not fail the jobs in flight: retry each command
    # with backoff (about 20 s in all) before giving up.
    client = redis.Redis.from_url(
        settings.redis_url, decode_responses=True, health_check_interval=30, socket_connect_timeout=5,
        socket_timeout=30, retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 14),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    _runtime = Runtime(
        settings=settings,
        store=JobStore(client, settings.key_prefix, settings.job_ttl_seconds),
        storage=make_storage(settings),
        device=detect_device(),
        pid=os.getpid(),
    )
    return _runtime


def reset() -> None:
    """Forget this process's handles (the next `runtime()` reads the environment again)."""
    global _runtime
    _runtime = None


def warm_up() -> None:
    """Import the codec and code a tiny volume, so the first real job pays no start-up cost."""
    import numpy as np

    import codec

    from worker.verify import VerificationError

    volume = (np.arange(8 * 8 * 4, dtype=np.uint16) % 251).reshape(8, 8, 4)
    decoded = codec.decode(codec.encode(volume))
    if not np.array_equal(decoded, volume):
        raise VerificationError("codec warm-up round trip is not lossless")
