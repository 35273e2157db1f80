"""Target currents for RLS training (DESIGN.md §9): sinusoids around each neuron's mean current,
or currents derived from recorded firing rates through the Ricciardi f–I curve.

Targets are (tasks, n_learn, N): one value per RLS update, at times
stim_off + j learn_every, j = 1 .. n_learn (ms).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .network import NetworkParams


def learning_times(params: NetworkParams) -> torch.Tensor:
    """(n_learn,) float64 times (ms) of the RLS updates: stim_off + j learn_every, j = 1 .. n_learn."""
    return params.stim_off + params.learn_every * torch.arange(1, params.n_learn + 1, dtype=torch.float64)


def sinusoid_targets(params: NetworkParams, u_mean: torch.Tensor, generator: torch.Generator, n_tasks: int = 1,
                     amplitude: float = 0.5, period: float = 1000.0) -> torch.Tensor:
    """(tasks, n_learn, N): amplitude sin(2π (t − φ_i) / period) + u_mean_i, with one phase
    φ_i ~ U(0, period) per neuron and task (TrainSpikingNet.jl's default targets)."""
    if u_mean.dim() != 1 or u_mean.shape[0] != params.n_cells:
        raise ValueError(f"u_mean must have shape ({params.n_cells},), got {tuple(u_mean.shape)}")
    if not (period > 0 and math.isfinite(amplitude)):
        raise ValueError("period must be > 0 and amplitude finite")
    if not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    t = learning_times(params)
    phase = torch.rand(n_tasks, 1, params.n_cells, generator=generator, dtype=torch.float64) * period
    out = amplitude * torch.sin((t.view(1, -1, 1) - phase) * (2.0 * math.pi / period)) + u_mean.double().cpu()
    return out.to(params.torch_dtype).contiguous()


# Polynomial approximations of the Ricciardi integrals (error < 1e-5; the coefficients of
# TrainSpikingNet.jl's rate2utarg.jl, from Amit & Brunel's classic implementation).
_F_COEF = (-2.2757881388024176e-1, 7.7373949685442023e-1, -3.2056016125642045e-1, 3.2171431660633076e-1,
           -6.2718906618071668e-1, 9.3524391761244940e-1, -1.0616084849547165, 6.4290613877355551e-1,
           -1.4805913578876898e-1)
_G_NUM = (0.0, 3.5441754117462949, -7.0529131065835378, -5.6532378057580381e1, 2.7956761105465944e2,
          -5.2037554849441472e2, 4.5658245777026514e2, -1.5573340457809226e2)
_G_DEN = (1.0, -4.1357968834226053, -7.2984226138266743, 9.8656602235468327e1, -3.3420436223415163e2,
          6.0108633903294185e2, -5.9958577549598340e2, 2.7718420330693891e2, -1.6445022798669722e1)


def _poly(z: torch.Tensor, coefficients) -> torch.Tensor:
    out = torch.zeros_like(z)
    for c in reversed(coefficients):
        out = out * z + c
    return out


def _f_ricci(x: torch.Tensor) -> torch.Tensor:
    z = x / (1 + x)
    return torch.log(2 * x + 1) + z * _poly(z, _F_COEF)


def _g_ricci(x: torch.Tensor) -> torch.Tensor:
    z = x / (2 + x)
    return _poly(z, _G_NUM) / _poly(z, _G_DEN)


def ricciardi_rate(mu: torch.Tensor, sigma: float, tau_mem: float = 10.0, threshold: float = 1.0,
                   v_reset: float = 0.0) -> torch.Tensor:
    """Firing rate (Hz) of an LIF neuron, τ dV/dt = μ − V + σ √τ ξ(t), threshold and reset in the
    units of μ, τ in ms (the Ricciardi / Siegert formula, float64)."""
    if threshold < v_reset:
        raise ValueError("threshold lower than reset")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    mu = torch.as_tensor(mu, dtype=torch.float64)
    inv_tau = 1000.0 / tau_mem
    if sigma == 0:
        safe = torch.where(mu > threshold, mu, torch.full_like(mu, threshold + 1.0))
        return torch.where(mu > threshold, inv_tau / torch.log((safe - v_reset) / (safe - threshold)),
                           torch.zeros_like(mu))
    xp = (mu - v_reset) / sigma
    xm = (mu - threshold) / sigma
    one = torch.ones_like(mu)
    # three regimes: above threshold (xm > 0), the balanced regime (xm <= 0 < xp), below reset
    above = inv_tau / (_f_ricci(torch.where(xp > 0, xp, one)) - _f_ricci(torch.where(xm > 0, xm, 0.5 * one)))
    xm_neg = torch.where(xm <= 0, -xm, one)
    balanced = inv_tau / (_f_ricci(torch.where(xp > 0, xp, one)) + torch.exp(xm ** 2) * _g_ricci(xm_neg))
    xp_neg = torch.where(xp <= 0, -xp, one)
    below = torch.exp(-xm ** 2 - torch.log(_g_ricci(xm_neg) - torch.exp(xp ** 2 - xm ** 2) * _g_ricci(xp_neg))) * inv_tau
    return torch.where(xm > 0, above, torch.where(xp > 0, balanced, below))


def rates_to_currents(rates: torch.Tensor, sigma: float, params: NetworkParams, iterations: int = 200) -> torch.Tensor:
    """Target currents (tasks, n_learn, N) whose Ricciardi rate equals ``rates`` (Hz; (n_learn, N)
    or (tasks, n_learn, N); zeros are replaced by 0.1 Hz as in TrainSpikingNet.jl). The rate is
    increasing in μ, so each entry is solved by bisection (float64). sigma: the input noise
    (TrainSpikingNet.jl uses the spontaneous run's mean current std / √(1.3 τ_exc))."""
    rates = torch.as_tensor(rates, dtype=torch.float64)
    if rates.dim() == 2:
        rates = rates.unsqueeze(0)
    if rates.dim() != 3 or rates.shape[1:] != (params.n_learn, params.n_cells):
        raise ValueError(f"rates must have shape (n_learn, N) = ({params.n_learn}, {params.n_cells}) or "
                         f"(tasks, n_learn, N), got {tuple(rates.shape)}")
    if not bool(torch.isfinite(rates).all()) or bool((rates < 0).any()):
        raise ValueError("rates must be finite and >= 0 (Hz)")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    rates = torch.where(rates == 0, torch.full_like(rates, 0.1), rates)

    def rate(mu):
        return ricciardi_rate(mu, sigma, params.tau_mem, params.threshold, params.v_reset)

    lo = torch.full_like(rates, params.v_reset - 10.0 * sigma - 10.0)
    hi = torch.full_like(rates, params.threshold + 1.0)
    for _ in range(200):  # widen the upper bracket until every target rate is reached
        short = rate(hi) < rates
        if not bool(short.any()):
            break
        hi = torch.where(short, hi + 2.0 * (hi - lo), hi)
    else:
        raise ValueError("a target rate is too high to be reached")
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        up = rate(mid) < rates
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    mu = 0.5 * (lo + hi)
    achieved = rate(mu)
    if not bool(torch.isfinite(achieved).all()) or not torch.allclose(achieved, rates, rtol=1e-6, atol=1e-9):
        raise ValueError(f"the Ricciardi curve with sigma = {sigma:.3g} cannot produce the target rates (sigma too "
                         "small for float64, or rates out of range); pass a larger sigma")
    return mu.to(params.torch_dtype).contiguous()


def ricciardi_sigma(u_std: float, params: NetworkParams) -> float:
    """TrainSpikingNet.jl's noise for rates_to_currents: u_std / √(1.3 τ_exc) (1.3 calibrated by them)."""
    return float(u_std) / math.sqrt(params.tau_exc * 1.3)


def check_targets(targets: torch.Tensor, params: NetworkParams, n_tasks: Optional[int] = None) -> torch.Tensor:
    """Validate a (tasks, n_learn, N) target tensor; returns it contiguous in the network dtype."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() == 2:
        targets = targets.unsqueeze(0)
    if targets.dim() != 3 or targets.shape[1:] != (params.n_learn, params.n_cells):
        raise ValueError(f"targets must have shape (tasks, n_learn, N) = (tasks, {params.n_learn}, {params.n_cells}),"
                         f" got {tuple(targets.shape)}")
    if n_tasks is not None and targets.shape[0] != n_tasks:
        raise ValueError(f"targets have {targets.shape[0]} tasks but the network has {n_tasks} stimuli")
    if not targets.is_floating_point() or not bool(torch.isfinite(targets).all()):
        raise ValueError("targets must be finite floating-point values")
    return targets.to(params.torch_dtype).contiguous()
