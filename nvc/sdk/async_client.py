"""Asynchronous client for the NVC service (httpx + asyncio); the same API as ``Client``, awaited.

    async with AsyncClient("http://127.0.0.1:8000") as nvc:
        job = await nvc.wait(await nvc.compress("scan.nii.gz"))
        await nvc.download(job, "scan.nvc")
        async for result in nvc.compress_many(paths, concurrency=8, dest_dir="out/"):
            ...

Every operation is written once in ``nvc.sdk._core``; this shell awaits its I/O, runs file
reads and local verification in worker threads (so the event loop stays responsive) and runs
batches as asyncio tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from nvc.sdk import _base, _core
from nvc.sdk._core import ProgressCallback
from nvc.sdk.models import BatchResult


@_core.shell(_core.run_async)
class AsyncClient(_core.ClientCore):
    """Async twin of ``nvc.sdk.Client`` (same parameters; ``transport`` is an async transport)."""

    http_class = httpx.AsyncClient

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._bare is not None:
            await self._bare.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _content(self, body: _base.MultipartBody, on_upload: Callable[[int, int], None] | None) -> AsyncIterator[bytes]:
        return body.aiter(on_upload)

    async def _many(self, plan: Iterator[tuple[Path, Path]], kind: str, params: dict[str, Any], *, concurrency: int,
                    verify: str, timeout: float | None,
                    on_progress: ProgressCallback | None) -> AsyncIterator[BatchResult]:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        finished = object()

        async def worker() -> None:
            try:
                for source, output in plan:  # one shared iterator: each file is taken once
                    one = self.plan_run_one(kind, source, output, params, verify=verify, timeout=timeout,
                                            on_progress=on_progress)
                    queue.put_nowait(await _core.run_async(one))
            except Exception as exc:  # a bad plan (e.g. output_for raised): surface it
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(finished)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        running = len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is finished:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
