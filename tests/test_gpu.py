"""The cupy backend on a real GPU: against the CPU backend (same step functions) and the
reference, for every storage dtype, on non-default streams and on a second device.

Skipped without CUDA + CuPy. NOTE: these tests have never run on the machines exodus is
developed on (no GPU); the GPU kernels are otherwise checked by tests/test_cuda_sources.py
(nvcc / NVRTC) and tests/test_emulation.py (the kernels executed on the CPU).
"""
from __future__ import annotations

import pytest
import torch

from exodus import functional as F
from exodus import surrogate as S


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    try:
        import cupy  # noqa: F401
    except Exception as error:  # ImportError, or a broken CUDA install
        return f"needs CuPy (import failed: {error})"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["float64", "float32", "float16", "bfloat16"]
# Normwise relative tolerance of the input gradient (stored in the input dtype) and of the
# parameter / state gradients (always in the math dtype). GPU and CPU run the same math in the
# same dtype; they differ only in exp()'s last bit and in the order of the batch sum.
GRAD_X_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
GRAD_PARAM_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}

LIF_OPTIONS = {
    "default": dict(),
    "zero-vmin-slayer": dict(reset="zero", v_min=-0.5, gradient="slayer", grad_scale=0.5,
                             surrogate=S.FastSigmoid(slope=5.0)),
    "multi3-norm": dict(max_spikes_per_bin=3, norm_input=True, surrogate=S.PeriodicExponential()),
    "unlimited-final-v": dict(max_spikes_per_bin=None, v_trace=False, surrogate=S.Gaussian(sigma=0.4)),
    "heaviside": dict(surrogate=S.Heaviside(window=0.5)),
    "atan-vmin": dict(v_min=-1.0, surrogate=S.ATan()),
}


def _lif_problem(dtype, options, batch=3, time=25, features=(7, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    amplitude = 3.0 if options.get("max_spikes_per_bin", 1) != 1 or options.get("norm_input") else 0.8
    x = (torch.randn(batch, time, *features, generator=g, dtype=torch.float64) * amplitude + 0.3).to(dtype)
    alpha = (0.8 + 0.19 * torch.rand(features, generator=g, dtype=torch.float64)).to(acc)
    threshold = (0.7 + 0.7 * torch.rand(features, generator=g, dtype=torch.float64)).to(acc)
    v0 = (0.4 * torch.randn(batch, *features, generator=g, dtype=torch.float64)).to(acc)
    w_spikes = torch.randn(batch, time, *features, generator=g, dtype=torch.float64).to(dtype)
    v_shape = (batch, *features) if options.get("v_trace", True) is False else (batch, time, *features)
    w_v = torch.randn(v_shape, generator=g, dtype=torch.float64).to(dtype)
    return [x, alpha, threshold, v0], (w_spikes, w_v)


def _run_lif(leaves, weights, device, backend, options):
    leaves = [t.detach().to(device).requires_grad_() for t in leaves]
    spikes, v = F.lif(*leaves, backend=backend, **options)
    loss = (spikes * weights[0].to(device)).sum() + (v * weights[1].to(device)).sum()
    grads = torch.autograd.grad(loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss, leaves)
    return [t.detach().cpu() for t in (spikes, v, *grads)]


def _assert_rel(got, expected, rtol, name):
    got, expected = got.double(), expected.double()
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item()
    assert error <= rtol * scale, f"{name}: max abs error {error:.3e}, max |expected| {scale:.3e}"


def _compare(got, expected, dtype, exact_forward=True):
    names = ("spikes", "v", "grad_x", "grad_alpha", "grad_threshold", "grad_v0")
    for name, a, b in zip(names[:2], got[:2], expected[:2]):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if exact_forward:
            assert torch.equal(a, b), f"{name} not bitwise equal"
    _assert_rel(got[2], expected[2], GRAD_X_RTOL[dtype], "grad_x")
    for name, a, b in zip(names[3:], got[3:], expected[3:]):
        _assert_rel(a, b, GRAD_PARAM_RTOL[dtype], name)


# ----------------------------------------------------------------------------- cupy vs cpu

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("options", LIF_OPTIONS.values(), ids=LIF_OPTIONS.keys())
def test_lif_cupy_matches_cpu(dtype, options):
    """Same step functions, same math dtype: forward bitwise equal (half types are stored with
    round-to-nearest-even on both), gradients equal up to exp()'s last bit."""
    leaves, weights = _lif_problem(dtype, options)
    on_cpu = _run_lif(leaves, weights, "cpu", "cpu", options)
    on_gpu = _run_lif(leaves, weights, "cuda", "cupy", options)
    assert on_cpu[0].any(), "the problem produces no spikes"
    _compare(on_gpu, on_cpu, dtype)


@pytest.mark.parametrize("options", LIF_OPTIONS.values(), ids=LIF_OPTIONS.keys())
def test_lif_cupy_matches_reference_on_gpu(options):
    leaves, weights = _lif_problem(torch.float64, options)
    _compare(_run_lif(leaves, weights, "cuda", "cupy", options),
             _run_lif(leaves, weights, "cuda", "torch", options), torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_input", [False, True])
def test_leaky_cupy_matches_cpu(dtype, norm_input):
    g = torch.Generator().manual_seed(1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(3, 30, 77, generator=g, dtype=torch.float64).to(dtype)
    alpha = (0.5 + 0.49 * torch.rand(77, generator=g, dtype=torch.float64)).to(acc)
    v0 = torch.randn(3, 77, generator=g, dtype=torch.float64).to(acc)
    w = torch.randn(3, 30, 77, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for device, backend in (("cpu", "cpu"), ("cuda", "cupy")):
        leaves = [t.to(device).requires_grad_() for t in (x, alpha, v0)]
        v = F.leaky(*leaves, norm_input=norm_input, backend=backend)
        grads = torch.autograd.grad((v * w.to(device)).sum().float(), leaves)
        results.append([t.detach().cpu() for t in (v, *grads)])
    (v_gpu, *g_gpu), (v_cpu, *g_cpu) = results[1], results[0]
    assert torch.equal(v_gpu, v_cpu)
    _assert_rel(g_gpu[0], g_cpu[0], GRAD_X_RTOL[dtype], "grad_x")
    _assert_rel(g_gpu[1], g_cpu[1], GRAD_PARAM_RTOL[dtype], "grad_alpha")
    _assert_rel(g_gpu[2], g_cpu[2], GRAD_PARAM_RTOL[dtype], "grad_v0")


def test_many_blocks_and_non_contiguous_input():
    """B*N far beyond one block, input given as a transposed (non-contiguous) view."""
    options = dict()
    leaves, weights = _lif_problem(torch.float32, options, batch=4, time=6, features=(300, 61))
    x_t = leaves[0].transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous
    assert not x_t.is_contiguous()
    on_cpu = _run_lif(leaves, weights, "cpu", "cpu", options)
    on_gpu = _run_lif([x_t, *leaves[1:]], weights, "cuda", "cupy", options)
    _compare(on_gpu, on_cpu, torch.float32)


# ----------------------------------------------------------------------------- streams and devices

@pytest.mark.skipif(not hasattr(torch.cuda, "_sleep"), reason="needs torch.cuda._sleep to keep a stream busy")
def test_runs_on_the_current_stream():
    """The kernels must be launched on torch's current stream: the input is produced on a
    side stream behind a long sleep, so a launch on any other stream reads it too early."""
    options = LIF_OPTIONS["zero-vmin-slayer"]
    leaves, weights = _lif_problem(torch.float32, options, batch=8, time=50, features=(64, 32))
    expected = _run_lif(leaves, weights, "cuda", "cupy", options)

    source = [t.cuda() for t in leaves]
    w = [t.cuda() for t in weights]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
        inputs = [(t * 1.0).requires_grad_() for t in source]  # written on the side stream after the sleep
        spikes, v = F.lif(*inputs, backend="cupy", **options)
        loss = (spikes * w[0]).sum() + (v * w[1]).sum()
        grads = torch.autograd.grad(loss, inputs)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    got = [t.detach().cpu() for t in (spikes, v, *grads)]
    _compare(got, expected, torch.float32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_while_first_is_current():
    """Tensors on cuda:1 while cuda:0 is current: compile, launch and stream must follow the tensors."""
    options = LIF_OPTIONS["multi3-norm"]
    leaves, weights = _lif_problem(torch.float32, options)
    expected = _run_lif(leaves, weights, "cpu", "cpu", options)
    with torch.cuda.device(0):
        got = _run_lif(leaves, weights, "cuda:1", "cupy", options)
    _compare(got, expected, torch.float32)
    with torch.cuda.device(1):  # and the other way round, after cuda:1's module is cached
        got = _run_lif(leaves, weights, "cuda:0", "cupy", options)
    _compare(got, expected, torch.float32)


def test_auto_backend_uses_cupy_on_cuda():
    from exodus import backends
    assert backends.resolve("auto", torch.device("cuda")) == "cupy"


def test_cupy_backend_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="backend='cupy' needs CUDA tensors"):
        F.lif(torch.zeros(2, 3, 4), 0.9, backend="cupy")


# ----------------------------------------------------------------------------- adaptive / recurrent

ADAPTIVE_CASES = {
    "alif": dict(couplings=(1.5, 0.0, 0.0, 0.05), recurrent=False, options=dict()),
    "adlif-recurrent": dict(couplings=(0.0, 1.0, 0.3, 0.8), recurrent=True, options=dict(norm_input=True)),
    "lif-recurrent-zero": dict(couplings=(0.0, 0.0, 0.0, 0.0), recurrent=True, options=dict(reset="zero", v_min=-0.5)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(ADAPTIVE_CASES), ids=list(ADAPTIVE_CASES))
def test_adaptive_cupy_matches_cpu(case, dtype):
    """exodus.functional.adaptive_lif on cupy (per-step launches + cuBLAS when recurrent) against the
    CPU backend on the same values (half types against the CPU in float32)."""
    spec = ADAPTIVE_CASES[case]
    g = torch.Generator().manual_seed(3)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    B, T, N = 3, 30, 77
    amplitude = 4.0 if spec["options"].get("norm_input") else 0.8
    x = (torch.randn(B, T, N, generator=g, dtype=torch.float64) * amplitude + 0.3).to(dtype)
    leaves = {
        "alpha": (0.8 + 0.19 * torch.rand(N, generator=g, dtype=torch.float64)).to(acc),
        "threshold": (0.7 + 0.7 * torch.rand(N, generator=g, dtype=torch.float64)).to(acc),
        "rho": (0.9 + 0.09 * torch.rand(N, generator=g, dtype=torch.float64)).to(acc),
        "v0": (0.4 * torch.randn(B, N, generator=g, dtype=torch.float64)).to(acc),
    }
    weight = (torch.randn(N, N, generator=g, dtype=torch.float64) * 0.5 / N ** 0.5).to(acc) if spec["recurrent"] else None
    weights = [torch.randn(B, T, N, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]

    def run(device, storage):
        xs = x.to(storage).to(device).requires_grad_()
        ls = {k: v.to(device).requires_grad_() for k, v in leaves.items()}
        ws = weight.to(device).requires_grad_() if weight is not None else None
        s, v, w = F.adaptive_lif(xs, ls["alpha"], ls["threshold"], ls["rho"], *spec["couplings"], ls["v0"],
                                 weight_rec=ws, backend="cupy" if device == "cuda" else "cpu", **spec["options"])
        loss = sum((o.to(acc) * wt.to(device).to(acc)).sum() for o, wt in zip((s, v, w), weights))
        inputs = [xs, *ls.values()] + ([ws] if ws is not None else [])
        grads = torch.autograd.grad(loss, inputs)
        return [o.detach().cpu().to(acc) for o in (s, v, w)], [gr.cpu().to(acc) for gr in grads]

    cpu_storage = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    out_gpu, grad_gpu = run("cuda", dtype)
    out_cpu, grad_cpu = run("cpu", cpu_storage)
    if dtype in (torch.float32, torch.float64):
        for a, b in zip(out_gpu, out_cpu):
            assert torch.equal(a, b)
    for a, b in zip(grad_gpu, grad_cpu):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= GRAD_PARAM_RTOL[dtype] * max(scale, 1e-30) * 10
