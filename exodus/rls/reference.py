"""Plain reference implementations (the oracle the fast paths are tested against).

``simulate_reference``: one Python iteration per time step, the neuron update written out with
torch ops over the neurons and the spike-driven input as an explicit loop over the cells that
spiked (the same expressions, in the same order, as cuda/rls_neurons.h and cuda/cpu_rls.cpp).
``rls_update_reference``: the RLS step of DESIGN.md §9, one neuron at a time, full (2L, 2L) P.
``initial_P_reference``: P(0) = (λI + μM)⁻¹ per neuron from the signs of its weights, as
TrainSpikingNet.jl builds it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .network import Network, SimState


def constants(net: Network, device="cpu") -> dict:
    """The per-step constants as 0-dim tensors of the network dtype (native code gets the same values)."""
    p = net.params
    values = {"dt": p.dt, "mem_rate": p.dt / p.tau_mem, "threshold": p.threshold, "v_reset": p.v_reset,
              "inv_tau_exc": 1.0 / p.tau_exc, "inv_tau_inh": 1.0 / p.tau_inh, "inv_tau_plastic": 1.0 / p.tau_plastic}
    return {k: torch.tensor(v, dtype=p.torch_dtype, device=device) for k, v in values.items()}


def simulate_reference(net: Network, state: SimState, step_begin: int, step_end: int,
                       w: Optional[torch.Tensor] = None, task: int = 0, stimulus: bool = True,
                       record: Optional[torch.Tensor] = None, record_first: int = 0, record_every: int = 1) -> SimState:
    """Advance ``state`` in place over steps [step_begin, step_end) (1-based, see network.py).

    w (N, 2L): plastic weights, or None for the network without plastic input (the spontaneous
    run). stimulus: add x_stim[task] while stim_on < t dt < stim_off. record (rows, N): u_total
    at steps record_first + m record_every.
    """
    p = net.params
    c = constants(net)
    dt, ie, ii, ip = c["dt"], c["inv_tau_exc"], c["inv_tau_inh"], c["inv_tau_plastic"]
    plastic = w is not None
    w_flat = w.reshape(-1) if plastic else None
    stim_first = p.stim_on_steps + 1
    stim_rows = p.stim_off_steps - p.stim_on_steps - 1
    s = state
    for t in range(step_begin, step_end):
        # 1. neurons
        s.u_exc = s.u_exc + (-dt * s.u_exc + s.in_exc) * ie
        s.u_inh = s.u_inh + (-dt * s.u_inh + s.in_inh) * ii
        s.u_static = s.u_exc + s.u_inh
        u = s.u_static
        if plastic:
            s.u_plastic = s.u_plastic + (-dt * s.u_plastic + s.in_plastic) * ip
            u = s.u_static + s.u_plastic
            s.r = s.r + (-dt * s.r + s.spiked.to(s.r.dtype)) * ip
        if record is not None and t >= record_first and (t - record_first) % record_every == 0:
            row = (t - record_first) // record_every
            if row < record.shape[0]:
                record[row] = u
        x = net.x_bal
        if stimulus and stim_first <= t < stim_first + stim_rows:
            x = net.x_bal + net.x_stim[task, t - stim_first]
        active = s.refractory <= 0
        v_new = s.v + c["mem_rate"] * ((x + u) - s.v)
        spike = active & (v_new > c["threshold"])
        s.v = torch.where(spike, c["v_reset"], torch.where(active, v_new, s.v))
        s.refractory = torch.where(spike, torch.full_like(s.refractory, p.refractory_steps),
                                   torch.where(active, torch.zeros_like(s.refractory), s.refractory - 1))
        s.spiked = spike.to(torch.uint8)
        # 2. charges delivered by this step's spikes, presynaptic cells in ascending order
        s.in_exc = torch.zeros_like(s.in_exc)
        s.in_inh = torch.zeros_like(s.in_inh)
        s.in_plastic = torch.zeros_like(s.in_plastic)
        for pre in torch.nonzero(spike).flatten().tolist():
            s.spike_count[pre] += 1
            target = s.in_exc if pre < p.n_exc else s.in_inh
            b, e = int(net.static_ptr[pre]), int(net.static_ptr[pre + 1])
            target[net.static_post[b:e].long()] += net.static_weight[b:e]
            if plastic:
                b, e = int(net.plastic_ptr[pre]), int(net.plastic_ptr[pre + 1])
                s.in_plastic[net.plastic_post[b:e].long()] += w_flat[net.plastic_slot[b:e]]
    return state


def rls_update_reference(P: torch.Tensor, w: torch.Tensor, inputs: torch.Tensor, r: torch.Tensor,
                         u_static: torch.Tensor, u_target: torch.Tensor, normalized: bool = True) -> None:
    """One RLS step per neuron, in place (DESIGN §9). P (N, n, n), w (N, n), inputs (N, n) int64
    presynaptic cells, r (N), u_static (N), u_target (N):

        x = r[inputs_i] ; k = P_i x ; P_i <- P_i - k kᵀ / (1 + xᵀk) ;
        e = w_iᵀx + u_static_i - u_target_i ; w_i <- w_i - e k / (1 + xᵀk)   (normalized=False: - e k)
    """
    for i in range(P.shape[0]):
        x = r[inputs[i]]
        k = P[i] @ x
        den = 1.0 / (1.0 + x @ k)
        P[i] = P[i] - den * torch.outer(k, k)
        e = w[i] @ x + u_static[i] - u_target[i]
        w[i] = w[i] - (e * den if normalized else e) * k


def initial_P_reference(w0: torch.Tensor, penalty_lambda: float, penalty_mu: float) -> torch.Tensor:
    """(N, n, n) float64: P_i(0) = (λI + μM_i)⁻¹ with M_i[a, b] = 1 where w0[i, a], w0[i, b] have the same sign."""
    n_cells, n = w0.shape
    out = torch.empty(n_cells, n, n, dtype=torch.float64)
    for i in range(n_cells):
        pos, neg = w0[i] > 0, w0[i] < 0
        same = ((pos.unsqueeze(0) & pos.unsqueeze(1)) | (neg.unsqueeze(0) & neg.unsqueeze(1))).to(torch.float64)
        out[i] = torch.linalg.inv(penalty_lambda * torch.eye(n, dtype=torch.float64) + penalty_mu * same)
    return out
