"""The kernels' surrogates (cuda/surrogates.cuh) against their plain-PyTorch twins (exodus/surrogate.py),
through the compiled CPU code path the backward loops use; and the accuracy of the inlined float exp
of the CPU float build."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from conftest import SURROGATES as BASE_SURROGATES
from exodus import surrogate as S
from exodus.backends import cpu

# Every kind (the suite's shared list) and two truncated ones (the band test of neuron_banded_sigma).
SURROGATES = [*BASE_SURROGATES, S.Truncated(S.SingleExponential(0.5, 1.0), 0.3), S.Truncated(S.FastSigmoid(100.0), 0.05)]


def kernel_sigma(surrogate: S.Surrogate, h: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    library = cpu._load(h.dtype)
    c_acc = ctypes.c_float if h.dtype == torch.float32 else ctypes.c_double
    h, theta = h.contiguous(), theta.contiguous()
    out = torch.empty_like(h)
    p0, p1, p2, band = surrogate.kernel_params()
    library.exodus_cpu_surrogate_sigma(ctypes.c_void_p(h.data_ptr()), ctypes.c_void_p(theta.data_ptr()),
                                       ctypes.c_void_p(out.data_ptr()), ctypes.c_longlong(h.numel()),
                                       ctypes.c_int(surrogate.kind), c_acc(p0), c_acc(p1), c_acc(p2), c_acc(band))
    return out


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__ + str(s.kind))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_surrogates_match_reference(surrogate, dtype):
    g = torch.Generator().manual_seed(surrogate.kind)
    n = 4099  # not a multiple of the vector width
    theta = (0.2 + 2 * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)
    h = (theta.double() * (4 * torch.rand(n, generator=g, dtype=torch.float64) - 1.5)).to(dtype)
    got = kernel_sigma(surrogate, h, theta)
    want = surrogate.derivative(h, theta)
    assert (want != 0).sum() > 100 and (want == 0).sum() < n  # the cases are not trivial
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-14, atol=0.0)
    else:
        # The twin rounds its Python-float constants (2 s^2, k / (sqrt(2 pi) s)) in double, the kernel in
        # float32 from float32 parameters: an argument of exp that differs by ~1 ulp moves exp by
        # |argument| ulp (up to ~30 here). The exp itself is checked to 1 ulp below, on exact arguments.
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2.0 ** -140)
    assert torch.equal(got == 0, want == 0)  # truncation and Heaviside give exact zeros alike


def test_cpu_float_exp_is_within_one_ulp():
    """sigma of SingleExponential(width 1, scale 1) at theta = 1 is exp(-|h - 1|): sweep the argument over
    [-110, 0], through the normal range, gradual underflow and 0, against float64 exp rounded to float32."""
    d = torch.cat([torch.linspace(0, 110, 200_003, dtype=torch.float32), torch.logspace(-30, 0, 2001),
                   torch.tensor([87.3365, 87.3366, 103.27, 103.28, 103.98, 104.0, 104.1])]).to(torch.float32)
    h = (1.0 + d).to(torch.float32)
    arg = -(h - 1.0).abs()  # the kernel's argument, formed in float32 as the kernel forms it
    got = kernel_sigma(S.SingleExponential(1.0, 1.0), h, torch.ones_like(h)).double().numpy()
    exact = np.exp(arg.double().numpy())
    normal = exact >= 2.0 ** -126
    ulp = np.spacing(exact[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[normal] - exact[normal]) / ulp) <= 1.0
    assert np.max(np.abs(got[~normal] - exact[~normal])) <= 2.0 ** -149  # denormals: one rounding
    assert (got[~normal] > 0).any() and (got[~normal] == 0).any()  # the sweep reaches both
    special = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float32)
    out = kernel_sigma(S.SingleExponential(1.0, 1.0), special, torch.ones_like(special))
    assert torch.isnan(out[0]) and out[1] == 0 and out[2] == 0
