"""Plain-PyTorch reference of the neurons: short, obvious, slow — the oracle.

``lif_ref`` / ``leaky_ref`` loop over time with ordinary tensor ops, so autograd
through them is BPTT (DESIGN.md §1): ``gradient="exodus"`` (or ``"bptt"``)
differentiates through the reset, ``gradient="slayer"`` detaches it and scales the
surrogate by ``grad_scale``. The fused ops in ``exodus.functional`` are tested
against these functions; the "torch" backend *is* these functions.

Shapes: x (batch, time, *features); alpha, theta broadcast to features;
v0 (batch, *features). Half types are computed in float32.
"""
from __future__ import annotations

from typing import Optional

import torch

from .surrogate import SingleExponential, Surrogate


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Math dtype for a storage dtype: float64 stays, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Spike(torch.autograd.Function):
    """a = S(h) with da/dh := sigma and da/dtheta := -sigma (DESIGN.md §1)."""

    @staticmethod
    def forward(ctx, h, theta, max_spikes, surrogate, scale):
        ctx.save_for_backward(h, theta)
        ctx.surrogate, ctx.scale = surrogate, scale
        if max_spikes == 1:
            return (h >= theta).to(h.dtype)
        count = torch.floor(h / theta)
        if max_spikes is not None:
            count = torch.clamp(count, max=float(max_spikes))
        return torch.where(h >= theta, count, torch.zeros_like(h))

    @staticmethod
    def backward(ctx, grad):
        h, theta = ctx.saved_tensors
        sigma = ctx.surrogate.derivative(h, theta) * ctx.scale
        return grad * sigma, -grad * sigma, None, None, None


def spike_ref(h, theta, max_spikes_per_bin=1, surrogate: Optional[Surrogate] = None, scale=1.0):
    """Spike count of a bin, differentiable through the surrogate. theta broadcast to h."""
    surrogate = surrogate or SingleExponential()
    return _Spike.apply(h, theta.expand_as(h), max_spikes_per_bin, surrogate, scale)


def spike_reset_ref(h, theta, *, reset, v_min, max_spikes_per_bin, surrogate, detach, scale):
    """Spike count a_t = S(h_t; theta) and post-reset membrane v_t (DESIGN.md §1); theta may be the
    adaptive threshold of §4. detach: SLAYER mode (the reset carries no gradient)."""
    a = spike_ref(h, theta, max_spikes_per_bin, surrogate, scale)
    if reset == "subtract":
        r = h - theta * (a.detach() if detach else a)
    else:
        fired = spike_ref(h, theta, 1, surrogate, scale)
        r = h * (1 - (fired.detach() if detach else fired))
    v = r if v_min is None else torch.where(r <= v_min, torch.full_like(r, v_min), r)
    return a, v


def lif_ref(
    x: torch.Tensor,
    alpha,
    theta,
    v0: Optional[torch.Tensor] = None,
    *,
    reset: str = "subtract",
    v_min: Optional[float] = None,
    max_spikes_per_bin: Optional[int] = 1,
    surrogate: Optional[Surrogate] = None,
    norm_input: bool = False,
    gradient: str = "exodus",
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LIF/IAF scan. Returns (spikes, v): both (batch, time, *features), v post-reset."""
    acc = acc_dtype(x.dtype)
    xs = x.to(acc)
    alpha = torch.as_tensor(alpha, dtype=acc, device=x.device)
    theta = torch.as_tensor(theta, dtype=acc, device=x.device)
    state = (xs.shape[0], *xs.shape[2:])
    v = xs.new_zeros(state) if v0 is None else v0.to(acc).expand(state)
    detach = gradient == "slayer"
    scale = grad_scale if detach else 1.0
    spikes, trace = [], []
    for x_t in xs.unbind(1):  # unbind, not xs[:, t]: one backward node for all steps, O(T) BPTT
        u = (1 - alpha) * x_t if norm_input else x_t
        h = alpha * v + u
        a, v = spike_reset_ref(h, theta, reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes_per_bin,
                               surrogate=surrogate, detach=detach, scale=scale)
        spikes.append(a)
        trace.append(v)
    if not spikes:
        return x * 0, x * 0  # empty, but attached to the graph like any op's output
    return torch.stack(spikes, 1).to(x.dtype), torch.stack(trace, 1).to(x.dtype)


def leaky_ref(x: torch.Tensor, alpha, v0: Optional[torch.Tensor] = None, *, norm_input: bool = False) -> torch.Tensor:
    """Leaky integrator v_t = alpha v_{t-1} + u_t. Returns v, (batch, time, *features)."""
    acc = acc_dtype(x.dtype)
    xs = x.to(acc)
    alpha = torch.as_tensor(alpha, dtype=acc, device=x.device)
    state = (xs.shape[0], *xs.shape[2:])
    v = xs.new_zeros(state) if v0 is None else v0.to(acc).expand(state)
    trace = []
    for x_t in xs.unbind(1):
        v = alpha * v + ((1 - alpha) * x_t if norm_input else x_t)
        trace.append(v)
    if not trace:
        return x * 0
    return torch.stack(trace, 1).to(x.dtype)


def adaptive_lif_ref(
    x: torch.Tensor,
    alpha,
    theta,
    rho=0.0,
    beta=0.0,
    gamma=0.0,
    zeta=0.0,
    eta=0.0,
    v0: Optional[torch.Tensor] = None,
    w0: Optional[torch.Tensor] = None,
    *,
    weight_rec: Optional[torch.Tensor] = None,
    a0: Optional[torch.Tensor] = None,
    reset: str = "subtract",
    v_min: Optional[float] = None,
    max_spikes_per_bin: Optional[int] = 1,
    surrogate: Optional[Surrogate] = None,
    norm_input: bool = False,
    gradient: str = "exodus",
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-state adaptive neuron (DESIGN.md §4), optionally recurrent (§5). Returns (spikes, v, w),
    each (batch, time, *features), v post-reset.

    theta_t = theta + beta w_{t-1};  u_t = c (x_t + M a_{t-1} - gamma w_{t-1}), c = 1 - alpha with
    norm_input, else 1;  h_t = alpha v_{t-1} + u_t;  spike and reset as lif_ref at theta_t;
    w_t = rho w_{t-1} + zeta h_t + eta a_t. weight_rec M: (N, N) with features (N,); a0: spikes
    before the first step, (batch, N), default 0.
    """
    acc = acc_dtype(x.dtype)
    xs = x.to(acc)

    def param(value):
        return torch.as_tensor(value, dtype=acc, device=x.device)

    alpha, theta, rho, beta, gamma, zeta, eta = map(param, (alpha, theta, rho, beta, gamma, zeta, eta))
    state = (xs.shape[0], *xs.shape[2:])
    v = xs.new_zeros(state) if v0 is None else v0.to(acc).expand(state)
    w = xs.new_zeros(state) if w0 is None else w0.to(acc).expand(state)
    a = xs.new_zeros(state) if a0 is None else a0.to(acc).expand(state)
    detach = gradient == "slayer"
    scale = grad_scale if detach else 1.0
    spikes, v_trace, w_trace = [], [], []
    for x_t in xs.unbind(1):
        if weight_rec is not None:
            x_t = x_t + a @ weight_rec.to(acc).t()
        theta_t = theta + beta * w
        drive = x_t - gamma * w
        u = (1 - alpha) * drive if norm_input else drive
        h = alpha * v + u
        a, v = spike_reset_ref(h, theta_t, reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes_per_bin,
                               surrogate=surrogate, detach=detach, scale=scale)
        w = rho * w + zeta * h + eta * a
        spikes.append(a)
        v_trace.append(v)
        w_trace.append(w)
    if not spikes:
        return x * 0, x * 0, x * 0
    return (torch.stack(spikes, 1).to(x.dtype), torch.stack(v_trace, 1).to(x.dtype),
            torch.stack(w_trace, 1).to(x.dtype))
