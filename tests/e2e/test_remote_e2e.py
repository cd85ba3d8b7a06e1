"""The SDK and `nvc remote` against a live `nvc serve` (real API, worker, codec, storage).

Small synthetic volumes keep it within the CI budget: a folder of NIfTI and .npy files is
compressed with -j 2, every .nvc is decoded locally and compared voxel for voxel with its
source, the .nvc files are decompressed back to NIfTI and compared again, a rerun skips
everything, and a damaged input fails with the server's reason and exit status 1. The SDK's
sync and async clients are checked against the same server (idempotent resubmission,
result bytes, long-poll wait). The whole ../shared/data archive is pushed by hand (README).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import uuid
from pathlib import Path

import pytest

from nvc.cli import main
from nvc.sdk import APIError, AsyncClient, Client, JobState

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))
import nvc_live  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def live():
    reason = nvc_live.codec_works()
    if reason:
        pytest.skip(reason)
    return nvc_live.server()


def synthetic(shape, dtype, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    base = 300 + 40 * np.sin(x / 5.0) + 25 * np.cos(y / 3.0) + 7 * z + rng.integers(0, 12, shape)
    if np.dtype(dtype).kind == "i":
        base = base - 600
    return base.astype(dtype)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    import nibabel as nib
    import numpy as np

    root = tmp_path_factory.mktemp("archive")
    volumes = {
        "ct/head.nii.gz": synthetic((40, 36, 10), np.int16, 1),
        "mr/brain.nii": synthetic((32, 40, 8), np.uint16, 2),
        "mr/raw.npy": synthetic((24, 24, 6), np.uint16, 3),
    }
    for name, volume in volumes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".npy"):
            np.save(path, volume)
        else:
            image = nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0]))
            image.header.set_data_dtype(volume.dtype)
            nib.save(image, str(path))
    return root, volumes


def cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_batch_round_trip_through_a_live_server(live, archive, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    root, volumes = archive
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    args = ["remote", "compress", str(root), "--server", live.url, "-j", "2", "-o", str(packed), "--json"]
    code, summary, err = cli(args, capsys)
    assert code == 0, err
    assert summary["ok"] == 3 and summary["failed"] == 0
    assert summary["verified"] == {"sha256+decoded=source": 3}  # decoded locally, voxels identical
    assert summary["ratio"] > 1 and summary["upload_ratio"] > 0 and 0 < summary["bits_per_voxel"] < 16
    nvc_files = sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*.nvc"))
    # the layout under the input folder (not nested in its name), named by the one rule
    assert nvc_files == ["ct/head.nii.gz.nvc", "mr/brain.nii.nvc", "mr/raw.npy.nvc"]

    code, again, err = cli(args, capsys)
    assert code == 0 and again["skipped"] == 3 and again["ok"] == 0

    code, back, err = cli(
        [
            "remote",
            "decompress",
            str(packed),
            "--server",
            live.url,
            "-j",
            "2",
            "-o",
            str(restored),
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert back["ok"] == 3 and back["verified"] == {"sha256+decoded=result": 3}
    for name, volume in volumes.items():
        stem = name.rsplit(".nii", 1)[0].removesuffix(".npy")
        image = nib.load(str(restored / f"{stem}.nii.gz"))
        data = np.asanyarray(image.dataobj)
        assert data.dtype == volume.dtype and np.array_equal(data, volume), name


def test_a_damaged_input_fails_with_the_servers_reason(live, archive, tmp_path, capsys):
    root, _ = archive
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(gzip.compress((root / "mr/brain.nii").read_bytes()[:200]))  # header cut short
    code, summary, err = cli(
        [
            "remote",
            "compress",
            str(damaged),
            str(root / "mr/raw.npy"),
            "--server",
            live.url,
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
        capsys,
    )
    assert code == 1
    assert summary["ok"] == 1 and summary["failed"] == 1
    failure = summary["failures"][0]
    assert failure["path"] == str(damaged) and failure["error"]
    assert f"FAILED {damaged}: " in err


def test_sdk_sync_and_async_against_the_live_server(live, archive):
    import io

    import numpy as np

    import codec

    root, volumes = archive
    data = (root / "mr/raw.npy").read_bytes()
    key = uuid.uuid4().hex
    with Client(live.url, poll_interval=0.2) as client:
        assert client.health() == {"status": "ok"} and client.ready()
        job = client.compress(data, filename="raw.npy", idempotency_key=key)
        assert client.compress(data, filename="raw.npy", idempotency_key=key).id == job.id
        done = client.wait(job, timeout=120)
        assert done.state is JobState.succeeded and done.kind == "compress" and done.input_name == "raw.npy"
        assert done.shape == [24, 24, 6] and done.dtype == "uint16"
        nvc_bytes = client.result_bytes(done)
        assert np.array_equal(codec.decode(nvc_bytes), volumes["mr/raw.npy"])
        # a slice without the volume: raw values, and the PNG the documented rendering gives
        from codec import render

        raw = client.slice(done, 4, format="npy")
        assert raw.slice_count == 6 and np.array_equal(raw.array(), volumes["mr/raw.npy"][:, :, 4])
        png = client.slice(done, -1, window="auto")
        assert png.is_png and png.z == 5
        source = volumes["mr/raw.npy"][:, :, 5]
        expect = render.render(source, render.auto_window(source.astype(np.float64)))
        from PIL import Image

        with Image.open(io.BytesIO(png.content)) as image:
            assert np.array_equal(np.asarray(image), expect)
        assert np.array_equal(client.slice_range(done, 1, 4).array(), volumes["mr/raw.npy"][:, :, 1:4])
        with pytest.raises(APIError) as info:
            client.get_job("f" * 32)
        assert info.value.status == 404 and info.value.detail

    async def round_trip():
        async with AsyncClient(live.url, poll_interval=0.2) as client:
            job = await client.decompress(nvc_bytes, format="npy")
            done = await client.wait(job, timeout=120)
            middle = await client.slice(done, 3, format="npy")  # a decompress job: its uploaded .nvc
            assert np.array_equal(middle.array(), volumes["mr/raw.npy"][:, :, 3])
            return done, await client.result_bytes(done)

    done, npy = asyncio.run(round_trip())
    assert done.output_format == "npy" and done.output_name.endswith(".npy")
    assert np.array_equal(np.load(io.BytesIO(npy)), volumes["mr/raw.npy"])


def test_the_readme_sdk_snippet_runs_as_written(live, tmp_path):
    """The Python block of README's SDK section, byte for byte, in a folder with a scan.nii.gz."""
    import os
    import re
    import subprocess

    import nibabel as nib
    import numpy as np

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### SDK (`nvc.sdk`)"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "Client(" in snippet and "compress_many" in snippet
    nib.save(nib.Nifti1Image(synthetic((20, 18, 48), np.int16, 7), np.eye(4)), str(tmp_path / "scan.nii.gz"))
    env = {**os.environ, "NVC_SERVER": live.url, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("NVC_API_KEY", None)
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scan.nii.gz.nvc").stat().st_size > 0 and (tmp_path / "out" / "scan.nii.gz.nvc").is_file()
    first, second = proc.stdout.splitlines()[:2]
    ratio, upload_ratio = (float(v) for v in first.split()[:2])
    assert ratio > 1 and upload_ratio > 0
    assert second.startswith("scan.nii.gz True sha256"), second  # verified
