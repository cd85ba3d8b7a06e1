"""Per-volume fitting (codec/fit.py, engine.fit_predictor): the closed-form loss, the cheap
quantile, determinism, and the device the fit runs on (CPU here; CUDA where one is present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec import engine, registry
from codec.context import plan_slabs
from codec.fit import _quantile, code_length_bits, code_length_bits_autograd, fit, quantize, sample_volume


def _volume(shape: tuple[int, int, int] = (12, 40, 48), seed: int = 3) -> np.ndarray:
    """A periodic texture the shipped model predicts poorly, so that a fit pays and is kept."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    levels = np.array([0, 37, 180, 90, 12])
    rng = np.random.default_rng(seed)
    return (500 + 4 * levels[(x + 2 * y + z) % 5] + rng.integers(-3, 4, shape)).astype(np.int32)


def _samples(n: int = 20000):
    vol = _volume()
    shipped = registry.current_model("default")
    slabs = plan_slabs(vol.shape[0], 32)
    return shipped, sample_volume(vol, int(vol.min()), int(vol.max()), 32, n, np.random.default_rng(0), None,
                                  shipped.spec, slabs=slabs)


def test_closed_form_code_length_equals_autograd_expression() -> None:
    """Value and gradient of the one-pass loss are those of the plain tensor expression,
    including means pushed past the value range and classes past either end."""
    shipped, s = _samples()
    model = shipped.float_model()
    noise = torch.randn(len(s), 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([40.0, 30.0])
    results = []
    for loss in (code_length_bits, code_length_bits_autograd):
        out = model(s.inputs).detach().requires_grad_(True)
        value = loss(out + noise, s, shipped.spec)
        value.mean().backward()
        results.append((value.detach(), out.grad))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-8)
    assert (g1[:, 0] != 0).any() and (g1[:, 1] != 0).any()


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 10_001, 1_000_000])
@pytest.mark.parametrize("ties", [False, True])
def test_quantile_by_selection_equals_torch_quantile(n: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(n)
    values = (torch.randn(n, generator=g) * 5).abs()
    if ties:
        values = values.round()
    for q in (0.9999, 0.99, 0.5):
        assert _quantile(values, q) == float(torch.quantile(values, q))


def test_fitting_is_deterministic_and_ignores_nvc_threads(monkeypatch) -> None:
    """The same input gives the same file on every run, whatever NVC_THREADS or the encode's
    thread count (fitting always runs on the profile's fixed torch thread count)."""
    vol = _volume()
    files = []
    for threads in ("1", "2", "1"):
        monkeypatch.setenv("NVC_THREADS", threads)
        monkeypatch.setenv("NVC_DEVICE", "cpu")
        enc = engine.encode_volume(vol, vmin=int(vol.min()), vmax=int(vol.max()), threads=int(threads))
        files.append(enc.model_blob + b"".join(enc.payloads))
    assert files[0] == files[1] == files[2]
    assert engine.Predictor.from_blob(enc.model_blob).embedded  # the fit paid and was stored


def test_fit_device_follows_nvc_device(monkeypatch) -> None:
    monkeypatch.setenv("NVC_DEVICE", "cpu")
    assert engine.fit_device().type == "cpu"
    assert engine.fit_device("cpu").type == "cpu"
    monkeypatch.delenv("NVC_DEVICE")
    assert engine.fit_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def _fit_on(device: str):
    shipped, s = _samples(30000)
    model = fit(shipped.float_model(), s, 30, batch=2048, lr=1e-2, warmup=5, spec=shipped.spec, device=device)
    assert all(p.device.type == "cpu" for p in model.parameters())  # returned where quantize reads it
    return shipped, s, model


def test_fit_on_the_cpu_device_returns_a_quantisable_model() -> None:
    shipped, s, model = _fit_on("cpu")
    net = quantize(model, s.inputs[:4096].numpy())
    assert net.to_bytes() != shipped.net.to_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU fit runs where one is present")
def test_fit_on_cuda_writes_a_file_that_decodes_on_the_cpu(monkeypatch) -> None:
    """Fitting on the GPU: the same code path with the model, samples and loss on cuda; the
    stored integer weights decode exactly on the CPU."""
    shipped, s, model = _fit_on("cuda")
    assert quantize(model, s.inputs[:4096].numpy()).to_bytes() != shipped.net.to_bytes()
    vol = _volume()
    monkeypatch.setenv("NVC_DEVICE", "cuda")
    enc = engine.encode_volume(vol, vmin=int(vol.min()), vmax=int(vol.max()))
    again = engine.encode_volume(vol, vmin=int(vol.min()), vmax=int(vol.max()))
    assert enc.model_blob == again.model_blob  # deterministic on one device too
    shapes = [(b - a, *vol.shape[1:]) for a, b in enc.slabs]
    monkeypatch.setenv("NVC_DEVICE", "cpu")
    out = engine.decode_slabs(enc.model_blob, enc.payloads, shapes, vmin=int(vol.min()), vmax=int(vol.max()))
    assert np.array_equal(np.concatenate(out), vol)


def test_gpu_is_a_deprecated_name_of_archive() -> None:
    """`gpu` (old job records, clients, scripts) resolves to `archive` wherever a profile is
    named; it is not listed as a profile of its own. Files name the shipped model, not the
    profile, so old `gpu` files need nothing (they decode: the *_before_0113 vector)."""
    from codec.profiles import ALIASES, PROFILES, get_profile

    assert ALIASES == {"gpu": "archive"} and "gpu" not in PROFILES and "gpu" not in engine.PROFILES
    assert get_profile("gpu") is get_profile("archive") is PROFILES["archive"]
    assert registry.current_model("gpu").model_id == registry.current_model("archive").model_id \
        == registry.current_model("default").model_id
    assert engine.fit_steps("gpu", 10**6) == engine.fit_steps("archive", 10**6) > engine.fit_steps("default", 10**6)


def test_samples_laid_out_slab_by_slab_equal_the_whole_volume_buffer() -> None:
    """sample_volume lays out one slab at a time (memory: one slab, not a second volume); the
    features are those of the whole padded buffer the coder uses, voxel for voxel."""
    from codec.context import load_into_buffer, plan_slabs

    vol = np.random.default_rng(0).integers(-1000, 3000, (40, 21, 19)).astype(np.int32)
    slabs = plan_slabs(40, 32)
    assert len(slabs) == 2
    one = sample_volume(vol, -1000, 3000, 32, 5000, np.random.default_rng(1), None, slabs=slabs)
    whole = sample_volume(vol, -1000, 3000, 32, 5000, np.random.default_rng(1),
                              load_into_buffer(vol, slabs, -1000), slabs=slabs)
    assert torch.equal(one.inputs, whole.inputs) and torch.equal(one.aux, whole.aux)
