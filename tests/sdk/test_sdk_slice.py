"""`client.slice` / `client.slice_range` (sync and async, one implementation): the request
they make, what they return, and the server's problems as SDK errors. Against the live
service in tests/e2e/test_remote_e2e.py."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest

from nvc.sdk import APIError, AsyncClient, Client, SliceImage
from nvc.sdk.retry import RetryPolicy

JOB = "a" * 32
SLICE = np.arange(12, dtype=np.uint16).reshape(3, 4)


def handler(seen: list[httpx.Request]):
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/slices/99"):
            problem = {"type": "urn:nvc:problem:slice-out-of-range", "title": "Unprocessable Content", "status": 422,
                       "detail": "slice 99 is out of range: the volume has 20 slices (0..19)"}
            return httpx.Response(422, content=json.dumps(problem), headers={"content-type": "application/problem+json"})
        buffer = io.BytesIO()
        np.save(buffer, SLICE if "/slices/" in request.url.path else np.stack([SLICE, SLICE], axis=2))
        headers = {"content-type": "application/x-npy", "x-slice-count": "20"}
        if request.url.params.get("format") == "png":
            headers.update({"content-type": "image/png", "x-window-center": "40", "x-window-width": "400"})
        if "/slices/" in request.url.path:
            headers.update({"x-slice-index": "19", "x-slice-position-mm": "38"})
        return httpx.Response(200, content=buffer.getvalue(), headers=headers)

    return answer


def test_sync_slice_and_range():
    seen: list[httpx.Request] = []
    with Client("http://nvc.test", transport=httpx.MockTransport(handler(seen)), api_key="k") as client:
        png = client.slice(JOB, -1, window="soft_tissue")
        assert isinstance(png, SliceImage) and png.is_png
        assert (png.z, png.slice_count, png.position_mm, png.window_center, png.window_width) == (19, 20, 38.0, 40, 400)
        assert seen[-1].url.path == f"/jobs/{JOB}/slices/-1"
        assert dict(seen[-1].url.params) == {"format": "png", "window": "soft_tissue"}
        assert seen[-1].headers["authorization"] == "Bearer k"
        with pytest.raises(ValueError, match="format='npy'"):
            png.array()
        raw = client.slice(JOB, 3, format="npy", center=10, width=5)
        assert dict(seen[-1].url.params) == {"format": "npy", "center": "10", "width": "5"}
        assert np.array_equal(raw.array(), SLICE)
        block = client.slice_range(JOB, 4, 6)
        assert seen[-1].url.path == f"/jobs/{JOB}/slices" and dict(seen[-1].url.params) == {"start": "4", "stop": "6"}
        assert (block.start, block.stop, block.z) == (4, 6, None) and block.array().shape == (3, 4, 2)
        with pytest.raises(APIError, match="out of range: the volume has 20 slices") as info:
            client.slice(JOB, 99)
        assert info.value.status == 422 and info.value.problem["type"].endswith("slice-out-of-range")


def test_async_slice_is_the_same_operation(tmp_path):
    seen: list[httpx.Request] = []

    async def run():
        async with AsyncClient("http://nvc.test", transport=httpx.MockTransport(handler(seen)),
                               retry=RetryPolicy(max_attempts=1)) as client:
            image = await client.slice(JOB, 5, format="npy")
            return image, await client.slice_range(JOB, 0, 2)

    image, block = asyncio.run(run())
    assert np.array_equal(image.array(), SLICE) and block.array().shape == (3, 4, 2)
    assert [r.url.path for r in seen] == [f"/jobs/{JOB}/slices/5", f"/jobs/{JOB}/slices"]
    saved = image.save(tmp_path / "s.npy")
    assert np.array_equal(np.load(saved), SLICE)
