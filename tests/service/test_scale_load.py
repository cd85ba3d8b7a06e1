"""The multi-node shape on one machine under load (benchmarks/scale_bench.py, smaller): two API
processes and three workers on separate queues, one Redis, one S3-compatible store (moto).
Every job submitted through one API and polled through the other succeeds exactly once, runs on
a worker of its queue, and its result, fetched through the presigned S3 redirect, decodes to
its input."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scale_bench  # noqa: E402


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_forty_jobs_through_two_apis_and_three_workers(redis_server, s3_server, tmp_path):
    with scale_bench.Cluster(redis_url=redis_server, s3_url=s3_server, folder=tmp_path) as cluster:
        result = scale_bench.run_load(cluster, jobs=40, concurrency=8)
    print(result)
    assert result["failures"] == [] and result["verified"] == 40
    assert result["by_queue"] == {cluster.gpu_queue: 20, cluster.cpu_queue: 20}
    assert set(result["by_worker"]) <= set(cluster.workers) and sum(result["by_worker"].values()) == 40
    assert result["attempts_over_1"] == 0
