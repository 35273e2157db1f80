"""Finite-difference checks of the fused ops (float64, CPU kernels).

Why only these configurations: spikes are piecewise constant in the input, and the
backward pass replaces their zero/undefined derivative by a surrogate. Finite
differences of a spiking LIF therefore do not measure what the backward computes;
that backward is checked against autograd of the reference in test_oracle.py.
Here we check the parts where the derivative *is* the true derivative:

* leaky (a linear filter, smooth in x, alpha and v0);
* LIF in a regime where no neuron spikes and no pre-reset membrane comes near the
  surrogate's support (Heaviside surrogate: sigma is exactly 0 below theta - window),
  so the neuron is the linear leaky filter plus, with v_min, a clip whose kink is
  kept far from every value. Then d(spikes)/d(anything) = 0 = finite difference, and
  the membrane path (incl. alpha, norm_input, v0 and the clip mask) is checked exactly.

No gradgradcheck: the backward custom op has no derivative of its own (a surrogate
gradient has no meaningful second derivative); double backward must raise instead
of silently returning zeros, which is tested below.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from conftest import randn, uniform
from exodus import functional as F
from exodus.reference import leaky_ref, lif_ref
from exodus.surrogate import Heaviside

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("norm_input", [False, True])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_gradcheck_leaky(per_neuron, norm_input):
    g = torch.Generator().manual_seed(0)
    x = randn((2, 12, 3), F64, g).requires_grad_()
    alpha = uniform((3,) if per_neuron else (), F64, g, 0.5, 0.95).requires_grad_()
    v0 = randn((2, 3), F64, g).requires_grad_()
    assert gradcheck(lambda x, a, v: F.leaky(x, a, v, norm_input=norm_input, backend="cpu"), (x, alpha, v0))


WINDOW = 0.2
THETA = 1.0
V_MIN = -0.4


def quiet_input(seed: int, norm_input: bool):
    """Input that never brings the membrane within reach of the Heaviside surrogate support
    [theta - window, inf) and, with v_min, clips often but never within 1e-3 of the kink."""
    g = torch.Generator().manual_seed(seed)
    gain = 5.0 if norm_input else 1.0
    x = randn((2, 12, 3), F64, g, 0.15 * gain, -0.1 * gain)
    alpha = uniform((3,), F64, g, 0.6, 0.9)
    v0 = randn((2, 3), F64, g, 0.2)
    return x, alpha, v0


def pre_reset_membrane(x, alpha, v0, v, norm_input):
    """h_t = alpha v_{t-1} + u_t from the reference's post-reset trace v (DESIGN.md §1)."""
    previous = torch.cat([v0.unsqueeze(1), v[:, :-1]], 1)
    u = (1 - alpha) * x if norm_input else x
    return alpha * previous + u


@pytest.mark.parametrize("norm_input", [False, True])
@pytest.mark.parametrize("v_min", [None, V_MIN])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_gradcheck_lif_subthreshold(reset, v_min, norm_input):
    x, alpha, v0 = quiet_input(1, norm_input)
    theta = torch.full((3,), THETA, dtype=F64)
    options = dict(reset=reset, v_min=v_min, surrogate=Heaviside(window=WINDOW), norm_input=norm_input)

    # The regime is what the test claims (checked on the reference, not assumed).
    spikes, v = lif_ref(x, alpha, theta, v0, **options)
    h = pre_reset_membrane(x, alpha, v0, v, norm_input)
    assert not bool(spikes.any())
    assert h.max() < THETA - WINDOW - 0.05, "too close to the surrogate support"
    if v_min is not None:
        clipped = h < v_min
        assert 0.1 < clipped.double().mean() < 0.9, "the clip should be active for some but not all steps"
        assert (h - v_min).abs().min() > 1e-3, "too close to the kink of the clip"

    def fn(x, alpha, theta, v0):
        return F.lif(x, alpha, theta, v0, backend="cpu", **options)

    inputs = tuple(t.clone().requires_grad_() for t in (x, alpha, theta, v0))
    assert gradcheck(fn, inputs)


def test_double_backward_raises():
    g = torch.Generator().manual_seed(2)
    x = randn((2, 8, 3), F64, g, 0.8, 0.3).requires_grad_()
    spikes, v = F.lif(x, 0.9, backend="cpu")
    (grad_x,) = torch.autograd.grad((spikes + v).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        torch.autograd.grad(grad_x.sum(), x)


def test_gradcheck_matches_reference_jacobian_leaky():
    """Sanity check of the reference itself: leaky_ref passes gradcheck too (the oracle is smooth)."""
    g = torch.Generator().manual_seed(3)
    x = randn((1, 10, 2), F64, g).requires_grad_()
    alpha = uniform((2,), F64, g, 0.5, 0.95).requires_grad_()
    assert gradcheck(lambda x, a: leaky_ref(x, a, norm_input=True), (x, alpha))
