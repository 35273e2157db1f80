"""Fused scans (exodus.functional) against the plain-PyTorch reference under autograd.

Forward: spikes and membrane bit for bit (the kernels are written to round exactly like
the reference). Backward: gradients of x, v0, tau (through alpha = exp(-1/tau)) and the
threshold equal autograd of the reference (= BPTT) up to summation order; in "slayer"
mode the reference is lif_ref(..., gradient="slayer", grad_scale=...).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (FEATURE_SHAPES, SURROGATE_IDS, SURROGATES, assert_equal, assert_grad_close, grad_rtol,
                      lif_case_kwargs, make_lif_case, needs_cuda, param_shape, randn, uniform)
from exodus import functional as F
from exodus.reference import acc_dtype, leaky_ref, lif_ref

pytestmark = pytest.mark.usefixtures("single_thread")




def compare_lif(case, backend: str, gradient: str, grad_scale: float = 1.0, expected=None, v_trace=True):
    """Runs F.lif(backend, gradient) and lif_ref on the same leaves; returns the reference result.
    v_trace=False: lif returns only the final membrane, compared with the reference's v[:, -1]."""
    final_only = not v_trace
    if expected is None:
        ref_mode = "slayer" if gradient == "slayer" else "exodus"
        expected = case.run(lif_ref, final_only, gradient=ref_mode, grad_scale=grad_scale)
    got = case.run(F.lif, final_only, gradient=gradient, grad_scale=grad_scale, backend=backend, v_trace=v_trace)
    tag = f"[{backend}/{gradient}{'' if v_trace else '/final v'}]"
    assert_equal(got[0], expected[0], f"spikes {tag}")
    assert_equal(got[1], expected[1], f"v {tag}")
    rtol = grad_rtol(case.x.dtype)
    for name, g, e in zip(case.names(), got[2], expected[2]):
        assert_grad_close(g, e, rtol, f"d/d{name} {tag}")
    return expected


# ----------------------------------------------------------------------------- property test

def test_lif_matches_reference_property():
    """Random shapes/options: every CPU-side backend x gradient mode equals the reference."""
    spiking_examples = []

    @settings(max_examples=60)
    @given(kwargs=lif_case_kwargs(), gradient=st.sampled_from(["exodus", "slayer"]),
           grad_scale=st.floats(0.3, 2.0), v_trace=st.booleans())
    def check(kwargs, gradient, grad_scale, v_trace):
        case = make_lif_case(**kwargs)
        expected = compare_lif(case, "cpu", gradient, grad_scale, v_trace=v_trace)
        compare_lif(case, "torch", gradient, grad_scale, expected, v_trace=v_trace)
        if gradient == "exodus":
            compare_lif(case, "cpu", "bptt", expected=expected, v_trace=v_trace)
        spiking_examples.append(bool(expected[0].any()))

    check()
    # The inputs are scaled so that most examples spike: the comparison is not vacuous.
    assert len(spiking_examples) >= 50, len(spiking_examples)
    assert sum(spiking_examples) >= 0.7 * len(spiking_examples), spiking_examples


# ----------------------------------------------------------------------------- option grid

@pytest.mark.parametrize("surrogate", SURROGATES, ids=SURROGATE_IDS)
@pytest.mark.parametrize("max_spikes", [1, 3, None], ids=["single", "max3", "unlimited"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_lif_option_grid(dtype, reset, max_spikes, surrogate):
    """Every reset x spike mode x surrogate, per-neuron tau/threshold, v_min, both gradient modes."""
    amplitude = "moderate" if max_spikes == 1 else "large"
    case = make_lif_case(batch=3, time=30, features=(2, 3), dtype=dtype, seed=1, amplitude=amplitude,
                         reset=reset, v_min=-0.6, max_spikes=max_spikes, surrogate=surrogate)
    expected = compare_lif(case, "cpu", "exodus")
    compare_lif(case, "cpu", "slayer", grad_scale=0.5)
    spikes = expected[0]
    assert spikes.sum() > 0.1 * spikes.numel(), "inputs should make the neurons spike"
    assert bool((expected[1] == -0.6).any()), "v_min should clip at least once"
    if max_spikes is None:
        assert spikes.max() > 3, "unlimited multi-spike case should emit more than 3 spikes in some bin"
    elif max_spikes > 1:
        assert spikes.max() == max_spikes, "multi-spike case should saturate at max_spikes_per_bin"
    else:
        assert spikes.max() == 1


@pytest.mark.parametrize("norm_input", [False, True])
def test_lif_norm_input(norm_input):
    case = make_lif_case(batch=2, time=40, features=(4,), seed=3, norm_input=norm_input)
    expected = compare_lif(case, "cpu", "exodus")
    compare_lif(case, "cpu", "slayer", grad_scale=1.7)
    assert expected[0].sum() > 5


def test_iaf_alpha_one():
    """alpha = 1 exactly (IAF), including the gradient with respect to alpha at 1."""
    g = torch.Generator().manual_seed(4)
    x = randn((2, 25, 3), torch.float64, g, 0.6, 0.1).requires_grad_()
    alpha = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    theta = uniform((3,), torch.float64, g, 0.8, 1.2).requires_grad_()
    v0 = randn((2, 3), torch.float64, g, 0.3).requires_grad_()
    w = randn((2, 25, 3), torch.float64, g)
    results = []
    for fn, kw in ((F.lif, dict(backend="cpu")), (lif_ref, {})):
        spikes, v = fn(x, alpha, theta, v0, **kw)
        grads = torch.autograd.grad((spikes * w).sum() + (v * w.flip(1)).sum(), (x, alpha, theta, v0))
        results.append((spikes, v, grads))
    (s, v, grads), (s_ref, v_ref, grads_ref) = results
    assert_equal(s, s_ref, "spikes")
    assert_equal(v, v_ref, "v")
    assert s_ref.sum() > 5
    for name, got, exp in zip(("x", "alpha", "theta", "v0"), grads, grads_ref):
        assert_grad_close(got, exp, 1e-10, name)


def test_only_spikes_or_only_v_in_loss():
    """Backward with one output's gradient undefined (None) matches the reference."""
    case = make_lif_case(batch=2, time=20, features=(3,), seed=5)
    for pick in (0, 1):
        grads = []
        for fn, kw in ((F.lif, dict(backend="cpu")), (lif_ref, {})):
            out = fn(case.x, torch.exp(-1.0 / case.tau), case.threshold, case.v0, **kw)[pick]
            grads.append(torch.autograd.grad((out * case.w_v).sum(), case.leaves))
        for name, got, exp in zip(case.names(), *grads):
            assert_grad_close(got, exp, 1e-10, f"d/d{name} (output {pick})")


@settings(max_examples=40, deadline=None)
@given(kwargs=lif_case_kwargs(), trained=st.sampled_from([(), ("tau",), ("threshold",), ("tau", "threshold")]),
       surrogate=st.sampled_from(SURROGATES))
def test_spike_loss_paths_match_reference(kwargs, trained, surrogate):
    """Loss on the spikes only (no dL/dv), frozen or trained tau / threshold, single spikes, no v_min,
    no norm_input: the CPU backward's LEAN variants (with and without the parameter sums), which the
    v-in-the-loss tests never reach."""
    kwargs.update(v_min=None, norm_input=False, max_spikes=1, surrogate=surrogate)
    case = make_lif_case(**kwargs)
    tau = case.tau if "tau" in trained else case.tau.detach()
    theta = case.threshold if "threshold" in trained else case.threshold.detach()
    leaves = [case.x, *([tau] if "tau" in trained else []), *([theta] if "threshold" in trained else []),
              *([case.v0] if case.v0 is not None else [])]
    grads = []
    for fn, kw in ((F.lif, dict(backend="cpu")), (lif_ref, {})):
        spikes, _ = fn(case.x, torch.exp(-1.0 / tau), theta, case.v0, **case.options, **kw)
        grads.append(torch.autograd.grad((spikes * case.w_spikes).sum(), leaves))
    for i, (got, exp) in enumerate(zip(*grads)):
        assert_grad_close(got, exp, grad_rtol(case.x.dtype), f"leaf {i} (trained {trained})")


@pytest.mark.parametrize("trained", [(), ("tau",), ("threshold",), ("tau", "threshold")],
                         ids=["none", "tau", "threshold", "both"])
@pytest.mark.parametrize("norm_input", [False, True])
def test_frozen_parameters(trained, norm_input):
    """Parameters without requires_grad skip their reverse-scan work; the other gradients are unchanged."""
    case = make_lif_case(batch=2, time=25, features=(4,), seed=8, v_min=-0.5, norm_input=norm_input,
                         amplitude="large")
    tau = case.tau if "tau" in trained else case.tau.detach()
    theta = case.threshold if "threshold" in trained else case.threshold.detach()
    leaves = [case.x, *([tau] if "tau" in trained else []), *([theta] if "threshold" in trained else []), case.v0]
    for gradient, ref_mode in (("exodus", "exodus"), ("slayer", "slayer")):
        results = []
        for fn, kw in ((F.lif, dict(backend="cpu", gradient=gradient)), (lif_ref, dict(gradient=ref_mode))):
            spikes, v = fn(case.x, torch.exp(-1.0 / tau), theta, case.v0, **case.options, grad_scale=0.7, **kw)
            loss = (spikes * case.w_spikes).sum() + (v * case.w_v).sum()
            results.append((spikes.detach(), torch.autograd.grad(loss, leaves)))
        (spikes, grads), (_, grads_ref) = results
        assert spikes.sum() > 5
        for i, (got, exp) in enumerate(zip(grads, grads_ref)):
            assert_grad_close(got, exp, 1e-10, f"leaf {i} [{gradient}, trained {trained}]")
    leaky_leaves = [case.x, case.v0, *([tau] if "tau" in trained else [])]
    grads = [torch.autograd.grad((fn(case.x, torch.exp(-1.0 / tau), case.v0, norm_input=norm_input, **kw)
                                  * case.w_v).sum(), leaky_leaves)
             for fn, kw in ((F.leaky, dict(backend="cpu")), (leaky_ref, {}))]
    for i, (got, exp) in enumerate(zip(*grads)):
        assert_grad_close(got, exp, 1e-10, f"leaky leaf {i}")


def test_nan_input_propagates_like_reference():
    case = make_lif_case(batch=2, time=10, features=(3,), seed=6)
    x = case.x.detach().clone()
    x[0, 3, 1] = float("nan")
    alpha = torch.exp(-1.0 / case.tau.detach())
    got = F.lif(x, alpha, case.threshold.detach(), backend="cpu")
    expected = lif_ref(x, alpha, case.threshold.detach())
    for g, e in zip(got, expected):
        assert torch.equal(g.isnan(), e.isnan())
        assert torch.allclose(g, e, rtol=0, atol=0, equal_nan=True)
    assert bool(got[1][0, 3:, 1].isnan().all()) and not bool(got[0][0, 3:, 1].any())


# ----------------------------------------------------------------------------- leaky integrator

@settings(max_examples=40)
@given(batch=st.integers(1, 4), time=st.integers(1, 40), features=st.sampled_from(FEATURE_SHAPES),
       dtype=st.sampled_from([torch.float64, torch.float32]),
       alpha_kind=st.sampled_from(["scalar", "full", "broadcast"]), with_v0=st.booleans(), norm_input=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_leaky_matches_reference_property(batch, time, features, dtype, alpha_kind, with_v0, norm_input, seed):
    g = torch.Generator().manual_seed(seed)
    acc = acc_dtype(dtype)
    x = randn((batch, time, *features), dtype, g).requires_grad_()
    tau = uniform(param_shape(alpha_kind, features), acc, g, 1.0, 40.0).requires_grad_()
    v0 = randn((batch, *features), acc, g).requires_grad_() if with_v0 else None
    w = randn((batch, time, *features), acc, g)
    leaves = [t for t in (x, tau, v0) if t is not None]
    results = []
    for fn, kw in ((F.leaky, dict(backend="cpu")), (F.leaky, dict(backend="torch")), (leaky_ref, {})):
        v = fn(x, torch.exp(-1.0 / tau), v0, norm_input=norm_input, **kw)
        results.append((v.detach(), torch.autograd.grad((v.to(acc) * w).sum(), leaves)))
    v_ref, grads_ref = results[-1]
    for v, grads in results[:-1]:
        assert_equal(v, v_ref, "v")
        for name, got, exp in zip(("x", "tau", "v0"), grads, grads_ref):
            assert_grad_close(got, exp, grad_rtol(dtype), f"d/d{name}")


# ----------------------------------------------------------------------------- empty and strided inputs

@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 5, 3), (2, 5, 0), (0, 0, 2, 2)],
                         ids=["T0", "B0", "N0", "B0T0"])
def test_empty_inputs(shape, backend):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    features = shape[2:]
    alpha = torch.full(features, 0.9, dtype=torch.float64, requires_grad=True)
    theta = torch.ones(features, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn((shape[0], *features), dtype=torch.float64, requires_grad=True)
    spikes, v = F.lif(x, alpha, theta, v0, backend=backend)
    leaky_v = F.leaky(x, alpha, v0, backend=backend)
    for out in (spikes, v, leaky_v):
        assert out.shape == x.shape and out.dtype == x.dtype
    loss = spikes.sum() + v.sum() + leaky_v.sum()
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, (x, alpha, theta, v0), allow_unused=True)
        for name, grad in zip(("x", "alpha", "theta", "v0"), grads):
            assert grad is None or not bool(grad.any()), f"d/d{name} of an empty output must be zero"


@pytest.mark.parametrize("backend", [
    "torch",
    "cpu",
])
def test_empty_time_final_membrane_is_v0(backend):
    """With no time steps the final membrane is v0 itself: value and gradient (identity)."""
    x = torch.randn(2, 0, 3, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64)
    spikes, v = F.lif(x, 0.9, 1.0, v0, v_trace=False, backend=backend)
    assert spikes.shape == x.shape
    assert_equal(v.detach(), v0.detach(), "final membrane")
    (grad,) = torch.autograd.grad((v * w).sum(), v0)
    assert_equal(grad, w, "d(final membrane)/dv0")


def test_non_contiguous_inputs():
    """Transposed/sliced x, v0 and per-neuron parameters give the same values and gradients."""
    g = torch.Generator().manual_seed(7)
    base = randn((2, 3, 4, 50), torch.float64, g, 0.8, 0.3)  # (batch, f1, f2, time*2)
    x_strided = base.permute(0, 3, 2, 1)[:, ::2].requires_grad_()  # (2, 25, 4, 3), non-contiguous
    v0_strided = randn((2, 3, 4), torch.float64, g, 0.3).transpose(1, 2).requires_grad_()
    theta_strided = uniform((3, 4), torch.float64, g, 0.8, 1.2).t().requires_grad_()
    tau = uniform((4, 3), torch.float64, g, 3.0, 20.0).requires_grad_()
    assert not (x_strided.is_contiguous() or v0_strided.is_contiguous() or theta_strided.is_contiguous())
    w = randn(x_strided.shape, torch.float64, g)
    leaf_sets = [(x_strided, v0_strided, theta_strided),
                 tuple(t.detach().contiguous().requires_grad_() for t in (x_strided, v0_strided, theta_strided))]
    results = []
    for x, v0, theta in leaf_sets:
        for fn, kw in ((F.lif, dict(backend="cpu")), (lif_ref, {})):
            spikes, v = fn(x, torch.exp(-1.0 / tau), theta, v0, **kw)
            grads = torch.autograd.grad((spikes * w).sum() + (v * w.flip(1)).sum(), (x, v0, theta, tau))
            results.append((spikes, v, grads))
        leaky_v = F.leaky(x, torch.exp(-1.0 / tau), v0, backend="cpu")
        results.append((leaky_v, leaky_v, torch.autograd.grad((leaky_v * w).sum(), (x, v0, tau))))
    assert results[1][0].sum() > 10
    # strided vs contiguous: identical; fused vs reference: forward identical, grads close
    for strided, contiguous in zip(results[:3], results[3:]):
        assert_equal(strided[0], contiguous[0], "out0")
        assert_equal(strided[1], contiguous[1], "out1")
        for got, exp in zip(strided[2], contiguous[2]):
            assert_equal(got, exp, "grad")
    assert_equal(results[0][0], results[1][0], "spikes vs reference")
    assert_equal(results[0][1], results[1][1], "v vs reference")
    for got, exp in zip(results[0][2], results[1][2]):
        assert_grad_close(got, exp, 1e-10, "grad vs reference")


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("batch, features", [(1, (50,)), (3, (37,)), (9, (2, 3))])
def test_cpu_threads_and_tiles(threads, batch, features):
    """Several intra-op threads: batch rows or neuron tiles (with a SIMD tail) per thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = make_lif_case(batch=batch, time=15, features=features, seed=8, v_min=-0.5, max_spikes=2,
                             amplitude="large")
        expected = compare_lif(case, "cpu", "exodus")
        compare_lif(case, "cpu", "slayer", grad_scale=0.5)
        assert expected[0].max() == 2
        v_kernel = F.leaky(case.x, 0.8, case.v0, backend="cpu")
        assert_equal(v_kernel, leaky_ref(case.x, 0.8, case.v0), "leaky")
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- GPU

@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gradient", ["exodus", "slayer"])
def test_cupy_matches_reference(gradient, dtype):
    for i, surrogate in enumerate(SURROGATES):
        case = make_lif_case(batch=3, time=30, features=(4, 5), dtype=dtype, seed=10 + i, surrogate=surrogate,
                             reset=("subtract", "zero")[i % 2], max_spikes=(1, 2, None)[i % 3],
                             v_min=-0.5 if i % 2 else None)
        for name in ("x", "tau", "threshold", "v0", "w_spikes", "w_v"):
            tensor = getattr(case, name)
            moved = tensor.detach().cuda()
            setattr(case, name, moved.requires_grad_() if tensor.requires_grad else moved)
        compare_lif(case, "cupy", gradient, grad_scale=0.8)


@pytest.mark.parametrize("dtype, time", [(torch.float32, 1031), (torch.float64, 523)], ids=["f32", "f64"])
def test_large_outputs_use_streaming_stores(dtype, time):
    """Outputs of >= 16 MiB are written with non-temporal stores (cuda/cpu_drivers.cpp); rows of 4099
    neurons are not vector-aligned, so the plain-store edges are exercised too. Same results."""
    g = torch.Generator().manual_seed(11)
    neurons = 4099
    assert time * neurons * torch.finfo(dtype).bits // 8 >= 16 << 20
    x = randn((1, time, neurons), dtype, g, 0.5, 0.1).requires_grad_()
    alpha = uniform((neurons,), dtype, g, 0.8, 0.99)
    w = randn((1, time, neurons), dtype, g)
    results = []
    for kw in (dict(backend="cpu"), dict(backend="torch")):
        spikes, v = F.lif(x, alpha, 1.0, v_trace=True, **kw)
        leak = F.leaky(x, alpha, **kw)
        grad, = torch.autograd.grad((spikes * w).sum() + (v * w).sum() + (leak * w.flip(1)).sum(), x)
        results.append((spikes.detach(), v.detach(), leak.detach(), grad))
    (s, v, leak, grad), (s_ref, v_ref, leak_ref, grad_ref) = results
    assert_equal(s, s_ref, "spikes")
    assert_equal(v, v_ref, "v")
    assert_equal(leak, leak_ref, "leaky")
    assert_grad_close(grad, grad_ref, grad_rtol(dtype), "d/dx")
    assert 0.01 < float(s.mean()) < 0.5
