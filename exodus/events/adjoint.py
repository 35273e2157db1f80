"""Exact gradients of spike times by differentiating the event tape (DESIGN.md §8).

The recorded tape (spike times t_s and ids j_s) fixes the order of events. Along that order the
dynamics are a composition of closed forms (time in units of tau):

    spike time   t_s = tau_j + (phi_th - phi_j) / omega_j           (j = j_s; phi_j, tau_j: j's state)
    each target  u = phi_i + omega_i (t_s - tau_i);  phi_i <- PTC(u, c_i = kappa_i w_ji, omega_i);  tau_i <- t_s
    reset        phi_j <- phi_reset;  tau_j <- t_s

with omega_i, kappa_i functions of i_ext_i and J = j0 / sqrt(K) (DESIGN §8):
    LIF  omega = 1/ln(1 + 1/a), kappa = J/(1 + a), PTC = -omega ln(exp(-u/omega) + c)
    QIF  omega = 2 sqrt(a),      kappa = -2J/omega,  PTC = 2 atan(tan(u/2) + c)
Each neuron's state is (phi_i, tau_i) at its last update, so only the spiker and its targets are
touched per event: the replay, the forward mode (jvp) and the reverse mode (vjp) all cost O(K)
per spike. The gradients are exact for the given order; they stop being the derivative of the
simulation where a parameter change would swap two events.

Units at the API: spike times in seconds; gradients with respect to j0, i_ext (per neuron, or
summed for a scalar drive), weights (per synapse, the network's weights layout) and phase0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .network import Network, Spikes


def _check(network: Network) -> None:
    if network.model not in ("lif", "qif"):
        raise ValueError(f"gradients are implemented for LIF and QIF networks, not {network.model!r}")


@dataclass
class _Params:
    """Per-neuron quantities and their derivatives w.r.t. i_ext_i (a) and J."""
    omega: np.ndarray
    kappa: np.ndarray
    domega_da: np.ndarray
    dkappa_da: np.ndarray   # total derivative (through omega for QIF)
    dkappa_dj: np.ndarray


def _params(net: Network) -> _Params:
    a = np.broadcast_to(np.asarray(net.i_ext, np.float64), (net.n,)).copy()
    J = net.coupling_j
    if net.model == "lif":
        omega = 1.0 / np.log1p(1.0 / a)
        drive = 1.0 + a
        return _Params(omega, J / drive, omega ** 2 / (a * (a + 1.0)), -J / drive ** 2, 1.0 / drive)
    omega = 2.0 * np.sqrt(a)
    return _Params(omega, -2.0 * J / omega, 2.0 / omega, 4.0 * J / omega ** 3, -2.0 / omega)


def _ptc_and_partials(model: str, u, c, omega):
    """PTC(u, c, omega) and its partials (P_u, P_c, P_omega)."""
    if model == "lif":
        E = np.exp(-u / omega)
        A = E + c
        P = -omega * np.log(A)
        return P, E / A, -omega / A, -np.log(A) - u * E / (omega * A)
    T = np.tan(u / 2.0)
    B = T + c
    D = 1.0 + B * B
    return 2.0 * np.arctan(B), (1.0 + T * T) / D, 2.0 / D, np.zeros_like(u)


@dataclass
class Tape:
    """The replayed event tape: per event s, spiker j, time t (units of tau), the spiker's state
    (phi_j, tau_j) before the spike, its targets, synapse ids and pre-kick phases u, old tau_i."""
    neurons: np.ndarray
    times: np.ndarray
    phase_j: np.ndarray
    time_j: np.ndarray
    targets: list
    synapses: list
    u: list
    time_i: list
    final_phase: Optional[np.ndarray] = None   # (n,) state after the last event
    final_time: Optional[np.ndarray] = None


def replay(network: Network, spikes: Spikes, check_tolerance: float = 1e-9) -> Tape:
    """Recompute every intermediate quantity along the recorded order (O(K) per event) and check
    that the replayed spike times match the tape (relative ``check_tolerance``)."""
    _check(network)
    net, p = network, _params(network)
    ids = np.asarray(spikes.neurons, np.int64)
    S = ids.size
    phase = np.array(spikes.phase0, np.float64).copy()
    last = np.zeros(net.n)
    tape = Tape(ids, np.empty(S), np.empty(S), np.empty(S), [], [], [], [])
    weights = None if net.weights is None else net.weights.reshape(-1)
    for s in range(S):
        j = ids[s]
        t = last[j] + (net.phase_th - phase[j]) / p.omega[j]
        tape.times[s], tape.phase_j[s], tape.time_j[s] = t, phase[j], last[j]
        targets, synapses = net.targets_and_synapses(j)
        u = phase[targets] + p.omega[targets] * (t - last[targets])
        w = 1.0 if weights is None else weights[synapses]
        after, *_ = _ptc_and_partials(net.model, u, p.kappa[targets] * w, p.omega[targets])
        tape.targets.append(targets)
        tape.synapses.append(synapses)
        tape.u.append(u)
        tape.time_i.append(last[targets].copy())
        phase[targets] = after
        last[targets] = t
        phase[j] = net.phase_reset
        last[j] = t
    tape.final_phase, tape.final_time = phase, last
    recorded = np.asarray(spikes.times, np.float64) / net.tau
    if S and np.max(np.abs(tape.times - recorded) / (1.0 + np.abs(recorded))) > check_tolerance:
        worst = int(np.argmax(np.abs(tape.times - recorded)))
        raise ValueError(f"the spike tape does not match this network (event {worst}: replayed t = "
                         f"{tape.times[worst] * net.tau:.12g} s, recorded {recorded[worst] * net.tau:.12g} s)")
    return tape


def final_phases(network: Network, spikes: Spikes, tape: Optional[Tape] = None) -> np.ndarray:
    """(n,) every neuron's phase at the end of the run, t = spikes.duration."""
    tape = replay(network, spikes) if tape is None else tape
    end = spikes.duration / network.tau
    return tape.final_phase + network.omega_per_neuron() * (end - tape.final_time)


def phase_rates(network: Network, spikes: Spikes, final_phase, phase0=None):
    """(n,) rate in Hz from the continuous spike count n_i + (phi_i(T) - phi_i(0)) / (phi_th - phi_reset)
    over the run's duration T: continuous and differentiable in the parameters also where a spike
    enters or leaves the window, and non-zero in gradient for silent neurons. numpy or torch."""
    span = network.phase_th - network.phase_reset
    start = spikes.phase0 if phase0 is None else phase0
    counts = spikes.counts
    try:
        import torch
        if isinstance(final_phase, torch.Tensor):
            counts = torch.as_tensor(counts, dtype=final_phase.dtype)
            start = torch.as_tensor(start, dtype=final_phase.dtype) if not isinstance(start, torch.Tensor) else start
    except ImportError:  # pragma: no cover
        pass
    return (counts + (final_phase - start) / span) / spikes.duration


def spike_time_vjp(network: Network, spikes: Spikes, grad_times, tape: Optional[Tape] = None,
                   grad_final_phase=None) -> dict:
    """Reverse mode: gradient of L with dL/dt_s = grad_times[s] (t_s in seconds) and optionally
    dL/dphi_i(T) = grad_final_phase[i] (the phases at the end, see final_phases), for all
    parameters at once. Returns {"j0": float, "i_ext": float or (n,), "weights": (n, k) / (nnz,)
    (ones if the network has none), "phase0": (n,)}."""
    net = network
    tape = replay(net, spikes) if tape is None else tape
    p = _params(net)
    grad_times = np.asarray(grad_times, np.float64).reshape(-1)
    if grad_times.shape != tape.times.shape:
        raise ValueError(f"grad_times must have shape {tape.times.shape}, got {grad_times.shape}")
    tbar_ext = grad_times * net.tau  # dL/dt in units of tau
    weights = np.ones(net.indices.size if net.indptr is not None else net.n * net.k) if net.weights is None \
        else net.weights.reshape(-1)
    phase_bar = np.zeros(net.n)
    time_bar = np.zeros(net.n)
    omega_bar = np.zeros(net.n)
    if grad_final_phase is not None:  # phi_i(T) = phi_i + omega_i (T - tau_i), T fixed
        g = np.asarray(grad_final_phase, np.float64).reshape(-1)
        if g.shape != (net.n,):
            raise ValueError(f"grad_final_phase must have shape ({net.n},), got {g.shape}")
        phase_bar += g
        time_bar -= g * p.omega
        omega_bar += g * (spikes.duration / net.tau - tape.final_time)
    kappa_bar = np.zeros(net.n)
    weight_bar = np.zeros(weights.size)
    for s in range(tape.times.size - 1, -1, -1):
        j, t = tape.neurons[s], tape.times[s]
        tbar = tbar_ext[s] + time_bar[j]          # reset: tau_j <- t; phi_j <- constant
        targets, synapses, u, time_i = tape.targets[s], tape.synapses[s], tape.u[s], tape.time_i[s]
        omega = p.omega[targets]
        w = weights[synapses]
        _, P_u, P_c, P_omega = _ptc_and_partials(net.model, u, p.kappa[targets] * w, omega)
        pbar = phase_bar[targets]
        ubar = pbar * P_u
        cbar = pbar * P_c
        tbar += np.sum(time_bar[targets]) + np.sum(ubar * omega)
        omega_bar[targets] += pbar * P_omega + ubar * (t - time_i)
        kappa_bar[targets] += cbar * w
        weight_bar[synapses] += cbar * p.kappa[targets]
        phase_bar[targets] = ubar
        time_bar[targets] = -ubar * omega
        # t = tau_j + (phi_th - phi_j) / omega_j
        oj = p.omega[j]
        phase_bar[j] = -tbar / oj
        time_bar[j] = tbar
        omega_bar[j] -= tbar * (net.phase_th - tape.phase_j[s]) / oj ** 2
    a_bar = omega_bar * p.domega_da + kappa_bar * p.dkappa_da
    j_bar = float(np.sum(kappa_bar * p.dkappa_dj))
    return {"j0": j_bar / math.sqrt(net.k), "i_ext": a_bar if net.heterogeneous else float(a_bar.sum()),
            "weights": weight_bar.reshape(net.weights.shape if net.weights is not None else
                                          ((net.n, net.k) if net.indptr is None else (-1,))),
            "phase0": phase_bar}


def spike_time_jvp(network: Network, spikes: Spikes, tangents: dict, tape: Optional[Tape] = None) -> np.ndarray:
    """Forward mode: d t_s (seconds) along a direction ``tangents`` = {"j0": dj0, "i_ext": da
    (number or (n,)), "weights": dw, "phase0": dphi0} (missing = 0). Returns (S,)."""
    net = network
    tape = replay(net, spikes) if tape is None else tape
    p = _params(net)
    unknown = set(tangents) - {"j0", "i_ext", "weights", "phase0"}
    if unknown:
        raise ValueError(f"unknown tangent(s) {sorted(unknown)}")
    dj = float(tangents.get("j0", 0.0)) / math.sqrt(net.k)
    da = np.broadcast_to(np.asarray(tangents.get("i_ext", 0.0), np.float64), (net.n,))
    d_omega = p.domega_da * da
    d_kappa = p.dkappa_da * da + p.dkappa_dj * dj
    n_syn = net.indices.size if net.indptr is not None else net.n * net.k
    weights = np.ones(n_syn) if net.weights is None else net.weights.reshape(-1)
    d_weights = np.zeros(n_syn) if tangents.get("weights") is None else \
        np.asarray(tangents["weights"], np.float64).reshape(-1)
    if d_weights.shape != (n_syn,):
        raise ValueError(f"the weights tangent must have {n_syn} elements, got {d_weights.size}")
    d_phase = np.broadcast_to(np.asarray(tangents.get("phase0", 0.0), np.float64), (net.n,)).copy()
    d_time = np.zeros(net.n)
    out = np.empty(tape.times.size)
    for s in range(tape.times.size):
        j, t = tape.neurons[s], tape.times[s]
        oj = p.omega[j]
        dt = d_time[j] - d_phase[j] / oj - (net.phase_th - tape.phase_j[s]) * d_omega[j] / oj ** 2
        out[s] = dt
        targets, synapses, u, time_i = tape.targets[s], tape.synapses[s], tape.u[s], tape.time_i[s]
        omega, w = p.omega[targets], weights[synapses]
        _, P_u, P_c, P_omega = _ptc_and_partials(net.model, u, p.kappa[targets] * w, omega)
        du = d_phase[targets] + d_omega[targets] * (t - time_i) + omega * (dt - d_time[targets])
        dc = d_kappa[targets] * w + p.kappa[targets] * d_weights[synapses]
        d_phase[targets] = P_u * du + P_c * dc + P_omega * d_omega[targets]
        d_time[targets] = dt
        d_phase[j] = 0.0
        d_time[j] = dt
    return out * net.tau


def isi_rates(times, neurons, n: int):
    """(n,) per-neuron rate estimate (n_i - 1) / (t_last - t_first) in Hz from spike times (s):
    a differentiable function of the times (0 for neurons with < 2 spikes). Works on numpy arrays
    and on torch tensors (autograd flows through the times)."""
    try:
        import torch
        is_torch = isinstance(times, torch.Tensor)
    except ImportError:  # pragma: no cover
        is_torch = False
    if is_torch:
        ids = torch.as_tensor(neurons, dtype=torch.int64)
        counts = torch.bincount(ids, minlength=n).to(times.dtype)
        first = torch.full((n,), math.inf, dtype=times.dtype).scatter_reduce(0, ids, times, "amin")
        last = torch.full((n,), -math.inf, dtype=times.dtype).scatter_reduce(0, ids, times, "amax")
        ok = counts >= 2
        span = torch.where(ok, last - first, torch.ones_like(last))
        return torch.where(ok, (counts - 1) / span, torch.zeros_like(span))
    ids = np.asarray(neurons, np.int64)
    times = np.asarray(times, np.float64)
    counts = np.bincount(ids, minlength=n).astype(np.float64)
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, ids, times)
    np.maximum.at(last, ids, times)
    ok = counts >= 2
    return np.where(ok, (counts - 1) / np.where(ok, last - first, 1.0), 0.0)


def spike_times(network: Network, n_spikes: Optional[int] = None, duration: Optional[float] = None, *, j0=None,
                i_ext=None, weights=None, phase0=None, return_final_phase: bool = False):
    """Differentiable simulation for torch: (times (S,) float64 seconds, neurons (S,) int64), and
    with return_final_phase the (n,) phases at the end of the run (see final_phases, phase_rates)
    and the Spikes record.

    The tensors j0 (scalar), i_ext (scalar or (n,)), weights (the network's weights shape) and
    phase0 (n,) replace the network's values; gradients flow to those that require grad through
    the exact tape adjoint (spike_time_vjp). Runs the compiled simulator forward.
    """
    import torch

    holder = {}  # the forward's Spikes record

    class _SpikeTimes(torch.autograd.Function):
        @staticmethod
        def forward(ctx, j0_t, i_ext_t, weights_t, phase0_t):
            changes = {}
            if j0_t is not None:
                changes["j0"] = float(j0_t.detach())
            if i_ext_t is not None:
                value = i_ext_t.detach().double().numpy()
                changes["i_ext"] = float(value) if value.ndim == 0 else value
            if weights_t is not None:
                changes["weights"] = weights_t.detach().double().numpy()
            net = network.with_params(**changes) if changes else network
            start = None if phase0_t is None else phase0_t.detach().double().numpy()
            from .network import simulate
            spikes = simulate(net, n_spikes, duration, phase0=start)
            tape = replay(net, spikes)
            ctx.net, ctx.spikes, ctx.tape = net, spikes, tape
            ctx.inputs = (j0_t, i_ext_t, weights_t, phase0_t)
            neurons = torch.from_numpy(spikes.neurons)
            ctx.mark_non_differentiable(neurons)
            holder["spikes"] = spikes
            return torch.from_numpy(spikes.times), neurons, torch.from_numpy(final_phases(net, spikes, tape))

        @staticmethod
        def backward(ctx, grad_times, _grad_neurons, grad_phase):
            grads = spike_time_vjp(ctx.net, ctx.spikes, grad_times.detach().double().numpy(), ctx.tape,
                                   grad_final_phase=None if grad_phase is None else grad_phase.detach().double().numpy())
            out = []
            for name, tensor in zip(("j0", "i_ext", "weights", "phase0"), ctx.inputs):
                if tensor is None or not ctx.needs_input_grad[len(out)]:
                    out.append(None)
                else:
                    out.append(torch.as_tensor(np.asarray(grads[name]), dtype=tensor.dtype).reshape(tensor.shape))
            return tuple(out)

    times, neurons, phase_end = _SpikeTimes.apply(j0, i_ext, weights, phase0)
    return (times, neurons, phase_end, holder["spikes"]) if return_final_phase else (times, neurons)
