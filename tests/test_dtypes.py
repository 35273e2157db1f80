"""Storage dtypes: float16 / bfloat16 are computed in float32 and rounded once at the end
(like the reference), so the forward is bit-identical to the reference on the same half
input; float32 / float64 compute in their own precision. Autocast and mixed dtypes.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import exodus
from conftest import (SURROGATES, assert_equal, assert_grad_close, grad_rtol, make_lif_case, randn,
                      uniform)
from exodus import functional as F
from exodus.reference import leaky_ref, lif_ref

pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
IDS = ["f16", "bf16", "f32", "f64"]
HALF = (torch.float16, torch.bfloat16)


def param_rtol(dtype):
    """tau/threshold/v0 gradients are accumulated in float32 for half inputs, but their
    upstream gradients pass through the half-precision outputs of both implementations."""
    return 1e-4 if dtype in HALF else grad_rtol(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("gradient", ["exodus", "slayer"])
@pytest.mark.parametrize("reset, max_spikes, v_min", [("subtract", 1, None), ("zero", 2, -0.5),
                                                       ("subtract", None, -0.3)])
def test_lif_dtype_matches_reference(dtype, gradient, reset, max_spikes, v_min):
    case = make_lif_case(batch=2, time=25, features=(2, 3), dtype=dtype, seed=11, reset=reset,
                         max_spikes=max_spikes, v_min=v_min, surrogate=SURROGATES[0],
                         amplitude="moderate" if max_spikes == 1 else "large")
    ref_mode = "slayer" if gradient == "slayer" else "exodus"
    s_ref, v_ref, g_ref = case.run(lif_ref, gradient=ref_mode, grad_scale=0.6)
    s, v, g = case.run(F.lif, gradient=gradient, grad_scale=0.6, backend="cpu")
    assert s.dtype == dtype and v.dtype == dtype
    assert_equal(s, s_ref, "spikes")
    assert_equal(v, v_ref, "v")
    assert s_ref.sum() > 10
    assert g[0].dtype == dtype, "input gradient in the input dtype"
    assert_grad_close(g[0], g_ref[0], grad_rtol(dtype), "d/dx")
    for name, got, exp in zip(case.names()[1:], g[1:], g_ref[1:]):
        assert_grad_close(got, exp, param_rtol(dtype), f"d/d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("norm_input", [False, True])
def test_leaky_dtype_matches_reference(dtype, norm_input):
    g = torch.Generator().manual_seed(12)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = randn((3, 20, 4), dtype, g).requires_grad_()
    tau = uniform((4,), acc, g, 2.0, 20.0).requires_grad_()
    v0 = randn((3, 4), acc, g).requires_grad_()
    w = randn(x.shape, acc, g)
    results = []
    for fn, kw in ((F.leaky, dict(backend="cpu")), (leaky_ref, {})):
        v = fn(x, torch.exp(-1.0 / tau), v0, norm_input=norm_input, **kw)
        results.append((v, torch.autograd.grad((v.to(acc) * w).sum(), (x, tau, v0))))
    (v, grads), (v_ref, grads_ref) = results
    assert v.dtype == dtype
    assert_equal(v.detach(), v_ref.detach(), "v")
    assert grads[0].dtype == dtype
    assert_grad_close(grads[0], grads_ref[0], grad_rtol(dtype), "d/dx")
    # The fused leaky op saves its output trace (in the storage dtype) for dL/dalpha =
    # sum_t lambda_t v_{t-1}; the reference uses its float32 trace. With half storage the
    # alpha gradient therefore carries half rounding (~1e-3 relative), v0's does not.
    assert_grad_close(grads[1], grads_ref[1], grad_rtol(dtype), "d/dtau")
    assert_grad_close(grads[2], grads_ref[2], param_rtol(dtype), "d/dv0")


@pytest.mark.parametrize("dtype", HALF, ids=IDS[:2])
def test_half_layer_chained_state(dtype):
    """The carried state is stored in the input dtype; the reference chained the same way agrees."""
    g = torch.Generator().manual_seed(13)
    x = randn((2, 30, 5), dtype, g, 0.8, 0.3)
    layer = exodus.LIF(tau_mem=8.0, tau_syn=3.0, record_states=True, backend="cpu")
    outs = [(layer(c), layer.recordings["v"]) for c in torch.split(x, [12, 18], 1)]
    assert layer.v.dtype == dtype
    alpha, beta = torch.exp(torch.tensor(-1.0 / 8.0)), torch.exp(torch.tensor(-1.0 / 3.0))
    v, i = None, None
    for k, (chunk, (spikes, trace)) in enumerate(zip(torch.split(x, [12, 18], 1), outs)):
        current = leaky_ref(chunk, beta, i)
        s_ref, v_ref = lif_ref(current, alpha, torch.tensor(1.0), v)
        i, v = current[:, -1], v_ref[:, -1]
        assert spikes.dtype == dtype
        assert_equal(spikes, s_ref, f"spikes chunk {k}")
        assert_equal(trace, v_ref, f"v chunk {k}")
    assert sum(s.sum() for s, _ in outs) > 10


def test_autocast_bfloat16():
    """nn.Linear -> exodus.LIF under CPU autocast: bf16 spikes, gradients reach every parameter,
    and equal those of the same model on the reference backend."""
    torch.manual_seed(14)
    models = {}
    for backend in ("cpu", "torch"):
        torch.manual_seed(14)
        models[backend] = nn.Sequential(
            nn.Linear(6, 8),
            exodus.LIF(tau_mem=uniform((8,), torch.float32, torch.Generator().manual_seed(1), 3.0, 15.0),
                       train_tau=True, train_threshold=True, shape=(8,), backend=backend))
    g = torch.Generator().manual_seed(15)
    x = randn((3, 20, 6), torch.float32, g, 1.0, 0.4)
    w = randn((3, 20, 8), torch.float32, g)
    results = {}
    for backend, model in models.items():
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            spikes = model(x)
        assert spikes.dtype == torch.bfloat16
        loss = (spikes.float() * w).sum()
        results[backend] = (spikes, torch.autograd.grad(loss, list(model.parameters())))
    spikes, grads = results["cpu"]
    spikes_ref, grads_ref = results["torch"]
    assert_equal(spikes, spikes_ref, "spikes")
    assert spikes.sum() > 10
    names = [n for n, _ in models["cpu"].named_parameters()]
    assert names == ["0.weight", "0.bias", "1.tau_mem", "1.threshold"]
    for name, got, exp in zip(names, grads, grads_ref):
        assert bool(torch.isfinite(got).all()) and bool(got.abs().sum() > 0), f"{name} gets no gradient"
        assert_grad_close(got, exp, 1e-2, f"d/d{name}")


def test_mixed_parameter_dtypes():
    """Parameters of another float dtype than the input: math in the input's math dtype."""
    g = torch.Generator().manual_seed(16)
    x64 = randn((2, 15, 3), torch.float64, g, 0.8, 0.3)
    alpha32, theta32 = torch.full((3,), 0.9, dtype=torch.float32), torch.full((3,), 1.1, dtype=torch.float32)
    spikes, v = F.lif(x64, alpha32, theta32, backend="cpu")
    s_ref, v_ref = lif_ref(x64, alpha32.double(), theta32.double())
    assert spikes.dtype == v.dtype == torch.float64
    assert_equal(spikes, s_ref, "spikes")
    assert_equal(v, v_ref, "v")
    x16 = x64.half()
    alpha64 = torch.full((3,), 0.9, dtype=torch.float64)
    spikes, v = F.lif(x16, alpha64, 1.0, torch.zeros(2, 3, dtype=torch.float64), backend="cpu")
    s_ref, v_ref = lif_ref(x16, alpha64.float(), 1.0)
    assert spikes.dtype == v.dtype == torch.float16
    assert_equal(spikes, s_ref, "spikes half")
    assert_equal(v, v_ref, "v half")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_non_float_input_rejected(dtype):
    x = torch.zeros(2, 3, 4, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        F.lif(x, 0.9, backend="cpu")
    with pytest.raises(TypeError, match="dtype"):
        F.leaky(x, 0.9, backend="cpu")
