"""Slice routes: look at a finished job's volume without downloading it.

`GET /jobs/{id}/slices/{z}` answers one slice as a PNG rendered with a window (codec/render.py,
the same rendering as `nvc slice`) or as `.npy`; `GET /jobs/{id}/slices?start=&stop=` answers a
slice range as `.npy`. Both decode only the slabs that cover the request (service/slices.py keeps
decoded slabs in an LRU). They are job routes like the others: the key's own jobs only (404
otherwise), the per-key rate limit, problem details for every refusal. A job's `.nvc` never
changes, so answers carry an ETag (If-None-Match answers 304 without decoding) and may be
cached privately.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Path, Query, Response

from service.problems import Problem
from app.routes.jobs import COMMON_PROBLEMS, Owner, Svc, _owned_job, _problem_responses
from service.slices import MAX_RANGE_SLICES, SliceCache, nvc_sha256

router = APIRouter(tags=["slices"])

WindowPreset = Literal["auto", "lung", "soft_tissue", "bone", "brain"]
CACHE_CONTROL = "private, max-age=3600"
#: Headers the page (and portals, through CORS) read beside the image.
SLICE_HEADERS = ("X-Slice-Index", "X-Slice-Count", "X-Slice-Position-Mm", "X-Window-Center", "X-Window-Width",
                 "X-Rescale-Slope", "X-Rescale-Intercept", "X-Volume-Count", "X-Series-Modality",
                 "X-Series-Description", "X-Series-Uid")
NPY = "application/x-npy"
VOLUME_HELP = "Time point of a 4-D series, or coded volume of a DICOM series archive (one per stack of slices)."


def cache_of(services) -> SliceCache:
    cache = getattr(services, "slices", None)
    if cache is None:  # created on first use, per process
        cache = services.slices = SliceCache(services.storage, services.settings.slice_cache_bytes)
    return cache


async def _finished(services, job_id: str, owner: str) -> dict[str, Any]:
    record = await _owned_job(services, job_id, owner)
    if record.get("result_deleted"):
        raise Problem(410, "the files of this job were deleted", slug="result-deleted")
    if record["state"] != "succeeded":
        active = record["state"] in ("queued", "running")
        raise Problem(
            409, f"job {job_id} is {record['state']}; slices are there once it has succeeded", slug="not-finished",
            headers={"Retry-After": "1"} if active else None, state=record["state"],
        )
    return record


async def _volume(cache: SliceCache, job_id: str, record: dict[str, Any], volume: int) -> tuple[Any, int]:
    """The description of the volume asked for, and the time point within it: `volume` is the
    time point of a 4-D series, or which coded volume of a DICOM series archive."""
    info = await cache.info(job_id, record)
    if info.dicom_chunk is None:
        return info, volume
    return (await cache.info(job_id, record, volume) if volume else info), 0


def _volume_headers(info) -> dict[str, str]:
    """How many volumes there are to choose from, and for a DICOM archive the series of this one
    (modality, description percent-encoded as UTF-8, UID: what job records show, never patient data)."""
    from urllib.parse import quote

    count = info.parts if info.dicom_chunk is not None else (info.shape[3] if len(info.shape) >= 4 else 1)
    headers = {"X-Volume-Count": str(count)}
    if info.series:
        headers.update({"X-Series-Modality": quote(info.series.get("modality") or ""),
                        "X-Series-Description": quote(info.series.get("description") or ""),
                        "X-Series-Uid": quote(info.series.get("uid") or "")})
    return headers


def _etag(record: dict[str, Any], **params: Any) -> str:
    canon = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(f"{nvc_sha256(record)}|{canon}".encode()).hexdigest()[:40] + '"'


def _not_modified(if_none_match: str | None, etag: str) -> Response | None:
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")] + ["*"]:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return None


IMAGE_RESPONSES = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                    NPY: {"schema": {"type": "string", "format": "binary"}}},
        "description": "The slice: an 8-bit greyscale PNG (rows = y, columns = x), or the stored values as .npy "
        "(x, y; exact dtype). Headers: " + ", ".join(SLICE_HEADERS) + ".",
    },
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **_problem_responses(401, 404, 409, 410, 422, *COMMON_PROBLEMS),
}


@router.get(
    "/jobs/{job_id}/slices/{z}",
    summary="One slice of a succeeded job's volume, as PNG (windowed) or .npy",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
async def get_slice(
    services: Svc,
    owner: Owner,
    job_id: Annotated[str, Path(description="Job id")],
    z: Annotated[int, Path(description="Slice index along the last axis, 0-based; negative counts from the end.")],
    format: Annotated[Literal["png", "npy"], Query(description="png (rendered with a window) or npy (raw values).")] = "png",
    window: Annotated[
        WindowPreset | None,
        Query(description="Window preset: auto (0.5-99.5th percentile of the slice; MR), or CT presets in HU "
              "(lung -600/1500, soft_tissue 40/400, bone 400/1800, brain 40/80). Default auto."),
    ] = None,
    center: Annotated[float | None, Query(description="Window center (with width), in the volume's units.")] = None,
    width: Annotated[float | None, Query(gt=0, description="Window width (with center).")] = None,
    slope: Annotated[float | None, Query(description="Rescale slope (default: the file's NIfTI scaling, else 1).")] = None,
    intercept: Annotated[float | None, Query(description="Rescale intercept (default: the file's, else 0; CT "
                                             "presets on unsigned data without one assume -1024).")] = None,
    volume: Annotated[int, Query(ge=0, description=VOLUME_HELP)] = 0,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    from codec import render

    record = await _finished(services, job_id, owner)
    cache = cache_of(services)
    info, volume = await _volume(cache, job_id, record, volume)
    try:
        z, volume = render.slice_index(info.shape, z, volume)
    except ValueError as exc:
        raise Problem(422, str(exc), slug="slice-out-of-range", slices=info.depth) from None
    if (center is None) != (width is None):
        raise Problem(422, "give both center and width, or neither", slug="invalid-request")
    etag = _etag(record, z=z, volume=volume, format=format, window=window, center=center, width=width, slope=slope,
                 intercept=intercept)
    cached = _not_modified(if_none_match, etag)
    if cached is not None:
        return cached
    slice_xy = await cache.slice(job_id, record, info, z, volume)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Slice-Index": str(z), "X-Slice-Count": str(info.depth),
               **_volume_headers(info)}
    position = info.position_mm(z)
    if position is not None:
        headers["X-Slice-Position-Mm"] = f"{position:g}"
    if format == "npy":
        body = await anyio.to_thread.run_sync(render.npy_bytes, slice_xy)
        headers["Content-Disposition"] = f'inline; filename="{job_id}_z{z}.npy"'
        return Response(body, media_type=NPY, headers=headers)
    rescale = render.rescale_of(info.nifti_header)
    if slope is not None or intercept is not None:
        rescale = render.Rescale(rescale.slope if slope is None else slope,
                                 rescale.intercept if intercept is None else intercept, True)

    def draw() -> tuple[bytes, Any, Any]:
        chosen, used = render.choose_window(slice_xy, rescale, window, center, width)
        return render.png_bytes(render.render(slice_xy, chosen, used)), chosen, used

    body, chosen, used = await anyio.to_thread.run_sync(draw)
    headers.update({"X-Window-Center": f"{chosen.center:g}", "X-Window-Width": f"{chosen.width:g}",
                    "X-Rescale-Slope": f"{used.slope:g}", "X-Rescale-Intercept": f"{used.intercept:g}"})
    return Response(body, media_type="image/png", headers=headers)


@router.get(
    "/jobs/{job_id}/slices",
    summary="A slice range of a succeeded job's volume as .npy",
    response_class=Response,
    responses={
        200: {"content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
              "description": "Slices [start, stop) of the volume as .npy: shape (x, y, stop - start), exact dtype."},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        **_problem_responses(401, 404, 409, 410, 422, *COMMON_PROBLEMS),
    },
)
async def get_slice_range(
    services: Svc,
    owner: Owner,
    job_id: Annotated[str, Path(description="Job id")],
    start: Annotated[int, Query(ge=0, description="First slice (0-based).")],
    stop: Annotated[int, Query(ge=1, description=f"One past the last slice; at most {MAX_RANGE_SLICES} slices.")],
    volume: Annotated[int, Query(ge=0, description=VOLUME_HELP)] = 0,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    from codec import render

    record = await _finished(services, job_id, owner)
    cache = cache_of(services)
    info, volume = await _volume(cache, job_id, record, volume)
    if not start < stop <= info.depth:
        raise Problem(422, f"slices [{start}, {stop}) are not a range of this volume's {info.depth} slices "
                      f"(0 <= start < stop <= {info.depth})", slug="slice-out-of-range", slices=info.depth)
    if stop - start > MAX_RANGE_SLICES:
        raise Problem(422, f"at most {MAX_RANGE_SLICES} slices per request (asked for {stop - start}); "
                      "download the result for the whole volume", slug="slice-range-too-large")
    try:
        render.slice_index(info.shape, start, volume)
    except ValueError as exc:
        raise Problem(422, str(exc), slug="slice-out-of-range") from None
    etag = _etag(record, start=start, stop=stop, volume=volume, format="npy")
    cached = _not_modified(if_none_match, etag)
    if cached is not None:
        return cached
    array = await cache.slice_range(job_id, record, info, start, stop, volume)
    body = await anyio.to_thread.run_sync(render.npy_bytes, array)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "X-Slice-Count": str(info.depth),
               "Content-Disposition": f'inline; filename="{job_id}_z{start}-{stop}.npy"'}
    return Response(body, media_type=NPY, headers=headers)
