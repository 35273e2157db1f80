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
        a = spike_ref(h, theta, max_spikes_per_bin, surrogate, scale)
        if reset == "subtract":
            r = h - theta * (a.detach() if detach else a)
        else:
            fired = spike_ref(h, theta, 1, surrogate, scale)
            r = h * (1 - (fired.detach() if detach else fired))
        v = r if v_min is None else torch.where(r <= v_min, torch.full_like(r, v_min), r)
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
