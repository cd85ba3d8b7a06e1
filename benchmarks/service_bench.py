"""Service benchmarks: overhead on tiny jobs and concurrent ~10 MB uploads, over real HTTP.

    python benchmarks/service_bench.py                      # both scenarios, on a stack it starts
    python benchmarks/service_bench.py --scenario overhead --jobs 40
    python benchmarks/service_bench.py --url http://127.0.0.1:8000   # against a running service

Without --url it starts what `nvc serve` would: a private redis-server, one Celery worker
process and uvicorn, in a temporary folder, and stops them at the end.

overhead:   N sequential compress jobs of a tiny volume (16x16x8 uint16). For each,
            end-to-end = submit (POST) until the long-poll GET reports `succeeded`;
            service overhead = end-to-end - codec_seconds (encode), and also minus the
            verification decode (verify_seconds), both reported. Target: median <= 200 ms.
concurrent: K concurrent uploads of distinct ~10 MB volumes (512x512x20 uint16 slabs of the
            real volumes in ../shared/data, synthetic if absent) as .npy; every result is
            downloaded and decoded locally with `codec.decode`, and must equal the upload
            bit for bit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Stack:
    """redis-server + Celery worker + uvicorn in a temp folder (what `nvc serve` runs)."""

    def __init__(self, workers: int = 1):
        self.tmp = tempfile.TemporaryDirectory(prefix="nvc-bench-")
        self.procs: list[subprocess.Popen] = []
        self.workers = workers

    def __enter__(self) -> str:
        sys.path.insert(0, str(REPO))
        from nvc.commands.serve import free_port, spawn, start_redis, stop, worker_command

        self._stop = stop
        folder = Path(self.tmp.name)
        redis_proc, redis_url = start_redis(folder / "redis", persist=False)
        self.procs.append(redis_proc)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
        env.update(NVC_REDIS_URL=redis_url, NVC_DATA_DIR=str(folder), NVC_ORPHAN_SWEEP_SECONDS="0",
                   CUDA_VISIBLE_DEVICES=env.get("CUDA_VISIBLE_DEVICES", ""))
        log = open(folder / "stack.log", "ab")
        for i in range(self.workers):
            self.procs.append(spawn(worker_command(f"bench{i}@%h", ["nvc.gpu", "nvc.cpu"], "warning"), env=env,
                                    stdout=log, stderr=subprocess.STDOUT))
        port = free_port()
        self.procs.append(spawn(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the stack did not become ready: " + (folder / "stack.log").read_text())
            time.sleep(0.1)
        return url

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            self._stop(proc, grace=10)
        self.tmp.cleanup()


def wait_done(client: httpx.Client, job_id: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        if job["state"] not in ("queued", "running"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(job_id)


def bench_overhead(url: str, jobs: int, warmup: int = 3) -> dict:
    volume = (np.arange(16 * 16 * 8, dtype=np.uint16) * 37 % 1000).reshape(16, 16, 8)
    payload = npy_bytes(volume)
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(warmup + jobs):
            start = time.perf_counter()
            answer = client.post("/compress", files={"file": ("tiny.npy", payload)})
            answer.raise_for_status()
            job = wait_done(client, answer.json()["id"])
            total = time.perf_counter() - start
            if job["state"] != "succeeded":
                raise RuntimeError(f"job failed: {job}")
            if i >= warmup:
                rows.append((total, job["codec_seconds"], job["verify_seconds"] or 0.0))
    e2e = [r[0] for r in rows]
    minus_codec = [r[0] - r[1] for r in rows]
    minus_both = [r[0] - r[1] - r[2] for r in rows]
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "jobs": jobs,
        "volume": "16x16x8 uint16 (.npy, %d bytes)" % len(payload),
        "end_to_end_ms": {"median": ms(statistics.median(e2e)), "p90": ms(percentile(e2e, 90))},
        "codec_ms_median": ms(statistics.median(r[1] for r in rows)),
        "verify_ms_median": ms(statistics.median(r[2] for r in rows)),
        "overhead_minus_codec_ms": {"median": ms(statistics.median(minus_codec)),
                                    "p90": ms(percentile(minus_codec, 90))},
        "overhead_minus_codec_and_verify_ms": {"median": ms(statistics.median(minus_both)),
                                               "p90": ms(percentile(minus_both, 90))},
    }


def ten_mb_volumes(count: int) -> list[tuple[str, np.ndarray]]:
    """Distinct 512x512x20 uint16/int16 slabs of the real volumes (synthetic when absent)."""
    volumes: list[tuple[str, np.ndarray]] = []
    try:
        import nibabel as nib

        for path in sorted(DATA.glob("*.nii.gz")):
            if len(volumes) >= count:
                break
            image = nib.load(path)
            if tuple(image.shape[:2]) != (512, 512):
                continue
            array = np.asarray(image.dataobj)
            for z0 in range(0, array.shape[2] - 19, 20):
                volumes.append((f"{path.name.split('.')[0]}_z{z0}", np.ascontiguousarray(array[:, :, z0:z0 + 20])))
                if len(volumes) >= count:
                    break
    except Exception:
        volumes = []
    rng = np.random.default_rng(0)
    while len(volumes) < count:
        x, y = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
        base = 1000 + 300 * np.sin(x / (20 + len(volumes))) * np.cos(y / 30)
        stack = np.stack([base + 5 * z for z in range(20)], axis=2) + rng.integers(0, 16, (512, 512, 20))
        volumes.append((f"synthetic{len(volumes)}", stack.astype(np.uint16)))
    return volumes[:count]


def bench_concurrent(url: str, count: int) -> dict:
    import codec

    volumes = ten_mb_volumes(count)
    payloads = [npy_bytes(v) for _, v in volumes]
    results: list[dict] = [None] * count  # type: ignore[list-item]
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        name, _ = volumes[i]
        with httpx.Client(base_url=url, timeout=600) as client:
            barrier.wait()
            start = time.perf_counter()
            answer = client.post("/compress", files={"file": (f"{name}.npy", payloads[i])})
            answer.raise_for_status()
            uploaded = time.perf_counter() - start
            job = wait_done(client, answer.json()["id"])
            done = time.perf_counter() - start
            data = client.get(f"/jobs/{job['id']}/result").content if job["state"] == "succeeded" else b""
            results[i] = {"name": name, "job": job, "upload_s": uploaded, "done_s": done, "data": data,
                          "t_end": time.perf_counter()}

    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(run, range(count)))
    wall = max(r["t_end"] for r in results) - start
    verified = 0
    failures = []
    for (name, array), row in zip(volumes, results):
        job = row["job"]
        if job["state"] == "succeeded" and np.array_equal(codec.decode(row["data"]), array):
            verified += 1
        else:
            failures.append(f"{name}: {job['state']} {job.get('error')}")
    raw = sum(len(p) for p in payloads)
    coded = sum(r["job"].get("output_size") or 0 for r in results)
    return {
        "uploads": count,
        "upload_mb_each": round(len(payloads[0]) / 1e6, 2),
        "all_uploaded_within_s": round(max(r["upload_s"] for r in results), 2),
        "wall_s": round(wall, 1),
        "throughput_mb_s": round(raw / 1e6 / wall, 3),
        "job_latency_s": {"min": round(min(r["done_s"] for r in results), 1),
                          "median": round(statistics.median(r["done_s"] for r in results), 1),
                          "max": round(max(r["done_s"] for r in results), 1)},
        "codec_s_median": round(statistics.median(r["job"]["codec_seconds"] for r in results), 2),
        "verify_s_median": round(statistics.median(r["job"]["verify_seconds"] for r in results), 2),
        "bits_per_voxel_median": round(statistics.median(r["job"]["bits_per_voxel"] for r in results), 3),
        "compression_ratio": round(raw / coded, 3) if coded else None,
        "verified_bit_exact": verified,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--scenario", choices=["overhead", "concurrent", "all"], default="all")
    parser.add_argument("--jobs", type=int, default=30, help="tiny jobs for the overhead scenario")
    parser.add_argument("--uploads", type=int, default=20, help="concurrent ~10 MB uploads")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the started stack")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
              "workers": args.workers if not args.url else "external"}

    def run(url: str) -> None:
        if args.scenario in ("overhead", "all"):
            report["overhead"] = bench_overhead(url, args.jobs)
            print(json.dumps({"overhead": report["overhead"]}, indent=2), flush=True)
        if args.scenario in ("concurrent", "all"):
            report["concurrent"] = bench_concurrent(url, args.uploads)
            print(json.dumps({"concurrent": report["concurrent"]}, indent=2), flush=True)

    if args.url:
        run(args.url)
    else:
        with Stack(args.workers) as url:
            run(url)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = report.get("concurrent", {}).get("failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
