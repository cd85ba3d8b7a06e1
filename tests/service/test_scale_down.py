"""A scale-down as Kubernetes does it: SIGTERM to `nvc worker` (the container's PID 1) while it
runs a job, with jobs still queued and a second worker alive. The stopping worker takes no new
job; it finishes the running one within its shutdown grace, or, when the grace is shorter than
the job, hands the job back to the queue and the other worker runs it. Every job ends exactly
once: succeeded, with one verified result object."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import npy_bytes, wait_until
from test_faults import assert_one_verified_result, result_name, result_objects, structured_volume, wait_done


def scale_settings(service_settings):
    # The watchdog must not be what saves a handed-back job: its heartbeat timeout is far longer
    # than the test, so a job comes back only through the stopping worker's own hand-back.
    return service_settings.model_copy(update={"heartbeat_timeout_seconds": 900.0, "watchdog_seconds": 1.0})


def start_cli_worker(stack, name: str, grace: float):
    """`nvc worker` as the worker pods run it (its supervisor, one CPU process)."""
    queues = ",".join([stack.settings.gpu_queue, stack.settings.cpu_queue])
    return stack._spawn([sys.executable, "-m", "nvc.cli", "worker", "--cpu", "--processes", "1", "--queues", queues,
                         "--shutdown-grace", str(grace), "--name", f"{name}@test"], f"worker-{name}")


def submit(client: httpx.Client, volumes: list[np.ndarray]) -> list[dict]:
    jobs = []
    for n, volume in enumerate(volumes):
        answer = client.post("/compress", content=npy_bytes(volume), params={"filename": f"v{n}.npy"})
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json())
    return jobs


def running_on(client: httpx.Client, jobs: list[dict], worker: str) -> dict | None:
    for job in jobs:
        state = client.get(f"/jobs/{job['id']}").json()
        if state["state"] == "running" and state.get("worker") == worker:
            return state
    return None


def check_every_job_once(client, settings, jobs, volumes) -> list[dict]:
    done = [wait_done(client, job["id"], 400) for job in jobs]
    for job, volume in zip(done, volumes):
        assert job["state"] == "succeeded", job
        assert_one_verified_result(client, job, volume)
        assert result_objects(settings, job["id"]) == [result_name(job)], job  # one result, nothing left over
    return done


def both_workers_ready(stack, names) -> bool:
    return all("ready" in stack.log(f"worker-{name}") for name in names)


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_sigterm_mid_job_finishes_it_and_takes_no_new_job(service_settings, make_stack):
    settings = scale_settings(service_settings)
    stack = make_stack(settings)
    url = stack.start_api()
    leaving = start_cli_worker(stack, "leaving", grace=300)
    staying_proc = None
    volumes = [structured_volume((128, 128, 48), seed=s) for s in range(4)]
    with httpx.Client(base_url=url, timeout=60) as client:
        wait_until(lambda: both_workers_ready(stack, ["leaving"]), 180, interval=0.2, what="the first worker")
        jobs = submit(client, volumes)
        job = wait_until(lambda: running_on(client, jobs, "leaving@test"), 180, interval=0.05,
                         what="a job running on the leaving worker")
        staying_proc = start_cli_worker(stack, "staying", grace=300)
        os.kill(leaving.pid, signal.SIGTERM)  # what the kubelet sends to the container's PID 1
        assert leaving.wait(300) == 0, stack.log("worker-leaving")[-4000:]
        done = check_every_job_once(client, settings, jobs, volumes)
    finished = next(j for j in done if j["id"] == job["id"])
    assert finished["worker"] == "leaving@test" and finished["attempts"] == 1, finished  # finished, not handed back
    others = [j for j in done if j["id"] != job["id"]]
    assert all(j["worker"] == "staying@test" and j["attempts"] == 1 for j in others), others  # no new job taken
    assert staying_proc.poll() is None


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_sigterm_with_a_grace_shorter_than_the_job_hands_it_back(service_settings, make_stack):
    settings = scale_settings(service_settings)
    stack = make_stack(settings)
    url = stack.start_api()
    leaving = start_cli_worker(stack, "leaving", grace=0.5)
    volumes = [structured_volume((160, 160, 96), seed=11)] + [structured_volume((64, 64, 24), seed=s) for s in range(3)]
    with httpx.Client(base_url=url, timeout=60) as client:
        wait_until(lambda: both_workers_ready(stack, ["leaving"]), 180, interval=0.2, what="the first worker")
        jobs = submit(client, volumes)
        wait_until(lambda: running_on(client, jobs[:1], "leaving@test"), 180, interval=0.05,
                   what="the long job running on the leaving worker")
        wait_until(lambda: client.get(f"/jobs/{jobs[0]['id']}").json()["progress"] > 0, 120, interval=0.05,
                   what="the long job to make progress")
        staying = start_cli_worker(stack, "staying", grace=300)
        os.kill(leaving.pid, signal.SIGTERM)
        assert leaving.wait(120) == 0, stack.log("worker-leaving")[-4000:]
        assert "handing its job back" in stack.log("worker-leaving")
        done = check_every_job_once(client, settings, jobs, volumes)
    long_job = done[0]
    assert long_job["worker"] == "staying@test" and long_job["attempts"] == 2, long_job
    assert all(j["worker"] == "staying@test" and j["attempts"] == 1 for j in done[1:]), done[1:]
    assert staying.poll() is None
