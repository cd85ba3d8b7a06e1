"""The SDK sends large files straight to the server's S3 store in presigned parts (moto's S3
server here), resumes an upload that stopped, and streams through the API when the server
stores files locally. A job from a direct upload has no `input_sha256`: the API never saw its
bytes, which is how the tests tell the two paths apart."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from conftest import npy_bytes
from nvc.sdk import Client, DirectUploadError, RetryPolicy

MiB = 1024 * 1024


def structured_volume(shape, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (400 + 30 * np.sin(x / 3.0) + 20 * np.cos(y / 4.0) + 5 * z + rng.integers(0, 8, x.shape)).astype(np.uint16)


class FlakyStoreClient(Client):
    """A client whose PUTs to the store fail for part `broken` (a connection that keeps dropping)."""

    broken = 2

    def _new_bare_client(self):
        real = httpx.HTTPTransport()
        broken = self.broken

        class Transport(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if request.method == "PUT" and f"partNumber={broken}" in str(request.url):
                    raise httpx.ConnectError("connection reset by the test", request=request)
                return real.handle_request(request)

        return httpx.Client(timeout=self._timeout, transport=Transport())


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_large_files_go_straight_to_storage_and_resume(s3_settings, make_stack, tmp_path):
    import codec

    stack = make_stack(s3_settings)
    stack.start_worker()
    url = stack.start_api()
    volume = structured_volume((192, 192, 80))  # 5.9 MB: two parts of at most 5 MiB
    path = tmp_path / "scan.npy"
    path.write_bytes(npy_bytes(volume))
    fast = RetryPolicy(max_attempts=2, backoff=0.01, jitter=0)

    with FlakyStoreClient(url, direct_upload_bytes=1 * MiB, retry=fast) as flaky:
        with pytest.raises(DirectUploadError) as stopped:
            flaky.compress(path)
    upload_id = stopped.value.upload_id
    with Client(url, direct_upload_bytes=1 * MiB) as client:
        status = client._http.get(f"/uploads/{upload_id}").json()
        assert [p["number"] for p in status["stored"]] == [1] and [p["number"] for p in status["parts"]] == [2]
        job = client.compress(path, resume_upload=upload_id)
        assert job.id == upload_id and job.input_sha256 is None and job.input_size == path.stat().st_size
        done = client.wait(job, timeout=300)
        assert done.state == "succeeded"
        assert np.array_equal(codec.decode(client.result_bytes(done)), volume)

        small = client.compress(npy_bytes(volume[:, :, :4]), filename="small.npy")  # below the threshold
        assert small.input_sha256 is not None  # streamed through the API


def test_a_server_with_local_storage_gets_the_file_streamed(service_settings, make_stack, small_volume):
    stack = make_stack(service_settings)
    url = stack.start_api()
    with Client(url, direct_upload_bytes=1) as client:
        job = client.compress(npy_bytes(small_volume), filename="v.npy")
    assert job.state == "queued" and job.input_sha256 is not None


@pytest.mark.slow
@pytest.mark.usefixtures("require_codec")
def test_nvc_remote_uploads_straight_to_storage(s3_settings, make_stack, tmp_path, capsys):
    import json

    import redis

    from nvc.cli import main

    stack = make_stack(s3_settings)
    stack.start_worker()
    url = stack.start_api()
    folder = tmp_path / "archive"
    folder.mkdir()
    volumes = {f"v{i}.npy": structured_volume((32, 28, 6), seed=i) for i in range(2)}
    for name, volume in volumes.items():
        np.save(folder / name, volume)
    code = main(["remote", "compress", str(folder), "--server", url, "-o", str(tmp_path / "out"), "--json",
                 "--direct-upload-mib", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["ok"] == 2 and summary["verified"] == {"sha256+decoded=source": 2}
    records = redis.Redis.from_url(s3_settings.redis_url, decode_responses=True)
    jobs = [records.hgetall(k) for k in records.scan_iter(f"{s3_settings.key_prefix}job:*")]
    records.close()
    assert len(jobs) == 2 and all(j["state"] == "succeeded" and "input_sha256" not in j for j in jobs)
