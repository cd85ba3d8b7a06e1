"""`nvc serve` as a new user runs it: no configuration, a free port, a temp data folder; a
round trip over HTTP; Ctrl-C stops everything it started; the job records survive a restart;
a killed `nvc serve` leaves no processes behind either."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO, free_port, npy_bytes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("require_codec")]


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_serve(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVC_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nvc.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 60, what="nvc serve")
    except TimeoutError:
        proc.kill()
        raise AssertionError(log.read_text())
    return proc, url


@pytest.mark.skipif(sys.platform != "linux", reason="process checks read /proc")
def test_nvc_serve_round_trip_restart_and_clean_exit(tmp_path, small_volume):
    data_dir = tmp_path / "var"
    log = tmp_path / "serve.log"
    proc, url = start_serve(data_dir, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            job = client.post("/compress", files={"file": ("s.npy", npy_bytes(small_volume))}).json()
            done = client.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
            assert done["state"] == "succeeded", done
            coded = client.get(f"/jobs/{job['id']}/result").content
            back = client.post("/decompress?format=npy", content=coded).json()
            back = client.get(f"/jobs/{back['id']}", params={"wait": 60}).json()
            assert back["state"] == "succeeded", back
            restored = np.load(io.BytesIO(client.get(f"/jobs/{back['id']}/result").content))
            assert np.array_equal(restored, small_volume)
        family = descendants(proc.pid)
        assert len(family) >= 3  # redis-server, celery worker, its pool process
        assert (data_dir / "objects" / "jobs" / job["id"] / "output.nvc").is_file()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(60)
    assert code == 0, log.read_text()
    assert "OPEN: no API keys are configured" in log.read_text()  # says so when it runs open on 127.0.0.1
    # no Celery banner and no root warning in the one-command stack's output
    assert "-------------- " not in log.read_text() and "[queues]" not in log.read_text()
    assert "SecurityWarning" not in log.read_text() and "superuser privileges" not in log.read_text()
    wait_until(lambda: not any(alive(p) for p in family), 10, what="children to exit")

    # same data folder: the embedded Redis kept the job records
    proc, url = start_serve(data_dir, log)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            again = client.get(f"/jobs/{job['id']}").json()
            assert again["state"] == "succeeded" and again["output_sha256"] == done["output_sha256"]
            assert client.get(f"/jobs/{job['id']}/result").content == coded
        family = descendants(proc.pid)
    finally:
        proc.kill()  # no chance to clean up: children must still go (parent-death signal)
        proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in family), 30, what="orphans to exit")


def test_supervisor_restarts_a_dead_worker_then_gives_up_and_stops_cleanly():
    from nvc.commands.serve import Supervisor

    env = dict(os.environ)
    crashing = Supervisor([([sys.executable, "-c", "import sys; sys.exit(3)"], env)])
    crashing.start()
    try:
        wait_until(lambda: all(p is None for p in crashing.procs), 20, what="supervisor to give up")
        assert len(crashing.restarts[0]) == 5  # restarted 5 times within a minute, then left alone
    finally:
        crashing.stop(grace=1)

    steady = Supervisor([([sys.executable, "-c", "import time; time.sleep(60)"], env)])
    steady.start()
    pid = steady.pids()[0]
    assert steady.alive()
    steady.stop(grace=2)
    assert not steady.alive() and not alive(pid)
