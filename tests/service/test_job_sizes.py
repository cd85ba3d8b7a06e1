"""One meaning of "ratio" everywhere: raw voxel bytes / .nvc bytes (the codec's
`compression_ratio`); the upload's own ratio is `upload_ratio`, named apart."""

from __future__ import annotations

import time

import pytest

from app.schemas import job_from_record
from service.jobs import dtype_bytes, size_facts


@pytest.mark.parametrize(("name", "size"), [("uint8", 1), ("int16", 2), ("<u2", None), ("uint16", 2), (">int32", 4),
                                            ("int64", 8), ("float32", None), (None, None)])
def test_bytes_per_voxel(name, size):
    assert dtype_bytes(name) == size


def test_compress_job_ratio_is_against_the_raw_voxels_and_the_upload_is_named_apart():
    record = {"id": "a" * 32, "kind": "compress", "state": "succeeded", "progress": 1.0, "created_at": time.time(),
              "shape": [10, 10, 4], "dtype": "int16", "input_size": 300, "output_size": 200}
    job = job_from_record(record)
    assert job.raw_bytes == 800 and job.ratio == 4.0 and job.upload_ratio == 1.5


def test_decompress_job_ratio_is_that_of_its_nvc_upload():
    facts = size_facts({"kind": "decompress", "shape": [8, 8, 2], "dtype": "uint8", "input_size": 32,
                        "output_size": 500})
    assert facts == {"raw_bytes": 128, "ratio": 4.0, "upload_ratio": None}


def test_unknown_sizes_give_no_ratio():
    assert size_facts({"kind": "compress", "input_size": 10}) == {"raw_bytes": None, "ratio": None,
                                                                   "upload_ratio": None}


def test_the_job_ratio_equals_nvc_info(tmp_path):
    import numpy as np

    import codec

    volume = (np.arange(16 * 16 * 4) % 50).astype(np.uint16).reshape(16, 16, 4)
    data = codec.encode(volume)
    meta = codec.info(data)
    facts = size_facts({"kind": "decompress", "shape": meta["shape"], "dtype": meta["dtype"],
                        "input_size": len(data)})
    assert facts["ratio"] == pytest.approx(meta["compression_ratio"]) and facts["raw_bytes"] == meta["raw_bytes"]
