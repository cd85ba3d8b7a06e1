"""Faults against real processes (uvicorn, Celery workers, redis-server, the moto S3 server):
a worker killed or frozen mid-job, Redis restarted with and without persistence, object
storage unreachable, a result object deleted behind the service's back, a job over its time
limit. What must hold: every job ends (never stuck `running`), with exactly one verified
result or a failure that says why; the API answers problems (503/404), not 500s.

The in-process tests at the top exercise the same mechanisms (watchdog, attempt guards,
storage retries) without processes, so a regression points at the right place quickly.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import httpx
import numpy as np
import pytest

from conftest import npy_bytes, redis_binary, stop_process, wait_until

PROBLEM = "application/problem+json"


def structured_volume(shape, seed: int = 7) -> np.ndarray:
    """A CT-like smooth volume with noise: codes in a few seconds at 128x128x64 on a CPU."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    volume = 400 + 30 * np.sin(x / 3.0) + 20 * np.cos(y / 4.0) + 5 * z + rng.integers(0, 8, x.shape)
    return volume.astype(np.uint16)


def wait_done(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/jobs/{job_id}", params={"wait": 5})
        if answer.status_code == 200:
            job = answer.json()
            if job["state"] not in ("queued", "running"):
                return job
        assert time.monotonic() < deadline, f"job {job_id} not finished after {timeout} s: {answer.text}"
        if answer.status_code != 200:
            time.sleep(0.2)


def wait_state(client: httpx.Client, job_id: str, state: str, timeout: float = 120) -> dict:
    def check():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] == state else None

    return wait_until(check, timeout, interval=0.05, what=f"job {job_id} {state}")


def result_objects(settings, job_id: str) -> list[str]:
    folder = settings.resolved_storage_dir / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def result_name(job: dict) -> str:
    """The one object a succeeded job keeps: a re-run stores under its own attempt's name."""
    return "output.nvc" if job["attempts"] == 1 else f"output.a{job['attempts']}.nvc"


def assert_one_verified_result(client: httpx.Client, job: dict, volume: np.ndarray) -> bytes:
    import codec

    assert job["state"] == "succeeded", job
    data = client.get(f"/jobs/{job['id']}/result", params={"redirect": "false"}).content
    assert hashlib.sha256(data).hexdigest() == job["output_sha256"] and len(data) == job["output_size"]
    assert np.array_equal(codec.decode(data), volume)
    assert job["voxel_sha256"] == codec.info(data)["sha256"]
    return data


# ============================================================================= in-process


@pytest.fixture
def services(service_settings):
    """The API's service handles against the test Redis, for driving app/watchdog.py directly."""
    import asyncio

    import redis.asyncio as aioredis

    from app.deps import Services
    from service.jobs import AsyncJobStore
    from service.storage import make_storage
    from service.queue import make_celery

    settings = service_settings.model_copy(update={"heartbeat_timeout_seconds": 10, "max_attempts": 3,
                                                   "task_time_limit_seconds": 100})
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    svc = Services(settings=settings, redis=client, jobs=AsyncJobStore(client, settings.key_prefix, 3600),
                   storage=make_storage(settings), celery=make_celery(settings))
    svc.run = loop.run_until_complete
    yield svc
    loop.run_until_complete(client.aclose())
    loop.close()


def running_job(svc, store, *, age: float, silent: float, attempts: int = 1, kind: str = "compress") -> str:
    from service.jobs import new_record

    job_id = uuid.uuid4().hex
    now = time.time()
    store.create(new_record(job_id, kind, "anonymous", 3600, queue=svc.settings.gpu_queue))
    store.transition(job_id, "running", ["queued"], started_at=now - age, heartbeat_at=now - silent,
                     attempts=attempts, attempt_id="a" * 32, worker="gone@host")
    return job_id


def test_watchdog_requeues_silent_jobs_and_fails_hopeless_ones(services, service_settings):
    import json

    import redis

    from service.jobs import JobStore
    from app.watchdog import check_running

    sync = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    store = JobStore(sync, service_settings.key_prefix, 3600)
    alive = running_job(services, store, age=30, silent=1)
    lost = running_job(services, store, age=30, silent=60)
    hopeless = running_job(services, store, age=30, silent=60, attempts=3)
    overdue = running_job(services, store, age=10_000, silent=1)
    outcome = services.run(check_running(services))
    assert sorted(outcome["requeued"]) == [lost] and sorted(outcome["failed"]) == sorted([hopeless, overdue])
    assert store.get(alive)["state"] == "running"
    assert store.get(lost)["state"] == "queued"
    messages = [json.loads(m) for m in sync.lrange(service_settings.gpu_queue, 0, -1)]
    assert [(m["headers"]["task"], m["headers"]["id"]) for m in messages] == [("nvc.compress", lost)]
    assert "stopped responding" in store.get(hopeless)["error"] and "3 attempts" in store.get(hopeless)["error"]
    assert "time limit of 100 s" in store.get(overdue)["error"]
    # the running index only holds running jobs now; a second pass changes nothing
    assert set(sync.zrange(store.keys.running, 0, -1)) == {alive}
    assert services.run(check_running(services)) == {"requeued": [], "failed": []}
    # an attempt that comes back after being presumed dead is told so and cannot finish the job
    assert store.set_progress(lost, 0.5, "a" * 32) == "queued"
    done, _ = store.transition(lost, "succeeded", ["running"], guard={"attempt_id": "a" * 32})
    assert not done
    sync.close()


@pytest.mark.usefixtures("require_codec")
def test_attempt_guards_give_exactly_one_result(service_settings, small_volume):
    """A presumed-dead attempt that wakes up after another attempt took over stops, and does not
    delete the other attempt's result; a duplicate delivery of a live job is dropped."""
    from service.jobs import new_record
    from service.storage import job_prefix
    from worker import attempt, lifecycle, runtime, verify

    rt = runtime.configure(service_settings)
    try:
        job_id = uuid.uuid4().hex
        key = f"{job_prefix(job_id)}input"
        writer = rt.storage.open_writer(key)
        writer.write(npy_bytes(small_volume))
        writer.commit()
        rt.store.create(new_record(job_id, "compress", "anonymous", 3600, input_key=key, input_format="npy",
                                   output_format="nvc", profile="default"))
        # attempt 1 on another worker, alive (fresh heartbeat): a second delivery is a duplicate
        rt.store.transition(job_id, "running", ["queued"], started_at=time.time(), heartbeat_at=time.time(),
                            attempts=1, attempt_id="old", worker="other@host")
        assert lifecycle.run_job(job_id, "compress", "me@host") == "duplicate"
        # the broker redelivers (the other worker's process died): this delivery takes over and succeeds
        assert lifecycle.run_job(job_id, "compress", "me@host", redelivered=True) == "succeeded"
        record = rt.store.get(job_id)
        assert record["attempts"] == 2 and record["attempt_id"] != "old"
        # the old attempt wakes up: its progress write is refused (the job is over; run_job then
        # keeps the objects, since the state is `succeeded`), its result write cannot win
        with pytest.raises(attempt.JobCancelled, match="succeeded"):
            attempt.Progress(rt.store, job_id, 0, 1, 0, attempt_id="old").check(0.5)
        done, state = rt.store.transition(job_id, "succeeded", ["running"], guard={"attempt_id": "old"})
        assert not done and state == "succeeded"
        assert result_objects(service_settings, job_id) == ["output.a2.nvc"] == [result_name(record)]
        # a late redelivery of the finished job changes nothing
        assert lifecycle.run_job(job_id, "compress", "me@host", redelivered=True) == "succeeded"
        assert rt.store.get(job_id)["attempts"] == 2
    finally:
        rt.store.r.close()
        runtime.reset()


class FlakyStorage:
    """The real local storage behind a switch: while `down`, every call fails like an unreachable store."""

    def __init__(self, inner):
        self.inner = inner
        self.down_until = 0.0
        self.calls_refused = 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if time.monotonic() < self.down_until:
                self.calls_refused += 1
                raise ConnectionRefusedError(111, "Connection refused (storage down)")
            return attr(*args, **kwargs)

        return call


@pytest.mark.usefixtures("require_codec")
def test_worker_retries_storage_then_fails_cleanly(service_settings, small_volume):
    from service.jobs import new_record
    from service.storage import job_prefix
    from worker import attempt, lifecycle, runtime, verify

    settings = service_settings.model_copy(update={"storage_retry_seconds": 3.0})
    rt = runtime.configure(settings)
    flaky = FlakyStorage(rt.storage)
    rt.storage = flaky
    try:
        def submit() -> str:
            job_id = uuid.uuid4().hex
            key = f"{job_prefix(job_id)}input"
            writer = flaky.inner.open_writer(key)
            writer.write(npy_bytes(small_volume))
            writer.commit()
            rt.store.create(new_record(job_id, "compress", "anonymous", 3600, input_key=key, input_format="npy",
                                       output_format="nvc", profile="default"))
            return job_id

        short = submit()
        flaky.down_until = time.monotonic() + 1.0  # a blip shorter than the retry window
        assert lifecycle.run_job(short, "compress", "w") == "succeeded"
        assert flaky.calls_refused >= 1
        long = submit()
        flaky.down_until = time.monotonic() + 3600  # down for good
        start = time.monotonic()
        assert lifecycle.run_job(long, "compress", "w") == "failed"
        assert 2.5 < time.monotonic() - start < 30
        error = rt.store.get(long)["error"]
        assert error.startswith("object storage was unreachable while reading the upload (retried for 3 s)"), error
    finally:
        rt.store.r.close()
        runtime.reset()


# ============================================================================= real processes


class RedisProcess:
    """A redis-server of the test's own on a fixed port, restartable with its data folder."""

    def __init__(self, folder, port: int):
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persist: bool) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(client.ping, 20, what="redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM: redis fsyncs its append-only file and exits
            self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    from conftest import free_port

    server = RedisProcess(tmp_path / "redis", free_port())
    yield server
    server.stop()


def fault_settings(service_settings, **update):
    base = {"heartbeat_timeout_seconds": 3.0, "watchdog_seconds": 0.5, "storage_retry_seconds": 20.0}
    base.update(update)
    return service_settings.model_copy(update=base)


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_whole_worker_killed_or_frozen_mid_job(service_settings, make_stack):
    """SIGKILL of a worker's whole process group mid-job: the watchdog re-queues the job when its
    heartbeats stop and a restarted worker finishes it. A frozen worker (SIGSTOP) is presumed
    lost the same way; when it wakes up it finds its attempt superseded and leaves the new
    result alone. Each job: exactly one verified result."""
    import redis

    from service.jobs import JobStore

    # heartbeats every 1.3 s, presumed lost after 8 s: a loaded 2-core machine delays a beat by
    # seconds at worst, and a spurious takeover would show as a third attempt
    settings = fault_settings(service_settings, heartbeat_timeout_seconds=8.0)
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.key_prefix, 3600)
    stack = make_stack(settings)
    first = stack.start_worker("first")
    url = stack.start_api()
    volume = structured_volume((128, 128, 64))
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/compress", content=npy_bytes(volume)).json()
        running = wait_state(client, job["id"], "running")
        assert running["worker"].startswith("first@")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, no clean-up
        killed_at = time.monotonic()
        stack.start_worker("second")
        done = wait_done(client, job["id"], 240)
        assert done["attempts"] == 2 and done["worker"].startswith("second@"), done
        assert time.monotonic() - killed_at > settings.heartbeat_timeout_seconds  # recovered by the watchdog
        assert_one_verified_result(client, done, volume)
        assert result_objects(settings, job["id"]) == [result_name(done)]

        second = stack.worker_proc
        job = client.post("/compress", content=npy_bytes(volume)).json()
        wait_state(client, job["id"], "running")
        os.killpg(second.pid, signal.SIGSTOP)  # frozen: alive but silent
        try:
            stack.start_worker("third")
            done = wait_done(client, job["id"], 240)
        finally:
            os.killpg(second.pid, signal.SIGCONT)
        assert done["state"] == "succeeded" and done["worker"].startswith("third@") and done["attempts"] == 2
        # the woken attempt ends on its own, whatever it was doing when frozen (encoding: its
        # next progress report finds the job taken; storing: its success is refused), and says
        # so on the record; its input stayed readable (a hard link), so it never fails for that
        try:
            stale = wait_until(lambda: (lambda r: r if r and r.get("stale_attempts") else None)(store.get(job["id"])),
                               300, interval=0.2, what="the frozen attempt to record that it was superseded")
        except TimeoutError:  # keep the frozen worker's own account for the report
            print("worker-second log (tail):\n", stack.log("worker-second")[-6000:])
            raise
        assert stale["stale_attempts"] == 1 and "attempt 1" in stale["stale_attempt_note"], stale
        assert "failure" not in stale["stale_attempt_note"], stale
        again = client.get(f"/jobs/{job['id']}").json()
        assert again["output_sha256"] == done["output_sha256"] and again["attempts"] == 2
        assert_one_verified_result(client, again, volume)
        assert result_objects(settings, job["id"]) == [result_name(again)]  # the stale attempt removed its own


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_redis_restart_with_and_without_persistence(service_settings, make_stack, own_redis):
    """Redis with an append-only file restarts under a running job and a queued one: both finish,
    once each, and their records keep their history. Restarted without persistence, the lost
    jobs answer 404 with the reason, nothing stays running, and new jobs work at once."""
    own_redis.start(persist=True)
    settings = fault_settings(service_settings, redis_url=own_redis.url)
    stack = make_stack(settings)
    stack.start_worker()
    url = stack.start_api()
    volume = structured_volume((128, 128, 64))
    small = structured_volume((24, 20, 6), seed=3)
    with httpx.Client(base_url=url, timeout=60) as client:
        running = client.post("/compress", content=npy_bytes(volume)).json()
        queued = client.post("/compress", content=npy_bytes(small)).json()
        wait_state(client, running["id"], "running")
        own_redis.stop()
        outage = client.get(f"/jobs/{running['id']}")
        assert outage.status_code == 503 and outage.headers["content-type"] == PROBLEM
        assert "Redis" in outage.json()["detail"] and outage.headers["retry-after"]
        own_redis.start(persist=True)
        done = wait_done(client, running["id"], 240)
        assert done["created_at"] == running["created_at"]
        assert_one_verified_result(client, done, volume)
        other = wait_done(client, queued["id"], 120)
        assert_one_verified_result(client, other, small)
        assert result_objects(settings, running["id"]) == [result_name(done)]

        # now without persistence: the data set is lost with the restart
        lost = client.post("/compress", content=npy_bytes(volume)).json()
        wait_state(client, lost["id"], "running")
        own_redis.stop()
        import shutil

        shutil.rmtree(own_redis.folder)  # the append-only files too: this Redis comes back empty
        own_redis.start(persist=False)
        answer = wait_until(lambda: (lambda a: a if a.status_code == 404 else None)(client.get(f"/jobs/{lost['id']}")),
                            30, what="the API to reconnect")
        assert answer.headers["content-type"] == PROBLEM and "lost its data" in answer.json()["detail"]
        fresh = client.post("/compress", content=npy_bytes(small)).json()
        assert_one_verified_result(client, wait_done(client, fresh["id"], 120), small)
        # the worker found its job gone and dropped what it had written: nothing is left running
        wait_until(lambda: result_objects(settings, lost["id"]) == [], 120, what="the lost job's objects to go")
        assert "no record" in stack.log("worker-test") or "stopped" in stack.log("worker-test")


class TcpProxy:
    """A TCP forwarder in front of a server, that can be cut (`down`: connections refused and open
    ones reset) and restored (`up`) on the same port: an object store becoming unreachable."""

    def __init__(self, target_port: int):
        from conftest import free_port

        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a bare close would not, on Linux)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for conn in self._conns:
                try:  # shutdown wakes the piping threads blocked in recv; close with linger 0 resets
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_object_storage_outage_and_a_deleted_result(s3_settings, make_stack):
    """S3 unreachable: the API answers 503 problems (upload, download, readiness), a worker
    retries and finishes the job when the store comes back, or fails it with the reason when it
    does not. A result object deleted behind the service's back is a 404 that says so."""
    from urllib.parse import urlparse

    from service.storage import S3Storage

    proxy = TcpProxy(urlparse(s3_settings.s3_endpoint_url).port)
    settings = fault_settings(s3_settings, s3_endpoint_url=proxy.url, storage_retry_seconds=8.0)
    direct = S3Storage(s3_settings)  # the store itself, not through the proxy
    stack = make_stack(settings)
    url = stack.start_api()
    small = structured_volume((24, 20, 6), seed=3)
    volume = structured_volume((128, 128, 64))
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            # queued while the store is up; no worker yet
            early = client.post("/compress", content=npy_bytes(small)).json()
            proxy.down()
            start = time.monotonic()
            refused = client.post("/compress", content=npy_bytes(small))
            assert refused.status_code == 503 and refused.headers["content-type"] == PROBLEM
            assert refused.json()["type"] == "urn:nvc:problem:storage-unavailable"
            assert refused.headers["retry-after"] == "5" and time.monotonic() - start < 30
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"].startswith("unreachable")
            assert client.get(f"/jobs/{early['id']}").json()["state"] == "queued"  # Redis still answers

            # a worker starts during the outage: it retries the download until the store is back
            stack.start_worker()
            wait_until(lambda: "storage unreachable while" in stack.log("worker-test"), 120, interval=0.1,
                       what="the worker to meet the outage")
            proxy.up()
            done = wait_done(client, early["id"], 120)
            assert done["attempts"] == 1
            coded = assert_one_verified_result(client, done, small)

            # the store goes away while a job is running and does not come back in time
            job = client.post("/compress", content=npy_bytes(volume)).json()
            wait_state(client, job["id"], "running")
            proxy.down()
            failed = wait_done(client, job["id"], 180)
            assert failed["state"] == "failed", failed
            assert failed["error"].startswith("object storage was unreachable while"), failed["error"]
            assert "(retried for 8 s)" in failed["error"]
            broken = client.get(f"/jobs/{done['id']}/result", params={"redirect": "false"})
            assert broken.status_code == 503 and broken.headers["content-type"] == PROBLEM
            proxy.up()
            wait_until(lambda: client.get("/readyz").status_code == 200, 30, what="readiness")

            # a result object deleted outside the service: 404 with the reason, never a redirect to nothing
            assert client.get(f"/jobs/{done['id']}/result", params={"redirect": "false"}).content == coded
            direct.delete_prefix(f"jobs/{done['id']}/")
            for params in ({"redirect": "false"}, {}):
                gone = client.get(f"/jobs/{done['id']}/result", params=params, follow_redirects=False)
                assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM, gone.text
                body = gone.json()
                assert body["type"] == "urn:nvc:problem:result-missing" and "missing from object storage" in body["detail"]
            assert client.get(f"/jobs/{done['id']}").json()["state"] == "succeeded"  # the record is kept
    finally:
        proxy.down()


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_a_job_over_its_time_limit_fails_with_a_message(service_settings, make_stack):
    settings = fault_settings(service_settings, task_time_limit_seconds=2)
    stack = make_stack(settings)
    stack.start_worker()
    url = stack.start_api()
    volume = structured_volume((160, 160, 96))  # several seconds of coding on any CPU
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/compress", content=npy_bytes(volume)).json()
        failed = wait_done(client, job["id"], 120)
        assert failed["state"] == "failed", failed
        assert failed["error"] == ("the job took longer than the time limit of 2 s (NVC_TASK_TIME_LIMIT_SECONDS) "
                                   "and was stopped")
        assert failed["finished_at"]
        # the stopped job's objects are deleted (by the worker's clean-up, which may trail the record)
        wait_until(lambda: result_objects(settings, job["id"]) == [], 30, what="the stopped job's objects to go")
        # the worker is fine afterwards
        small = structured_volume((24, 20, 6), seed=3)
        assert_one_verified_result(client, wait_done(client, client.post("/compress", content=npy_bytes(small))
                                                     .json()["id"], 60), small)


def test_a_missing_local_result_is_a_404_with_the_reason(service_settings, small_volume):
    from fastapi.testclient import TestClient

    from service.jobs import JobStore
    from app.main import create_app

    import redis

    with TestClient(create_app(service_settings)) as client:
        job = client.post("/compress", content=npy_bytes(small_volume)).json()
        sync = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
        store = JobStore(sync, service_settings.key_prefix, 3600)
        store.transition(job["id"], "running", ["queued"], started_at=time.time())
        store.transition(job["id"], "succeeded", ["running"], finished_at=time.time(), progress=1.0,
                         output_key=f"jobs/{job['id']}/output.nvc", output_size=5)
        sync.close()
        answer = client.get(f"/jobs/{job['id']}/result")
        assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM
        assert answer.json()["type"] == "urn:nvc:problem:result-missing"
        assert f"result of job {job['id']} is missing from object storage" in answer.json()["detail"]
