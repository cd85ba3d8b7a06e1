"""Asynchronous client for the NVC service (httpx + asyncio); the same API as ``Client``, awaited.

    async with AsyncClient("http://127.0.0.1:8000") as nvc:
        job = await nvc.wait(await nvc.compress("scan.nii.gz"))
        await nvc.download(job, "scan.nvc")
        async for result in nvc.compress_many(paths, concurrency=8, dest_dir="out/"):
            ...

File reads and local verification run in worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from nvc.sdk import _base
from nvc.sdk._base import Source
from nvc.sdk.batch import OutputFor, describe_failure, discard, plan_compress, plan_decompress
from nvc.sdk.client import ProgressCallback, RetryHook, _env_key
from nvc.sdk.errors import JobCancelledError, JobFailedError, NVCConnectionError, WaitTimeoutError
from nvc.sdk.models import BatchResult, Job, JobState, ProgressEvent
from nvc.sdk.retry import RETRYABLE_EXCEPTIONS, RetryPolicy, parse_retry_after
from nvc.sdk.verify import verify_compressed, verify_decompressed


class AsyncClient:
    """Async twin of ``nvc.sdk.Client`` (same parameters; ``transport`` is an async transport)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retry: RetryPolicy | None = None,
        poll_interval: float = 0.5,
        headers: dict[str, str] | None = None,
        on_retry: RetryHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify_tls: bool = True,
    ):
        self.base_url = (base_url or os.environ.get("NVC_SERVER") or _base.DEFAULT_URL).rstrip("/")
        self.api_key = _env_key(api_key)
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.on_retry = on_retry
        self._timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )
        self._verify_tls = verify_tls
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_base.base_headers(self.api_key, headers),
            timeout=self._timeout,
            transport=transport,
            verify=verify_tls,
            follow_redirects=False,
        )
        self._bare: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._bare is not None:
            await self._bare.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _note_retry(self, attempt: int, reason: str, delay: float) -> None:
        if self.on_retry is not None:
            self.on_retry(attempt, reason, delay)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Callable[[], tuple[Any, dict[str, str]]] | None = None,
        stream: bool = False,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        http = client or self._http
        attempt = 0
        while True:
            attempt += 1
            content, extra = body() if body else (None, {})
            request = http.build_request(
                method, url, params=params, headers={**(headers or {}), **extra}, content=content
            )
            try:
                response = await http.send(request, stream=stream)
            except RETRYABLE_EXCEPTIONS as exc:
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"{method} {request.url}: {type(exc).__name__}: {exc or 'connection failed'} "
                        f"(gave up after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"{type(exc).__name__}: {exc}", delay)
                await self._sleep(delay)
                continue
            if self.retry.should_retry(response.status_code, response.headers) and attempt < self.retry.max_attempts:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                await response.aclose()
                delay = self.retry.delay(attempt, retry_after)
                self._note_retry(attempt, f"HTTP {response.status_code}", delay)
                await self._sleep(delay)
                continue
            if stream and response.status_code >= 400:
                await response.aread()
            return response

    async def health(self) -> dict[str, Any]:
        response = await self._send("GET", "/healthz")
        _base.raise_for_response(response)
        return response.json()

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _submit(self, endpoint, source: Source, params, *, filename, idempotency_key, on_upload) -> Job:
        upload = await asyncio.to_thread(_base.UploadSource, source, filename)
        key = idempotency_key or _base.new_idempotency_key()

        def body() -> tuple[Any, dict[str, str]]:
            multipart = _base.MultipartBody(upload)
            return multipart.aiter(on_upload), multipart.headers

        response = await self._send("POST", endpoint, params=params, headers={"Idempotency-Key": key}, body=body)
        return _base.parse_job(response)

    async def compress(
        self,
        source: Source,
        *,
        profile: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> Job:
        return await self._submit(
            "/compress",
            source,
            _base.compress_params(profile),
            filename=filename,
            idempotency_key=idempotency_key,
            on_upload=on_upload,
        )

    async def decompress(
        self,
        source: Source,
        *,
        format: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> Job:
        if filename is None and isinstance(source, (bytes, bytearray, memoryview)):
            filename = "upload.nvc"
        return await self._submit(
            "/decompress",
            source,
            _base.decompress_params(format),
            filename=filename,
            idempotency_key=idempotency_key,
            on_upload=on_upload,
        )

    async def get_job(self, job: Job | str) -> Job:
        return await self._get_job(_base.job_id(job))

    async def _get_job(self, job_id: str, wait: float = 0.0) -> Job:
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return _base.parse_job(await self._send("GET", f"/jobs/{job_id}", params=params))

    async def cancel(self, job: Job | str) -> Job:
        response = await self._send("DELETE", f"/jobs/{_base.job_id(job)}")
        if response.status_code == 204 or not response.content:
            _base.raise_for_response(response)
            return await self.get_job(job)
        return _base.parse_job(response)

    async def wait(
        self,
        job: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        interval = poll_interval or self.poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        current = job if isinstance(job, Job) else await self.get_job(job)
        while not current.state.terminal:
            step = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(current, timeout or 0.0)
                step = min(interval, left)
            # Long-poll: the server answers as soon as the job ends, else after `step` seconds.
            # A server that ignores `wait` answers at once: then sleep the rest of the step.
            asked = time.monotonic()
            current = await self._get_job(current.id, wait=step)
            if not current.state.terminal:
                rest = step - (time.monotonic() - asked)
                if rest > 0.01:
                    await self._sleep(rest)
            if on_update is not None:
                on_update(current)
        if raise_on_failure:
            if current.state is JobState.failed:
                raise JobFailedError(current)
            if current.state is JobState.cancelled:
                raise JobCancelledError(current)
        return current

    async def _result_response(self, job: Job | str) -> httpx.Response:
        response = await self._send("GET", f"/jobs/{_base.job_id(job)}/result", stream=True)
        hops = 0
        while response.is_redirect and hops < 5:
            hops += 1
            location = urljoin(str(response.request.url), response.headers["location"])
            await response.aclose()
            if urlsplit(location)[:2] == urlsplit(self.base_url)[:2]:
                response = await self._send("GET", location, stream=True)
            else:
                if self._bare is None:  # no headers of ours (API key) for other origins
                    self._bare = httpx.AsyncClient(timeout=self._timeout, verify=self._verify_tls)
                response = await self._send("GET", location, stream=True, client=self._bare)
        _base.raise_for_response(response)
        return response

    async def _download(self, job: Job | str, dest, on_progress=None) -> tuple[Path, int, str]:
        job_obj = job if isinstance(job, Job) else await self.get_job(job)
        attempt = 0
        while True:
            attempt += 1
            response = await self._result_response(job_obj)
            path = _base.resolve_dest(dest, job_obj, response)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            target = await asyncio.to_thread(_base.DownloadTarget, path)
            try:
                async for block in response.aiter_bytes(_base.CHUNK):
                    target.write(block)
                    if on_progress is not None:
                        on_progress(target.size, total)
            except RETRYABLE_EXCEPTIONS as exc:
                target.abort()
                await response.aclose()
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"download of job {job_obj.id} failed: {exc} (after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"download: {type(exc).__name__}", delay)
                await self._sleep(delay)
                continue
            except BaseException:
                target.abort()
                await response.aclose()
                raise
            await response.aclose()
            target.commit()
            return path, target.size, target.sha256

    async def download(self, job: Job | str, dest, *, on_progress=None) -> Path:
        """Save the result of a succeeded job to ``dest`` (a file, or a directory to put it in)."""
        return (await self._download(job, dest, on_progress))[0]

    async def result_bytes(self, job: Job | str) -> bytes:
        response = await self._result_response(job)
        try:
            return await response.aread()
        finally:
            await response.aclose()

    async def _run_one(self, kind, source: Path, output: Path, params, *, verify, timeout, on_progress) -> BatchResult:
        start = time.monotonic()
        name = str(source)

        def emit(stage: str, fraction: float | None = None, **extra: Any) -> None:
            if on_progress is not None:
                on_progress(ProgressEvent(source=name, stage=stage, fraction=fraction, **extra))  # type: ignore[arg-type]

        job: Job | None = None
        size_in = 0
        try:
            size_in = source.stat().st_size
            emit("upload", 0.0, done=0, total=size_in)
            on_upload = lambda sent, total: emit("upload", sent / total if total else 1.0, done=sent, total=total)  # noqa: E731
            if kind == "compress":
                job = await self.compress(source, profile=params.get("profile"), on_upload=on_upload)
            else:
                job = await self.decompress(source, format=params.get("format"), on_upload=on_upload)
            emit(job.state.value if not job.state.terminal else "running", job.progress, job=job)
            job = await self.wait(
                job,
                timeout=timeout,
                on_update=lambda j: emit(j.state.value if not j.state.terminal else "running", j.progress, job=j),
            )
            emit("download", 0.0, done=0)
            path, size_out, sha = await self._download(
                job, output, lambda got, total: emit("download", got / total if total else None, done=got, total=total)
            )
            emit("verify", None, job=job)
            check = verify_compressed if kind == "compress" else verify_decompressed
            try:
                how = await asyncio.to_thread(check, job, path, sha256=sha, source=source, mode=verify)
            except Exception:
                discard(path)
                raise
            emit("done", 1.0, job=job)
            return BatchResult(
                source=source,
                output=path,
                ok=True,
                job=job,
                input_bytes=size_in,
                output_bytes=size_out,
                output_sha256=sha,
                verified=how,
                seconds=time.monotonic() - start,
            )
        except Exception as exc:
            message = describe_failure(exc)
            emit("failed", None, job=job, message=message)
            return BatchResult(
                source=source,
                output=None,
                ok=False,
                job=job,
                error=message,
                input_bytes=size_in,
                seconds=time.monotonic() - start,
            )

    async def _many(
        self, plan: Iterator[tuple[Path, Path]], kind, params, *, concurrency, verify, timeout, on_progress
    ) -> AsyncIterator[BatchResult]:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        finished = object()

        async def worker() -> None:
            try:
                for source, output in plan:  # one shared iterator: each file is taken once
                    queue.put_nowait(
                        await self._run_one(
                            kind, source, output, params, verify=verify, timeout=timeout, on_progress=on_progress
                        )
                    )
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

    def compress_many(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        concurrency: int = 4,
        dest_dir: str | os.PathLike[str] | None = None,
        output_for: OutputFor | None = None,
        profile: str | None = None,
        verify: str = "auto",
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[BatchResult]:
        """Async iterator of ``BatchResult`` in completion order (see ``Client.compress_many``)."""
        plan = plan_compress(paths, dest_dir=dest_dir, output_for=output_for)
        return self._many(
            plan,
            "compress",
            {"profile": profile},
            concurrency=concurrency,
            verify=verify,
            timeout=timeout,
            on_progress=on_progress,
        )

    def decompress_many(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        concurrency: int = 4,
        dest_dir: str | os.PathLike[str] | None = None,
        output_for: OutputFor | None = None,
        format: str = "nii.gz",
        verify: str = "auto",
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[BatchResult]:
        """Async iterator of ``BatchResult`` for ``.nvc`` inputs (see ``Client.decompress_many``)."""
        _base.decompress_params(format)
        plan = plan_decompress(paths, dest_dir=dest_dir, output_for=output_for, fmt=format)
        return self._many(
            plan,
            "decompress",
            {"format": format},
            concurrency=concurrency,
            verify=verify,
            timeout=timeout,
            on_progress=on_progress,
        )
