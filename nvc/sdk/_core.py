"""One implementation of the client, for both ``Client`` and ``AsyncClient``: everything but I/O.

Why this shape: the sync and the async client must behave the same (retries, idempotency,
long-poll, redirects, resumable downloads, batch verification), and two hand-kept copies of
that logic drift apart. So every operation is written once, as a *plan*: a generator that
yields small I/O requests (``Send``, ``Sleep``, ``Close``, ``Read``, ``Drain``,
``Blocking``) and gets their results (or their exceptions) sent back. Plans compose with
``yield from``. A shell runs a plan with its own I/O: ``run_sync`` performs each request
directly, ``run_async`` awaits it (file and CPU work go to a thread). This is the "sans-I/O"
pattern of h11 and friends, applied to a client; the shells (``client.py``,
``async_client.py``) keep only what really differs: the httpx client type, closing, the
request body iterator and the concurrency of batches.

Public operations are the ``plan_<name>`` methods of ``ClientCore`` listed in
``OPERATIONS``; ``shell(run_sync)``/``shell(run_async)`` publish them on a shell class under
``<name>``, with the plan's signature and docstring.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from nvc.sdk import _base
from nvc.sdk._base import Source
from nvc.sdk.batch import OutputFor, describe_failure, discard, plan_compress, plan_decompress
from nvc.sdk.errors import BatchStoppedError, JobCancelledError, JobFailedError, NVCConnectionError, WaitTimeoutError
from nvc.sdk.models import BatchResult, Job, JobState, ProgressEvent, SliceImage
from nvc.sdk.retry import RETRYABLE_EXCEPTIONS, RetryPolicy, parse_retry_after
from nvc.sdk.verify import verify_compressed, verify_decompressed

T = TypeVar("T")
#: A plan: yields I/O requests, receives their results, returns its answer.
Plan = Generator["Op", Any, T]
ProgressCallback = Callable[[ProgressEvent], None]
RetryHook = Callable[[int, str, float], None]


# ----------------------------------------------------------------------------------- I/O requests


class Op:
    """One I/O request of a plan, with its blocking (``run``) and awaited (``arun``) form."""

    def run(self) -> Any:
        raise NotImplementedError

    async def arun(self) -> Any:
        raise NotImplementedError


@dataclass
class Send(Op):
    """Send a built request on an httpx client (sync or async, whichever built it)."""

    http: Any
    request: httpx.Request
    stream: bool = False

    def run(self) -> httpx.Response:
        return self.http.send(self.request, stream=self.stream)

    async def arun(self) -> httpx.Response:
        return await self.http.send(self.request, stream=self.stream)


@dataclass
class Sleep(Op):
    seconds: float

    def run(self) -> None:
        time.sleep(self.seconds)

    async def arun(self) -> None:
        await asyncio.sleep(self.seconds)


@dataclass
class Close(Op):
    response: httpx.Response

    def run(self) -> None:
        self.response.close()

    async def arun(self) -> None:
        await self.response.aclose()


@dataclass
class Read(Op):
    """The whole body of a streamed response."""

    response: httpx.Response

    def run(self) -> bytes:
        return self.response.read()

    async def arun(self) -> bytes:
        return await self.response.aread()


@dataclass
class Drain(Op):
    """Feed every chunk of a streamed response body to ``sink``."""

    response: httpx.Response
    sink: Callable[[bytes], None]

    def run(self) -> None:
        for block in self.response.iter_bytes(_base.CHUNK):
            self.sink(block)

    async def arun(self) -> None:
        async for block in self.response.aiter_bytes(_base.CHUNK):
            self.sink(block)


class Blocking(Op):
    """File or CPU work: called directly by the sync client, in a thread by the async one."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def run(self) -> Any:
        return self.fn(*self.args, **self.kwargs)

    async def arun(self) -> Any:
        return await asyncio.to_thread(self.fn, *self.args, **self.kwargs)


# ------------------------------------------------------------------------------------ running plans


class Stepper:
    """Drives a plan one request at a time; its own exceptions are kept for ``value``."""

    def __init__(self, plan: Plan[Any]):
        self.plan = plan
        self.op: Op | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self.advance(lambda: plan.send(None))

    @property
    def pending(self) -> bool:
        return self.op is not None

    def advance(self, step: Callable[[], Op]) -> None:
        try:
            self.op = step()
        except StopIteration as stop:
            self.op, self._value = None, stop.value
        except BaseException as exc:  # the plan's own error: raised by `value`
            self.op, self._error = None, exc

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome of the current request back to the plan."""
        if error is not None:
            self.advance(lambda: self.plan.throw(error))
        else:
            self.advance(lambda: self.plan.send(result))

    @property
    def value(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def _outcome(op: Op) -> tuple[Any, BaseException | None]:
    try:
        return op.run(), None
    except BaseException as exc:
        return None, exc


async def _aoutcome(op: Op) -> tuple[Any, BaseException | None]:
    try:
        return await op.arun(), None
    except BaseException as exc:
        return None, exc


def run_sync(plan: Plan[T]) -> T:
    """Run a plan with blocking I/O."""
    step = Stepper(plan)
    while step.op is not None:
        step.settle(*_outcome(step.op))
    return step.value


async def run_async(plan: Plan[T]) -> T:
    """Run a plan with awaited I/O."""
    step = Stepper(plan)
    while step.op is not None:
        step.settle(*await _aoutcome(step.op))
    return step.value


#: Public operations: ``ClientCore.plan_<name>`` becomes ``<name>`` on both shells.
OPERATIONS = (
    "health", "ready", "compress", "decompress", "get_job", "list_jobs", "cancel", "wait", "download",
    "result_bytes", "slice", "slice_range",
)


def shell(runner: Callable[[Plan[Any]], Any]) -> Callable[[type], type]:
    """Class decorator: publish every operation of ``OPERATIONS`` on the class, run by ``runner``
    (``run_sync``: plain methods; ``run_async``: coroutines)."""

    def publish(cls: type) -> type:
        for name in OPERATIONS:
            setattr(cls, name, _bind(getattr(ClientCore, f"plan_{name}"), name, runner))
        return cls

    return publish


def _bind(plan_fn: Callable[..., Plan[Any]], name: str, runner: Callable[[Plan[Any]], Any]) -> Callable[..., Any]:
    if runner is run_async:

        async def method(self: ClientCore, *args: Any, **kwargs: Any) -> Any:
            return await run_async(plan_fn(self, *args, **kwargs))

    else:

        def method(self: ClientCore, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            return runner(plan_fn(self, *args, **kwargs))

    functools.update_wrapper(method, plan_fn)
    method.__name__ = method.__qualname__ = name
    return method


def _header_float(response: httpx.Response, name: str) -> float | None:
    try:
        return float(response.headers[name])
    except (KeyError, ValueError):
        return None


def _slice_image(job_id: str, response: httpx.Response, **where: int) -> SliceImage:
    count = _header_float(response, "x-slice-count")
    return SliceImage(
        job_id=job_id, **where, slice_count=int(count) if count is not None else None,
        position_mm=_header_float(response, "x-slice-position-mm"),
        window_center=_header_float(response, "x-window-center"), window_width=_header_float(response, "x-window-width"),
        media_type=response.headers.get("content-type", "application/octet-stream").split(";")[0].strip(),
        content=response.content,
    )


def env_api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else (os.environ.get("NVC_API_KEY") or None)


# ------------------------------------------------------------------------------------- the client


class ClientCore:
    """What ``Client`` and ``AsyncClient`` share: settings, and every operation as a plan.

    :param base_url: the server, e.g. ``http://127.0.0.1:8000`` (default: ``$NVC_SERVER`` or that).
    :param api_key: sent as ``Authorization: Bearer`` and ``X-API-Key`` (default: ``$NVC_API_KEY``).
    :param timeout: seconds for connect/read/write of one request (not for a whole job: see ``wait``).
    :param retry: the ``RetryPolicy``; ``nvc.sdk.retry.NO_RETRY`` to fail fast.
    :param poll_interval: seconds between ``GET /jobs/{id}`` while waiting.
    :param on_retry: called as ``on_retry(attempt, reason, delay)`` before each retry (logging).
    :param transport: an httpx transport (sync or async, as the shell; tests inject faults with it).
    :param direct_upload_bytes: files at least this large go straight to the server's S3 store in
        presigned parts (``nvc.sdk.direct_upload``) when it has one; None: always stream.
    """

    #: ``httpx.Client`` or ``httpx.AsyncClient`` (set by the shell).
    http_class: type = httpx.Client

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
        transport: Any = None,
        verify_tls: bool = True,
        direct_upload_bytes: int | None = 64 * 1024 * 1024,
    ):
        self.base_url = (base_url or os.environ.get("NVC_SERVER") or _base.DEFAULT_URL).rstrip("/")
        self.api_key = env_api_key(api_key)
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.on_retry = on_retry
        self.direct_upload_bytes = direct_upload_bytes
        self._timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )
        self._verify_tls = verify_tls
        self._http = self.http_class(
            base_url=self.base_url,
            headers=_base.base_headers(self.api_key, headers),
            timeout=self._timeout,
            transport=transport,
            verify=verify_tls,
            follow_redirects=False,
        )
        self._bare: Any = None

    # -- hooks of the shells ----------------------------------------------------------------

    def _new_bare_client(self) -> Any:
        """A client without our headers (API key) for other origins, e.g. presigned S3 URLs."""
        return self.http_class(timeout=self._timeout, verify=self._verify_tls, follow_redirects=False)

    def _bare_client(self) -> Any:
        if self._bare is None:
            self._bare = self._new_bare_client()
        return self._bare

    def _content(self, body: _base.MultipartBody, on_upload: Callable[[int, int], None] | None) -> Any:
        """The request content streaming ``body`` (an iterator, or an async iterator)."""
        raise NotImplementedError

    def _many(self, plan: Iterator[tuple[Path, Path]], kind: str, params: dict[str, Any], *, concurrency: int,
              verify: str, timeout: float | None, on_progress: ProgressCallback | None) -> Any:
        """Run ``plan_run_one`` for each planned file, ``concurrency`` at a time, yielding results."""
        raise NotImplementedError

    def _note_retry(self, attempt: int, reason: str, delay: float) -> None:
        if self.on_retry is not None:
            self.on_retry(attempt, reason, delay)

    # -- requests ---------------------------------------------------------------------------

    def plan_send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        upload: _base.UploadSource | None = None,
        on_upload: Callable[[int, int], None] | None = None,
        stream: bool = False,
        bare: bool = False,
        content: bytes | None = None,
        json_body: Any = None,
    ) -> Plan[httpx.Response]:
        """One request with retries (connection errors, 429, 502-504, 409 with Retry-After);
        an upload is streamed afresh on each attempt."""
        http = self._bare_client() if bare else self._http
        attempt = 0
        while True:
            attempt += 1
            extra: dict[str, str] = {}
            if upload is not None:
                body = _base.MultipartBody(upload)
                content, extra = self._content(body, on_upload), body.headers
            request = http.build_request(method, url, params=params, headers={**(headers or {}), **extra},
                                         content=content, json=json_body)
            try:
                response = yield Send(http, request, stream)
            except RETRYABLE_EXCEPTIONS as exc:
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"{method} {request.url}: {type(exc).__name__}: {exc or 'connection failed'} "
                        f"(gave up after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"{type(exc).__name__}: {exc}", delay)
                yield Sleep(delay)
                continue
            if self.retry.should_retry(response.status_code, response.headers) and attempt < self.retry.max_attempts:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                yield Close(response)
                delay = self.retry.delay(attempt, retry_after)
                self._note_retry(attempt, f"HTTP {response.status_code}", delay)
                yield Sleep(delay)
                continue
            if stream and response.status_code >= 400:
                yield Read(response)
            return response

    # -- service ----------------------------------------------------------------------------

    def plan_health(self) -> Plan[dict[str, Any]]:
        """``GET /healthz`` (raises on an error status)."""
        response = yield from self.plan_send("GET", "/healthz")
        _base.raise_for_response(response)
        return response.json()

    def plan_ready(self) -> Plan[bool]:
        """True when ``GET /readyz`` answers 200 (no retries on 503: that *is* the answer)."""
        try:
            response = yield Send(self._http, self._http.build_request("GET", "/readyz"))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- jobs -------------------------------------------------------------------------------

    def plan_submit(self, endpoint: str, source: Source, params: dict[str, str], *, filename: str | None,
                    idempotency_key: str | None, on_upload: Callable[[int, int], None] | None,
                    resume_upload: str | None = None) -> Plan[Job]:
        """Upload ``source``; one ``Idempotency-Key`` for all attempts, so a retry never makes a
        second job. Large files (``direct_upload_bytes``) go straight to S3 storage when the server
        has it; ``resume_upload``: the id of such an upload that stopped (``DirectUploadError``)."""
        from nvc.sdk.direct_upload import plan_submit_direct

        upload = yield Blocking(_base.UploadSource, source, filename)
        key = idempotency_key or _base.new_idempotency_key()
        if resume_upload is not None or (self.direct_upload_bytes is not None
                                         and upload.size >= self.direct_upload_bytes):
            job = yield from plan_submit_direct(self, endpoint, upload, params, key, resume_upload)
            if job is not None:
                if on_upload is not None:
                    on_upload(upload.size, upload.size)
                return job
        response = yield from self.plan_send(
            "POST", endpoint, params=params, headers={"Idempotency-Key": key}, upload=upload, on_upload=on_upload
        )
        return _base.parse_job(response)

    def plan_compress(
        self,
        source: Source,
        *,
        profile: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
        resume_upload: str | None = None,
    ) -> Plan[Job]:
        """Upload a NIfTI (.nii/.nii.gz) or .npy volume (a path, or bytes with ``filename``); returns the queued job."""
        return (yield from self.plan_submit("/compress", source, _base.compress_params(profile), filename=filename,
                                            idempotency_key=idempotency_key, on_upload=on_upload,
                                            resume_upload=resume_upload))

    def plan_decompress(
        self,
        source: Source,
        *,
        format: str | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_upload: Callable[[int, int], None] | None = None,
        resume_upload: str | None = None,
    ) -> Plan[Job]:
        """Upload a ``.nvc`` file; the result will be ``format`` (``nii.gz`` by default, ``nii`` or ``npy``)."""
        if filename is None and isinstance(source, (bytes, bytearray, memoryview)):
            filename = "upload.nvc"
        # a DICOM series archive always restores to a zip of its files (a volume format cannot apply)
        params = {"format": "zip"} if _base.is_dicom_archive(source) else _base.decompress_params(format)
        return (yield from self.plan_submit("/decompress", source, params, filename=filename,
                                            idempotency_key=idempotency_key, on_upload=on_upload,
                                            resume_upload=resume_upload))

    def plan_get_job(self, job: Job | str, wait: float = 0.0) -> Plan[Job]:
        """``GET /jobs/{id}``: the job's current state (``wait``: long-poll up to that many seconds)."""
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return _base.parse_job((yield from self.plan_send("GET", f"/jobs/{_base.job_id(job)}", params=params)))

    def plan_list_jobs(
        self, *, state: str | Iterable[str] | None = None, limit: int = 20, cursor: str | None = None
    ) -> Plan[tuple[list[Job], str | None]]:
        """``GET /jobs``: one page of this key's jobs, newest first (only those in ``state``,
        one state or several); returns (jobs, cursor of the next page or None)."""
        states = [state] if isinstance(state, str) else list(state or [])
        params: list[tuple[str, str]] = [("limit", str(limit)), *(("state", s) for s in states)]
        if cursor:
            params.append(("cursor", cursor))
        response = yield from self.plan_send("GET", "/jobs", params=params)  # type: ignore[arg-type]
        _base.raise_for_response(response)
        body = response.json()
        return [Job.model_validate(job) for job in body["jobs"]], body.get("next_cursor")

    def plan_cancel(self, job: Job | str) -> Plan[Job]:
        """``DELETE /jobs/{id}``: cancel a queued or running job; returns its state afterwards."""
        response = yield from self.plan_send("DELETE", f"/jobs/{_base.job_id(job)}")
        if response.status_code == 204 or not response.content:
            _base.raise_for_response(response)
            return (yield from self.plan_get_job(job))
        return _base.parse_job(response)

    def plan_wait(
        self,
        job: Job | str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Plan[Job]:
        """Poll until the job is final. Raises ``JobFailedError``/``JobCancelledError`` (unless
        ``raise_on_failure=False``) and ``WaitTimeoutError`` after ``timeout`` seconds."""
        interval = poll_interval or self.poll_interval
        deadline = None if timeout is None else time.monotonic() + timeout
        current = job if isinstance(job, Job) else (yield from self.plan_get_job(job))
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
            current = yield from self.plan_get_job(current.id, wait=step)
            if not current.state.terminal:
                rest = step - (time.monotonic() - asked)
                if rest > 0.01:
                    yield Sleep(rest)
            if on_update is not None:
                on_update(current)
        if raise_on_failure:
            if current.state is JobState.failed:
                raise JobFailedError(current)
            if current.state is JobState.cancelled:
                raise JobCancelledError(current)
        return current

    def plan_result_response(self, job: Job | str) -> Plan[httpx.Response]:
        """``GET /jobs/{id}/result``, following a redirect (presigned S3 URL) without our credentials."""
        response = yield from self.plan_send("GET", f"/jobs/{_base.job_id(job)}/result", stream=True)
        hops = 0
        while response.is_redirect and hops < 5:
            hops += 1
            location = urljoin(str(response.request.url), response.headers["location"])
            yield Close(response)
            same_origin = urlsplit(location)[:2] == urlsplit(self.base_url)[:2]
            response = yield from self.plan_send("GET", location, stream=True, bare=not same_origin)
        _base.raise_for_response(response)
        return response

    def plan_fetch(
        self, job: Job | str, dest: str | os.PathLike[str], on_progress: Callable[[int, int | None], None] | None = None
    ) -> Plan[tuple[Path, int, str]]:
        """Stream the result to ``dest`` (atomic rename), restarting on a dropped connection;
        returns (path, size, SHA-256)."""
        job_obj = job if isinstance(job, Job) else (yield from self.plan_get_job(job))
        attempt = 0
        while True:
            attempt += 1
            response = yield from self.plan_result_response(job_obj)
            path = _base.resolve_dest(dest, job_obj, response)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            target = yield Blocking(_base.DownloadTarget, path)

            def sink(block: bytes, target: _base.DownloadTarget = target) -> None:
                target.write(block)
                if on_progress is not None:
                    on_progress(target.size, total)

            try:
                yield Drain(response, sink)
            except RETRYABLE_EXCEPTIONS as exc:
                target.abort()
                yield Close(response)
                if attempt >= self.retry.max_attempts:
                    raise NVCConnectionError(
                        f"download of job {job_obj.id} failed: {exc} (after {attempt} attempts)"
                    ) from exc
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, f"download: {type(exc).__name__}", delay)
                yield Sleep(delay)
                continue
            except BaseException:
                target.abort()
                yield Close(response)
                raise
            yield Close(response)
            target.commit()
            return path, target.size, target.sha256

    def plan_download(
        self,
        job: Job | str,
        dest: str | os.PathLike[str],
        *,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> Plan[Path]:
        """Save the result of a succeeded job to ``dest`` (a file, or a directory to put it in)."""
        return (yield from self.plan_fetch(job, dest, on_progress))[0]

    def plan_result_bytes(self, job: Job | str) -> Plan[bytes]:
        """The result of a succeeded job, in memory."""
        response = yield from self.plan_result_response(job)
        try:
            return (yield Read(response))
        finally:
            yield Close(response)

    # -- slices -----------------------------------------------------------------------------

    def plan_slice(
        self,
        job: Job | str,
        z: int,
        *,
        window: str | None = None,
        center: float | None = None,
        width: float | None = None,
        format: str = "png",
        volume: int = 0,
    ) -> Plan[SliceImage]:
        """``GET /jobs/{id}/slices/{z}``: one slice of a succeeded job's volume, decoding only its
        slab on the server. ``format="png"`` renders it with ``window`` (``auto``, ``lung``,
        ``soft_tissue``, ``bone``, ``brain``) or ``center``/``width``; ``format="npy"`` gives the
        stored values (``.array()`` loads them with numpy). Negative ``z`` counts from the end."""
        params: dict[str, str] = {"format": format}
        for name, value in (("window", window), ("center", center), ("width", width)):
            if value is not None:
                params[name] = str(value)
        if volume:
            params["volume"] = str(volume)
        response = yield from self.plan_send("GET", f"/jobs/{_base.job_id(job)}/slices/{int(z)}", params=params)
        _base.raise_for_response(response)
        return _slice_image(_base.job_id(job), response, z=int(response.headers.get("x-slice-index", z)))

    def plan_slice_range(self, job: Job | str, start: int, stop: int, *, volume: int = 0) -> Plan[SliceImage]:
        """``GET /jobs/{id}/slices?start=&stop=``: slices [start, stop) as ``.npy`` (x, y, n)."""
        params = {"start": str(int(start)), "stop": str(int(stop))}
        if volume:
            params["volume"] = str(volume)
        response = yield from self.plan_send("GET", f"/jobs/{_base.job_id(job)}/slices", params=params)
        _base.raise_for_response(response)
        return _slice_image(_base.job_id(job), response, start=int(start), stop=int(stop))

    # -- batches ----------------------------------------------------------------------------

    def plan_run_one(
        self,
        kind: str,
        source: Path,
        output: Path,
        params: dict[str, Any],
        *,
        verify: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        stopped: Callable[[], bool] | None = None,
    ) -> Plan[BatchResult]:
        """One file of a batch: upload, wait, download, verify. A failure is a result, not an
        exception; ``stopped()`` true (the batch was abandoned) stops it at its next step and
        cancels its job."""
        start = time.monotonic()
        name = str(source)

        def emit(stage: str, fraction: float | None = None, **extra: Any) -> None:
            if stopped is not None and stopped() and stage != "failed":
                raise BatchStoppedError("batch stopped before this file finished")
            if on_progress is not None:
                on_progress(ProgressEvent(source=name, stage=stage, fraction=fraction, **extra))  # type: ignore[arg-type]

        def on_job(current: Job) -> None:
            emit(current.state.value if not current.state.terminal else "running", current.progress, job=current)

        job: Job | None = None
        size_in = 0
        try:
            size_in = source.stat().st_size
            emit("upload", 0.0, done=0, total=size_in)
            on_upload = lambda sent, total: emit("upload", sent / total if total else 1.0, done=sent, total=total)  # noqa: E731
            if kind == "compress":
                job = yield from self.plan_compress(source, profile=params.get("profile"), on_upload=on_upload)
            else:
                job = yield from self.plan_decompress(source, format=params.get("format"), on_upload=on_upload)
            on_job(job)
            job = yield from self.plan_wait(job, timeout=timeout, on_update=on_job)
            emit("download", 0.0, done=0)
            path, size_out, sha = yield from self.plan_fetch(
                job, output, lambda got, total: emit("download", got / total if total else None, done=got, total=total)
            )
            emit("verify", None, job=job)
            check = verify_compressed if kind == "compress" else verify_decompressed
            try:
                how = yield Blocking(check, job, path, sha256=sha, source=source, mode=verify)
            except Exception:
                discard(path)
                raise
            emit("done", 1.0, job=job)
            return BatchResult(source=source, output=path, ok=True, job=job, input_bytes=size_in,
                               output_bytes=size_out, output_sha256=sha, verified=how,
                               seconds=time.monotonic() - start)
        except Exception as exc:  # one file's failure is a result, not the end of the batch
            if isinstance(exc, BatchStoppedError) and job is not None and not job.state.terminal:
                try:  # do not leave work running on the server for a batch nobody waits for
                    yield from self.plan_cancel(job)
                except Exception:
                    pass
            message = describe_failure(exc)
            emit("failed", None, job=job, message=message)
            return BatchResult(source=source, output=None, ok=False, job=job, error=message, input_bytes=size_in,
                               seconds=time.monotonic() - start)

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
    ) -> Any:
        """Compress many files, ``concurrency`` at a time, yielding each ``BatchResult`` as it
        finishes (an iterator; an async iterator on ``AsyncClient``).

        Files are streamed from disk; while one file uploads another's result downloads. Each
        result is verified (see ``nvc.sdk.verify``) before it counts as ok. Outputs go to
        ``output_for(path)`` if given, else ``dest_dir/<input name>.nvc``, else next to the input
        (naming rule: ``codec.naming``).
        ``timeout`` bounds the wait for each job.
        """
        plan = plan_compress(paths, dest_dir=dest_dir, output_for=output_for)
        return self._many(plan, "compress", {"profile": profile}, concurrency=concurrency, verify=verify,
                          timeout=timeout, on_progress=on_progress)

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
    ) -> Any:
        """Decompress many ``.nvc`` files; like ``compress_many`` (outputs named ``<name>.<format>``)."""
        _base.decompress_params(format)
        plan = plan_decompress(paths, dest_dir=dest_dir, output_for=output_for, fmt=format)
        return self._many(plan, "decompress", {"format": format}, concurrency=concurrency, verify=verify,
                          timeout=timeout, on_progress=on_progress)
