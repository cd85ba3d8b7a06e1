"""The multi-node shape on one machine: two API processes and three worker processes on separate
queues, sharing one Redis and one S3-compatible store (moto's server), under a load of many
small jobs. Every result is downloaded (through the presigned S3 redirect) and decoded; it must
equal its input bit for bit.

    python benchmarks/scale_bench.py                 # 200 jobs, 16 in flight
    python benchmarks/scale_bench.py --jobs 50 --concurrency 8 --json out.json

Shape (all CPU processes here; on a cluster each is a pod):
    api-a  submits to queue Q.gpu (the default submit queue)
    api-b  submits to queue Q.cpu (NVC_SUBMIT_QUEUE)
    w-gpu  consumes Q.gpu        w-cpu  consumes Q.cpu        w-both  consumes both
Jobs are submitted round-robin to the two APIs and polled (long-poll) through the other one,
so every job crosses processes. Reported: throughput (jobs / wall time from the first submit to
the last job seen finished), end-to-end latency per job (submit until the long-poll reports
`succeeded`) p50/p95/max, and where the jobs ran. Rate limits are off (NVC_RATE_LIMIT_PER_MINUTE=0)
so the figures measure the service, not the limiter.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def small_volume(seed: int, shape: tuple[int, int, int] = (24, 20, 8)) -> np.ndarray:
    """A distinct small structured uint16 volume per job (codes in tens of milliseconds)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    volume = 400 + 30 * np.sin(x / 3.0 + seed) + 20 * np.cos(y / 4.0) + 5 * z + rng.integers(0, 8, x.shape)
    return volume.astype(np.uint16)


def _wait_ready(url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready; see {log}")
        time.sleep(0.2)


class Cluster:
    """Redis + moto S3 + 2 APIs + 3 workers as local processes (stopped on exit)."""

    def __init__(self, redis_url: str | None = None, s3_url: str | None = None, folder: Path | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="nvc-scale-") if folder is None else None
        self.folder = Path(self._tmp.name) if folder is None else folder
        self.redis_url, self.s3_url = redis_url, s3_url
        self.procs: list[subprocess.Popen] = []
        tag = uuid.uuid4().hex[:8]
        self.gpu_queue, self.cpu_queue = f"scale-{tag}.gpu", f"scale-{tag}.cpu"
        self.prefix = f"scale-{tag}:"
        self.bucket = f"nvc-scale-{tag}"
        self.urls: list[str] = []
        self.workers = {"w-gpu": [self.gpu_queue], "w-cpu": [self.cpu_queue], "w-both": [self.gpu_queue, self.cpu_queue]}

    def log_path(self) -> Path:
        return self.folder / "cluster.log"

    def __enter__(self) -> Cluster:
        from nvc.commands.serve import free_port, spawn, start_redis, stop, worker_command

        self._stop = stop
        log = open(self.log_path(), "ab")
        try:
            if self.redis_url is None:
                proc, url = start_redis(self.folder / "redis", persist=False)
                self.procs.append(proc)
                self.redis_url = url.rsplit("/", 1)[0]
            if self.s3_url is None:
                port = free_port()
                self.procs.append(spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                        stdout=log, stderr=subprocess.STDOUT))
                self.s3_url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
            env.update(
                NVC_REDIS_URL=f"{self.redis_url}/2", NVC_KEY_PREFIX=self.prefix, NVC_DATA_DIR=str(self.folder),
                NVC_STORAGE_BACKEND="s3", NVC_S3_ENDPOINT_URL=self.s3_url, NVC_S3_BUCKET=self.bucket,
                NVC_S3_ACCESS_KEY="testing", NVC_S3_SECRET_KEY="testing", NVC_GPU_QUEUE=self.gpu_queue,
                NVC_CPU_QUEUE=self.cpu_queue, NVC_ORPHAN_SWEEP_SECONDS="0", NVC_RATE_LIMIT_PER_MINUTE="0",
                NVC_MAX_ACTIVE_JOBS="0", NVC_WORK_DIR=str(self.folder / "scratch"), CUDA_VISIBLE_DEVICES="",
                NVC_DEVICE="cpu", PYTHONUNBUFFERED="1",
            )
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
            for name, queues in self.workers.items():
                self.procs.append(spawn(worker_command(f"{name}@%h", queues, "info"), env=env, stdout=log,
                                        stderr=subprocess.STDOUT))
            for submit_queue in (self.gpu_queue, self.cpu_queue):
                port = free_port()
                self.procs.append(spawn(
                    [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                     "--port", str(port), "--log-level", "warning"],
                    env={**env, "NVC_SUBMIT_QUEUE": submit_queue}, stdout=log, stderr=subprocess.STDOUT))
                self.urls.append(f"http://127.0.0.1:{port}")
            for url in self.urls:
                _wait_ready(url, self.log_path(), 120)
            self._wait_workers(env, 180)
        except BaseException:
            self.__exit__()
            raise
        finally:
            log.close()
        return self

    def _wait_workers(self, env: dict[str, str], timeout: float) -> None:
        """Until each worker has logged that it is ready (codec warmed up)."""
        deadline = time.monotonic() + timeout
        while self.log_path().read_text(errors="replace").count(" ready.") < len(self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready; see {self.log_path()}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            self._stop(proc, grace=10)
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


def run_load(cluster: Cluster, jobs: int, concurrency: int) -> dict:
    """Push `jobs` small compress jobs through the cluster; check every result; measure."""
    import codec

    volumes = [small_volume(seed) for seed in range(jobs)]
    rows: list[dict] = [None] * jobs  # type: ignore[list-item]
    clients = [httpx.Client(base_url=url, timeout=120, follow_redirects=True) for url in cluster.urls]
    lock = threading.Lock()
    started: list[float] = []

    def one(i: int) -> None:
        submit_via, poll_via = clients[i % 2], clients[(i + 1) % 2]
        t0 = time.perf_counter()
        with lock:
            started.append(t0)
        answer = submit_via.post("/compress", content=npy_bytes(volumes[i]), params={"filename": f"j{i}.npy"})
        answer.raise_for_status()
        job_id = answer.json()["id"]
        while True:
            job = poll_via.get(f"/jobs/{job_id}", params={"wait": 30}).json()
            if job["state"] not in ("queued", "running"):
                break
        t_done = time.perf_counter()
        data = submit_via.get(f"/jobs/{job_id}/result").content if job["state"] == "succeeded" else b""
        rows[i] = {"job": job, "latency": t_done - t0, "t_done": t_done, "data": data, "api": i % 2}

    t_start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(one, i) for i in range(jobs)]:
            future.result()
    wall = max(r["t_done"] for r in rows) - t_start
    for client in clients:
        client.close()

    import redis

    records = redis.Redis.from_url(f"{cluster.redis_url}/2", decode_responses=True)
    for row in rows:  # the queue a job went to is on its record, not in the API's view of it
        row["job"]["queue"] = records.hget(f"{cluster.prefix}job:{row['job']['id']}", "queue")
    records.close()
    failures = []
    for i, (row, volume) in enumerate(zip(rows, volumes)):
        job = row["job"]
        if job["state"] != "succeeded":
            failures.append(f"job {i}: {job['state']} {job.get('error')}")
            continue
        if not np.array_equal(codec.decode(row["data"]), volume):
            failures.append(f"job {i}: result does not decode to its input")
        expected_queue = cluster.gpu_queue if row["api"] == 0 else cluster.cpu_queue
        worker = job["worker"].split("@")[0]
        if job["queue"] != expected_queue or expected_queue not in cluster.workers[worker]:
            failures.append(f"job {i}: queue {job['queue']} ran on {worker}")
    latencies = [r["latency"] for r in rows]
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "volume": "24x20x8 uint16 .npy (distinct per job)",
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 2),
        "latency_s": {"p50": round(statistics.median(latencies), 3), "p95": round(percentile(latencies, 95), 3),
                      "max": round(max(latencies), 3)},
        "codec_s_median": round(statistics.median(r["job"].get("codec_seconds") or 0 for r in rows), 4),
        "by_worker": dict(Counter(r["job"].get("worker", "?").split("@")[0] for r in rows)),
        "by_queue": dict(Counter(r["job"].get("queue", "?") for r in rows)),
        "attempts_over_1": sum(1 for r in rows if (r["job"].get("attempts") or 0) > 1),
        "verified": jobs - len(failures),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with Cluster() as cluster:
        result = run_load(cluster, args.jobs, args.concurrency)
    result["load_average_at_start"] = round(load, 2)
    result["cpus"] = os.cpu_count()
    print(f"{result['jobs']} jobs, {result['concurrency']} in flight, 2 APIs + 3 workers (CPU), "
          f"{result['cpus']} CPUs, load {result['load_average_at_start']} at start")
    print("| jobs/s | wall s | p50 s | p95 s | max s | codec s (median) | verified | by worker |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {result['jobs_per_s']} | {result['wall_s']} | {result['latency_s']['p50']} | "
          f"{result['latency_s']['p95']} | {result['latency_s']['max']} | {result['codec_s_median']} | "
          f"{result['verified']}/{result['jobs']} | {result['by_worker']} |")
    for failure in result["failures"]:
        print("FAILED:", failure)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
