"""Synchronous client for the NVC service (httpx).

    from nvc.sdk import Client

    with Client("http://127.0.0.1:8000", api_key="...") as nvc:
        job = nvc.wait(nvc.compress("scan.nii.gz"))
        nvc.download(job, "scan.nvc")
        for result in nvc.compress_many(paths, concurrency=4, dest_dir="out/"):
            print(result.source, result.ok, result.ratio)

Every operation is written once in ``nvc.sdk._core`` (retries, idempotency, long-poll,
redirects, resumable downloads, batch verification); this shell runs it with blocking I/O
and runs batches in a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from nvc.sdk import _base, _core
from nvc.sdk._core import ProgressCallback, RetryHook  # noqa: F401  (part of this module's API)
from nvc.sdk.models import BatchResult, ProgressEvent


@_core.shell(_core.run_sync)
class Client(_core.ClientCore):
    """Talks to one NVC server. Thread-safe: ``compress_many`` shares it between worker threads.

    Methods: ``health``, ``ready``, ``compress``, ``decompress``, ``get_job``, ``cancel``,
    ``wait``, ``download``, ``result_bytes``, ``compress_many``, ``decompress_many``
    (parameters: ``nvc.sdk._core.ClientCore``).
    """

    http_class = httpx.Client

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._bare_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()
        if self._bare is not None:
            self._bare.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bare_client(self) -> httpx.Client:
        with self._bare_lock:  # batches share the client between threads
            return super()._bare_client()

    def _content(self, body: _base.MultipartBody, on_upload: Callable[[int, int], None] | None) -> Iterator[bytes]:
        return body.iter(on_upload)

    def _many(self, plan: Iterator[tuple[Path, Path]], kind: str, params: dict[str, Any], *, concurrency: int,
              verify: str, timeout: float | None, on_progress: ProgressCallback | None) -> Iterator[BatchResult]:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        lock = threading.Lock()
        safe_progress = None
        if on_progress is not None:

            def safe_progress(event: ProgressEvent) -> None:
                with lock:
                    on_progress(event)

        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="nvc-batch")
        pending: set[Future[BatchResult]] = set()
        stop = threading.Event()

        def run_one(source: Path, output: Path) -> BatchResult:
            return _core.run_sync(self.plan_run_one(kind, source, output, params, verify=verify, timeout=timeout,
                                                    on_progress=safe_progress, stopped=stop.is_set))

        try:

            def refill() -> None:
                while len(pending) < concurrency:
                    try:
                        source, output = next(plan)
                    except StopIteration:
                        return
                    pending.add(pool.submit(run_one, source, output))

            refill()
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    pending.discard(future)
                refill()
                for future in finished:
                    yield future.result()
        finally:
            # Normal end: nothing is pending. Early end (consumer stopped, Ctrl-C): tell the
            # in-flight files to stop at their next step and cancel their jobs.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
