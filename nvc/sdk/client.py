"""Synchronous client for the NVC service (httpx).

    from nvc.sdk import Client

    with Client("http://127.0.0.1:8000", api_key="...") as nvc:
        job = nvc.wait(nvc.compress("scan.nii.gz"))
        nvc.download(job, "scan.nvc")
        for result in nvc.compress_many(paths, concurrency=4, dest_dir="out/"):
            print(result.source, result.ok, result.ratio)

Every request goes through one retry loop (``_send``): connection errors, 429 (honouring
``Retry-After``) and 502/503/504 are retried with exponential backoff. Submissions carry an
``Idempotency-Key`` that is the same for all attempts of one call, so a retry never creates a
second job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from nvc.sdk import _base
from nvc.sdk._base import Source
from nvc.sdk.batch import OutputFor, describe_failure, discard, plan_compress, plan_decompress
from nvc.sdk.errors import BatchStoppedError, JobCancelledError, JobFailedError, NVCConnectionError, WaitTimeoutError
from nvc.sdk.models import BatchResult, Job, JobState, ProgressEvent
from nvc.sdk.retry import RETRYABLE_EXCEPTIONS, RetryPolicy, parse_retry_after
from nvc.sdk.verify import verify_compressed, verify_decompressed

ProgressCallback = Callable[[ProgressEvent], None]
RetryHook = Callable[[int, str, float], None]


def _env_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get("NVC_API_KEY") or None)


class Client:
    """Talks to one NVC server. Thread-safe: ``compress_many`` shares it between worker threads.

    :param base_url: the server, e.g. ``http://127.0.0.1:8000`` (default: ``$NVC_SERVER`` or that).
    :param api_key: sent as ``Authorization: Bearer`` and ``X-API-Key`` (default: ``$NVC_API_KEY``).
    :param timeout: seconds for connect/read/write of one request (not for a whole job: see ``wait``).
    :param retry: the ``RetryPolicy``; ``nvc.sdk.retry.NO_RETRY`` to fail fast.
    :param poll_interval: seconds between ``GET /jobs/{id}`` while waiting.
    :param on_retry: called as ``on_retry(attempt, reason, delay)`` before each retry (logging).
    :param transport: an httpx transport (tests use this to inject faults).
    """

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
        transport: httpx.BaseTransport | None = None,
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
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_base.base_headers(self.api_key, headers),
            timeout=self._timeout,
            transport=transport,
            verify=verify_tls,
            follow_redirects=False,
        )
        self._bare: httpx.Client | None = None
        self._bare_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()
        if self._bare is not None:
            self._bare.close()

    def _bare_client(self) -> httpx.Client:
        """A client without our headers (API key) for other origins, e.g. presigned S3 URLs."""
        with self._bare_lock:
            if self._bare is None:
                self._bare = httpx.Client(timeout=self._timeout, verify=self._verify_tls, follow_redirects=False)
            return self._bare

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Callable[[], tuple[Any, dict[str, str]]] | None = None,
        stream: bool = False,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        """One request with retries; ``body`` builds a fresh (content, headers) per attempt."""
        http = client or self._http
        attempt = 0
        while True:
            attempt += 1
            content, extra = body() if body else (None, {})
            request = http.build_request(
                method, url, params=params, headers={**(headers or {}), **extra}, content=content
            )
            try:
                response = http.send(request, stream=stream)
            except RETRYABLE_EXCEPTIONS as exc:
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"{method} {request.url}: {type(exc).__name__}: {exc or 'connection failed'} "
                        f"(gave up after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"{type(exc).__name__}: {exc}", delay)
                self._sleep(delay)
                continue
            if self.retry.should_retry(response.status_code, response.headers) and attempt < self.retry.max_attempts:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                response.close()
                delay = self.retry.delay(attempt, retry_after)
                self._note_retry(attempt, f"HTTP {response.status_code}", delay)
                self._sleep(delay)
                continue
            if stream and response.status_code >= 400:
                response.read()
            return response

    def _note_retry(self, attempt: int, reason: str, delay: float) -> None:
        if self.on_retry is not None:
            self.on_retry(attempt, reason, delay)

    # -- service --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (raises on an error status)."""
        response = self._send("GET", "/healthz")
        _base.raise_for_response(response)
        return response.json()

    def ready(self) -> bool:
        """True when ``GET /readyz`` answers 200 (no retries on 503: that *is* the answer)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    # -- jobs -----------------------------------------------------------------------------

    def _submit(
        self,
        endpoint: str,
        source: Source,
        params: dict[str, str],
        *,
        filename: str | None,
        idempotency_key: str | None,
        on_upload: Callable[[int, int], None] | None,
    ) -> Job:
        upload = _base.UploadSource(source, filename)
        key = idempotency_key or _base.new_idempotency_key()

        def body() -> tuple[Any, dict[str, str]]:
            multipart = _base.MultipartBody(upload)
            return multipart.iter(on_upload), multipart.headers

        response = self._send("POST", endpoint, params=params, headers={"Idempotency-Key": key}, body=body)
        return _base.parse_job(response)

    def compress(
        self,
        source: Source,
        *,
        profile: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> Job:
        """Upload a NIfTI (.nii/.nii.gz) or .npy volume (a path, or bytes with ``filename``); returns the queued job."""
        return self._submit(
            "/compress",
            source,
            _base.compress_params(profile),
            filename=filename,
            idempotency_key=idempotency_key,
            on_upload=on_upload,
        )

    def decompress(
        self,
        source: Source,
        *,
        format: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> Job:
        """Upload a ``.nvc`` file; the result will be ``format`` (``nii.gz`` by default, ``nii`` or ``npy``)."""
        return self._submit(
            "/decompress",
            source,
            _base.decompress_params(format),
            filename=filename or (None if not isinstance(source, (bytes, bytearray, memoryview)) else "upload.nvc"),
            idempotency_key=idempotency_key,
            on_upload=on_upload,
        )

    def get_job(self, job: Job | str) -> Job:
        """``GET /jobs/{id}``: the job's current state."""
        return self._get_job(_base.job_id(job))

    def _get_job(self, job_id: str, wait: float = 0.0) -> Job:
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return _base.parse_job(self._send("GET", f"/jobs/{job_id}", params=params))

    def cancel(self, job: Job | str) -> Job:
        """``DELETE /jobs/{id}``: cancel a queued or running job; returns its state afterwards."""
        response = self._send("DELETE", f"/jobs/{_base.job_id(job)}")
        if response.status_code == 204 or not response.content:
            _base.raise_for_response(response)
            return self.get_job(job)
        return _base.parse_job(response)

    def wait(
        self,
        job: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job is final. Raises ``JobFailedError``/``JobCancelledError`` (unless
        ``raise_on_failure=False``) and ``WaitTimeoutError`` after ``timeout`` seconds."""
        interval = poll_interval or self.poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        current = job if isinstance(job, Job) else self.get_job(job)
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
            current = self._get_job(current.id, wait=step)
            if not current.state.terminal:
                rest = step - (time.monotonic() - asked)
                if rest > 0.01:
                    self._sleep(rest)
            if on_update is not None:
                on_update(current)
        if raise_on_failure:
            if current.state is JobState.failed:
                raise JobFailedError(current)
            if current.state is JobState.cancelled:
                raise JobCancelledError(current)
        return current

    def _result_response(self, job: Job | str) -> httpx.Response:
        """``GET /jobs/{id}/result``, following a redirect (presigned S3 URL) without our credentials."""
        response = self._send("GET", f"/jobs/{_base.job_id(job)}/result", stream=True)
        hops = 0
        while response.is_redirect and hops < 5:
            hops += 1
            location = urljoin(str(response.request.url), response.headers["location"])
            response.close()
            same_origin = urlsplit(location)[:2] == urlsplit(self.base_url)[:2]
            if same_origin:
                response = self._send("GET", location, stream=True)
            else:
                response = self._send("GET", location, stream=True, client=self._bare_client())
        _base.raise_for_response(response)
        return response

    def _download(
        self,
        job: Job | str,
        dest: str | os.PathLike[str],
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> tuple[Path, int, str]:
        """Stream the result to ``dest`` (atomic rename); restarts on a dropped connection."""
        job_obj = job if isinstance(job, Job) else self.get_job(job)
        attempt = 0
        while True:
            attempt += 1
            response = self._result_response(job_obj)
            path = _base.resolve_dest(dest, job_obj, response)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            target = _base.DownloadTarget(path)
            try:
                for block in response.iter_bytes(_base.CHUNK):
                    target.write(block)
                    if on_progress is not None:
                        on_progress(target.size, total)
            except RETRYABLE_EXCEPTIONS as exc:
                target.abort()
                response.close()
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"download of job {job_obj.id} failed: {exc} (after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"download: {type(exc).__name__}", delay)
                self._sleep(delay)
                continue
            except BaseException:
                target.abort()
                response.close()
                raise
            response.close()
            target.commit()
            return path, target.size, target.sha256

    def download(
        self,
        job: Job | str,
        dest: str | os.PathLike[str],
        *,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Save the result of a succeeded job to ``dest`` (a file, or a directory to put it in)."""
        return self._download(job, dest, on_progress)[0]

    def result_bytes(self, job: Job | str) -> bytes:
        """The result of a succeeded job, in memory."""
        response = self._result_response(job)
        try:
            return response.read()
        finally:
            response.close()

    # -- batches --------------------------------------------------------------------------

    def _run_one(
        self,
        kind: str,
        source: Path,
        output: Path,
        params: dict[str, Any],
        *,
        verify: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        stop: threading.Event | None = None,
    ) -> BatchResult:
        start = time.monotonic()
        name = str(source)

        def emit(stage: str, fraction: float | None = None, **extra: Any) -> None:
            if stop is not None and stop.is_set() and stage != "failed":
                raise BatchStoppedError("batch stopped before this file finished")
            if on_progress is not None:
                on_progress(ProgressEvent(source=name, stage=stage, fraction=fraction, **extra))  # type: ignore[arg-type]

        job: Job | None = None
        size_in = 0
        try:
            size_in = source.stat().st_size
            emit("upload", 0.0, done=0, total=size_in)
            on_upload = lambda sent, total: emit("upload", sent / total if total else 1.0, done=sent, total=total)  # noqa: E731
            if kind == "compress":
                job = self.compress(source, profile=params.get("profile"), on_upload=on_upload)
            else:
                job = self.decompress(source, format=params.get("format"), on_upload=on_upload)
            emit(job.state.value if not job.state.terminal else "running", job.progress, job=job)
            job = self.wait(
                job,
                timeout=timeout,
                on_update=lambda j: emit(j.state.value if not j.state.terminal else "running", j.progress, job=j),
            )
            on_download = lambda got, total: emit("download", got / total if total else None, done=got, total=total)  # noqa: E731
            emit("download", 0.0, done=0)
            path, size_out, sha = self._download(job, output, on_download)
            emit("verify", None, job=job)
            try:
                if kind == "compress":
                    how = verify_compressed(job, path, sha256=sha, source=source, mode=verify)
                else:
                    how = verify_decompressed(job, path, sha256=sha, source=source, mode=verify)
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
        except Exception as exc:  # one file's failure is a result, not the end of the batch
            if isinstance(exc, BatchStoppedError) and job is not None and not job.state.terminal:
                try:  # do not leave work running on the server for a batch nobody waits for
                    self.cancel(job)
                except Exception:
                    pass
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

    def _many(
        self,
        plan: Iterator[tuple[Path, Path]],
        kind: str,
        params: dict[str, Any],
        *,
        concurrency: int,
        verify: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> Iterator[BatchResult]:
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
        try:

            def refill() -> None:
                while len(pending) < concurrency:
                    try:
                        source, output = next(plan)
                    except StopIteration:
                        return
                    pending.add(
                        pool.submit(
                            self._run_one,
                            kind,
                            source,
                            output,
                            params,
                            verify=verify,
                            timeout=timeout,
                            on_progress=safe_progress,
                            stop=stop,
                        )
                    )

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
    ) -> Iterator[BatchResult]:
        """Compress many files, ``concurrency`` at a time, yielding each ``BatchResult`` as it finishes.

        Files are streamed from disk; while one file uploads another's result downloads. Each
        result is verified (see ``nvc.sdk.verify``) before it counts as ok. Outputs go to
        ``output_for(path)`` if given, else ``dest_dir/<name>.nvc``, else next to the input.
        ``timeout`` bounds the wait for each job.
        """
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
    ) -> Iterator[BatchResult]:
        """Decompress many ``.nvc`` files; like ``compress_many`` (outputs named ``<name>.<format>``)."""
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
