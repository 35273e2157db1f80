"""The two recurrent forward paths of exodus.functional.adaptive against each other and the reference:
the fused one (recurrent input summed inside the kernel over the spiking neurons; one launch) and the
per-step one (one launch per step with torch's matrix product in between; what GPU layers wider than
launch.MAX_RECURRENT_NEURONS take). Both on the CPU driver and on the GPU kernels under host emulation.
"""
from __future__ import annotations

import pytest
import torch

from conftest import assert_grad_close, grad_rtol
from exodus import functional as F
from exodus.functional import adaptive
from exodus.reference import adaptive_lif_ref

pytestmark = pytest.mark.usefixtures("single_thread")


def _problem(dtype, B=3, T=30, N=37, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, offset=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)

    # w stays >= 0 (zeta, eta, w0 >= 0 and h mostly > 0), so the adaptive threshold stays > 0.
    leaves = dict(x=randn(B, T, N, scale=0.8, offset=0.35), tau=5 + 20 * torch.rand(N, generator=g, dtype=dtype),
                  threshold=0.8 + 0.4 * torch.rand(N, generator=g, dtype=dtype),
                  tau_adapt=20 + 100 * torch.rand(N, generator=g, dtype=dtype), beta=randn(N, scale=0.3).abs(),
                  gamma=randn(N, scale=0.2), zeta=randn(N, scale=0.02).abs(), eta=randn(N, scale=0.2).abs(),
                  v0=randn(B, N, scale=0.3), w0=randn(B, N, scale=0.2).abs(), weight_rec=randn(N, N, scale=0.5 / N ** 0.5),
                  a0=(torch.rand(B, N, generator=g) > 0.7).to(dtype))
    weights = [randn(B, T, N) for _ in range(3)]
    return leaves, weights


def _run(function, leaves, weights, **options):
    leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    outputs = function(leaves["x"], torch.exp(-1 / leaves["tau"]), leaves["threshold"],
                       torch.exp(-1 / leaves["tau_adapt"]), leaves["beta"], leaves["gamma"], leaves["zeta"],
                       leaves["eta"], leaves["v0"], leaves["w0"], weight_rec=leaves["weight_rec"], a0=leaves["a0"],
                       **options)
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return [o.detach() for o in outputs], dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize("backend", ["cpu", "emulation"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_fused_and_per_step_recurrent_forward_agree(backend, dtype, monkeypatch):
    leaves, weights = _problem(dtype)
    expected, expected_grads = _run(adaptive_lif_ref, leaves, weights)
    fused, fused_grads = _run(F.adaptive_lif, leaves, weights, backend=backend)
    monkeypatch.setattr(adaptive, "_fused_recurrent", lambda backend, neurons: False)
    stepped, stepped_grads = _run(F.adaptive_lif, leaves, weights, backend=backend)
    assert bool(expected[0].any()) and not bool(expected[0].all()), "the neurons should spike sometimes"
    # Spikes equal; membranes to rounding (the sums of M a_{t-1} differ in order), in both paths.
    for got in (fused, stepped):
        assert torch.equal(got[0], expected[0])
        for g, e in zip(got[1:], expected[1:]):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    for name, e in expected_grads.items():
        assert_grad_close(fused_grads[name], e, grad_rtol(dtype), f"d/d{name} fused [{backend}]")
        assert_grad_close(stepped_grads[name], e, grad_rtol(dtype), f"d/d{name} per step [{backend}]")


def test_fused_recurrent_cpu_equals_gpu_kernel_bitwise():
    """The CPU driver and the GPU kernel (host emulation) sum the recurrent input in the same order."""
    leaves, weights = _problem(torch.float32, B=2, T=25, N=70, seed=3)
    cpu, _ = _run(F.adaptive_lif, leaves, weights, backend="cpu")
    emulated, _ = _run(F.adaptive_lif, leaves, weights, backend="emulation")
    for a, b in zip(cpu, emulated):
        assert torch.equal(a, b)


def test_gpu_width_limit_is_checked():
    from exodus.backends import launch
    with pytest.raises(ValueError, match="at most"):
        launch.adaptive_recurrent_forward_plan(torch.zeros(1, 2, launch.MAX_RECURRENT_NEURONS + 1), None, None, None,
                                               None, None, None, None, None, None, None, launch.LifOptions(), True)
