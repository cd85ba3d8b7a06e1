"""The device-resident path (codec/device_path.py) against the reference, byte for byte.

Runs on torch's CPU device everywhere (the same code as on a GPU, with the CPU's kernels), and
on CUDA as well where a GPU is present: encode on the device and decode on the CPU, and the
reverse, give the same files and voxels as the native core and the reference path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec import device_path, engine, native_core, registry
from codec.context import plan_slabs

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
CUDA_REASON = "no CUDA device here: the device path is checked on torch's CPU device only"


def smooth_volume(shape, lo, hi, seed):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    base = np.sin(z + 2 * y) * np.cos(3 * x - z)
    vol = lo + (hi - lo) * (base - base.min()) / max(1e-9, np.ptp(base)) + rng.normal(0, (hi - lo) * 0.02 + 0.5, shape)
    return np.clip(np.rint(vol), lo, hi).astype(np.int32)


@pytest.fixture(autouse=True)
def no_fitting(monkeypatch):
    """Fitting is float training, device-dependent by nature; the shipped model is what is compared here."""
    monkeypatch.setattr(engine, "fit_steps", lambda profile, voxels: 0)


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("profile,shape,lo,hi", [("default", (20, 13, 17), -1024, 3071), ("default", (3, 9, 5), 7, 7),
                                                 ("default", (2, 6, 40), 0, 65535), ("paper", (4, 7, 9), 0, 900),
                                                 ("paper-pyramid", (5, 7, 9), 0, 900)])
def test_device_encode_and_decode_give_the_reference_bytes_and_voxels(device, profile, shape, lo, hi) -> None:
    vol = smooth_volume(shape, lo, hi, 1)
    vmin, vmax = int(vol.min()), int(vol.max())
    ref = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile=profile, native=False)
    dev = engine.encode_volume(vol, vmin=vmin, vmax=vmax, profile=profile, device=device)
    assert dev.payloads == ref.payloads and dev.model_blob == ref.model_blob
    shapes = [(b - a, *vol.shape[1:]) for a, b in ref.slabs]
    out = engine.decode_slabs(ref.model_blob, ref.payloads, shapes, vmin=vmin, vmax=vmax, device=device)
    assert np.array_equal(np.concatenate(out), vol)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_device_symbols_are_the_native_cores(device) -> None:
    if not native_core.available():
        pytest.skip("the native core is not built")
    vol = smooth_volume((18, 11, 12), -500, 1500, 4)
    net = registry.current_model("default").net
    spec = registry.current_model("default").spec
    slabs = plan_slabs(vol.shape[0], 32)
    sym_d, cnt_d = device_path.predict(net, spec, vol, slabs, int(vol.min()), int(vol.max()), device)
    sym_n, cnt_n = native_core.predict(net, spec, vol, slabs, int(vol.min()), int(vol.max()))
    assert np.array_equal(sym_d, sym_n) and np.array_equal(cnt_d, cnt_n)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_device_decode_refuses_a_corrupt_payload(device) -> None:
    from codec.errors import FormatError

    vol = smooth_volume((4, 8, 8), 0, 2000, 2)
    enc = engine.encode_volume(vol, vmin=0, vmax=2000)
    broken = [bytes(b ^ 0x5A for b in enc.payloads[0])] + list(enc.payloads[1:])
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    try:
        out = engine.decode_slabs(enc.model_blob, broken, shapes, vmin=0, vmax=2000, device=device)
    except FormatError:
        return
    assert not np.array_equal(np.concatenate(out), vol)  # decoded to other voxels: the container's CRCs catch it


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
def test_gpu_encode_cpu_decode_and_the_reverse_are_byte_identical() -> None:
    vol = smooth_volume((40, 24, 24), -1024, 3071, 9)
    vmin, vmax = int(vol.min()), int(vol.max())
    gpu = engine.encode_volume(vol, vmin=vmin, vmax=vmax, device=torch.device("cuda"))
    cpu = engine.encode_volume(vol, vmin=vmin, vmax=vmax)
    assert gpu.payloads == cpu.payloads
    shapes = [(b - a, *vol.shape[1:]) for a, b in cpu.slabs]
    assert np.array_equal(np.concatenate(engine.decode_slabs(gpu.model_blob, gpu.payloads, shapes, vmin=vmin, vmax=vmax)), vol)
    assert np.array_equal(np.concatenate(engine.decode_slabs(cpu.model_blob, cpu.payloads, shapes, vmin=vmin, vmax=vmax,
                                                             device=torch.device("cuda"))), vol)
