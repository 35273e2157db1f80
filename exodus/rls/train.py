"""RLS (FORCE) training of the E/I LIF network, batched over neurons (DESIGN.md §9).

Backends:
- ``"native"`` (CPU): the simulation between two RLS updates (10 ms = 100 steps) is one call of
  the compiled loop in cuda/cpu_rls.cpp, and the RLS update of all N neurons is one compiled
  call (OpenMP over neurons) on upper-packed P matrices (N, n(n+1)/2), n = 2L.
- ``"torch"`` (any device; the path for CUDA, untested on a GPU here): the same loop in torch ops,
  one step at a time, and the RLS update with bmm over (N, n, n) full P matrices.
Both are tested against exodus.rls.reference.
"""
from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from exodus.backends.sources import BuildError

from . import _native
from .network import Network, NetworkParams, SimState, build_network, check_network, initial_P, new_state
from .reference import constants
from .targets import check_targets

BACKENDS = ("auto", "native", "torch")


# ----------------------------------------------------------------------------- packed storage

def packed_indices(n: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the upper-packed column-major order: (i, j), i <= j, at i + j (j + 1) / 2."""
    cols = torch.repeat_interleave(torch.arange(n), torch.arange(1, n + 1))
    rows = torch.cat([torch.arange(j + 1) for j in range(n)])
    return rows.to(device), cols.to(device)


def pack_symmetric(P: torch.Tensor) -> torch.Tensor:
    """(..., n, n) -> (..., n(n+1)/2) upper triangle, column-major packed."""
    rows, cols = packed_indices(P.shape[-1], P.device)
    return P[..., rows, cols].contiguous()


def unpack_symmetric(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(..., n(n+1)/2) -> (..., n, n) symmetric."""
    if packed.shape[-1] != n * (n + 1) // 2:
        raise ValueError(f"packed size {packed.shape[-1]} does not match n = {n}")
    rows, cols = packed_indices(n, packed.device)
    out = packed.new_zeros(*packed.shape[:-1], n, n)
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


def block_size(dtype: torch.dtype) -> int:
    """Rows per block of the native block-packed P layout: 64 bytes (16 floats, 8 doubles)."""
    return 64 // torch.empty((), dtype=dtype).element_size()


def blocked_indices(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the block-packed layout of cuda/rls_neurons.h in storage order, over the
    matrix padded to nb B: column j of block-column b = j // B holds rows 0 .. (b+1) B - 1."""
    B = block_size(dtype)
    padded = -(-n // B) * B
    rows = torch.cat([torch.arange((j // B + 1) * B) for j in range(padded)])
    cols = torch.repeat_interleave(torch.arange(padded), torch.tensor([(j // B + 1) * B for j in range(padded)]))
    return rows, cols


def pack_blocked(P: torch.Tensor) -> torch.Tensor:
    """(..., n, n) symmetric -> (..., blocked size) block-packed (zeros in the padding)."""
    n = P.shape[-1]
    B = block_size(P.dtype)
    padded = -(-n // B) * B
    full = P.new_zeros(*P.shape[:-2], padded, padded)
    full[..., :n, :n] = P
    rows, cols = blocked_indices(n, P.dtype)
    return full[..., rows.to(P.device), cols.to(P.device)].contiguous()


def unpack_blocked(blocked: torch.Tensor, n: int) -> torch.Tensor:
    """(..., blocked size) -> (..., n, n): the stored entries, mirrored above the diagonal blocks."""
    B = block_size(blocked.dtype)
    padded = -(-n // B) * B
    rows, cols = (t.to(blocked.device) for t in blocked_indices(n, blocked.dtype))
    if blocked.shape[-1] != rows.numel():
        raise ValueError(f"block-packed size {blocked.shape[-1]} does not match n = {n} ({rows.numel()})")
    full = blocked.new_zeros(*blocked.shape[:-1], padded, padded)
    above = rows // B < cols // B
    full[..., cols[above], rows[above]] = blocked[..., above]
    full[..., rows, cols] = blocked
    return full[..., :n, :n].contiguous()


# ----------------------------------------------------------------------------- RLS update

def rls_update_torch(P: torch.Tensor, w: torch.Tensor, inputs: torch.Tensor, r: torch.Tensor,
                     u_static: torch.Tensor, u_target: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """All N RLS steps at once, in place (DESIGN §9): P (N, n, n), w (N, n), inputs (N, n) int64,
    r, u_static, u_target (N). Returns xᵀPx (N). P stays exactly symmetric: the downdate
    (k_a k_b) c is the same number for (a, b) and (b, a)."""
    x = r[inputs]
    k = torch.bmm(P, x.unsqueeze(2)).squeeze(2)
    xk = (x * k).sum(1)
    c = 1.0 / (1.0 + xk)
    P.sub_(k.unsqueeze(2) * k.unsqueeze(1) * c.view(-1, 1, 1))
    e = (w * x).sum(1) + u_static - u_target
    w.sub_((e * c if normalized else e).unsqueeze(1) * k)
    return xk


def rls_update_native(P_blocked: torch.Tensor, w: torch.Tensor, inputs: torch.Tensor, r: torch.Tensor,
                      u_static: torch.Tensor, u_target: torch.Tensor, normalized: bool = True,
                      threads: Optional[int] = None) -> torch.Tensor:
    """rls_update_torch on block-packed P (N, blocked size) (pack_blocked) through cuda/cpu_rls.cpp,
    applied at once (no deferred downdates). Returns xᵀPx (N)."""
    P = BlockedP(P_blocked, w.shape[1], capacity=1)
    xk = P.update(w, inputs, r, u_static, u_target, normalized, threads)
    return xk


class BlockedP:
    """The P matrices of all N neurons for the native backend (cuda/rls_neurons.h):
    P_i = base_i − Σ_{m < pending} c_im f_im f_imᵀ, base (N, blocked size) block-packed, the
    last ``pending`` downdates kept as factors f (N, capacity, nb B) and c (N, capacity) and
    applied to base every ``capacity`` updates. The RLS update is memory-bound: deferring the
    downdates reads base every update but writes it only every ``capacity``-th (see docs/rls.md
    for the measured effect). ``capacity = 1`` applies every downdate at once."""

    def __init__(self, base: torch.Tensor, n: int, capacity: int = 1):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if base.dim() != 2 or not base.is_contiguous() or base.device.type != "cpu":
            raise ValueError("base must be a contiguous CPU tensor (N, blocked size)")
        B = block_size(base.dtype)
        nb = -(-n // B)
        if base.shape[1] != B * B * nb * (nb + 1) // 2:
            raise ValueError(f"P must have shape ({base.shape[0]}, {B * B * nb * (nb + 1) // 2}) for n = {n}, "
                             f"got {tuple(base.shape)}")
        self.base, self.n, self.capacity, self.pending = base, n, capacity, 0
        self.factors = torch.zeros(base.shape[0], capacity, nb * B, dtype=base.dtype)
        self.coef = torch.zeros(base.shape[0], capacity, dtype=base.dtype)

    @classmethod
    def from_full(cls, P: torch.Tensor, capacity: int = 1) -> "BlockedP":
        return cls(pack_blocked(P), P.shape[-1], capacity)

    def update(self, w, inputs, r, u_static, u_target, normalized: bool = True, threads: Optional[int] = None,
               check_inputs: bool = True):
        """One RLS step of every neuron (DESIGN §9), in place on P and w; returns xᵀPx (N).
        check_inputs=False skips the range check of ``inputs`` (the trainer's are checked once by
        check_network; a reduction over them per update cost 10-30 ms on a loaded 2-core machine)."""
        _check_rls_args(self.base, w, inputs, r, u_static, u_target, blocked=True, check_range=check_inputs)
        library = _native.load(w.dtype)
        xk = torch.empty(w.shape[0], dtype=w.dtype)
        ptr = _native.pointer
        if threads is None:
            threads = default_threads(self.base)
        status = library.exodus_rls_update(w.shape[0], self.n, ptr(self.base), ptr(self.factors), ptr(self.coef),
                                           self.pending, self.capacity, ptr(w), ptr(inputs), ptr(r), ptr(u_static),
                                           ptr(u_target), int(bool(normalized)), ptr(xk), int(threads))
        if status != 0:
            raise RuntimeError(f"exodus_rls_update failed ({status})")
        self.pending = (self.pending + 1) % self.capacity
        return xk

    def flush(self, threads: Optional[int] = None) -> None:
        """Apply the pending downdates to base."""
        if self.pending == 0:
            return
        library = _native.load(self.base.dtype)
        ptr = _native.pointer
        status = library.exodus_rls_flush(self.base.shape[0], self.n, ptr(self.base), ptr(self.factors),
                                          ptr(self.coef), self.pending, self.capacity,
                                          int(threads if threads is not None else default_threads(self.base)))
        if status != 0:
            raise RuntimeError(f"exodus_rls_flush failed ({status})")
        self.pending = 0

    def full(self) -> torch.Tensor:
        """(N, n, n) copy of P (flushes the pending downdates first)."""
        self.flush()
        return unpack_blocked(self.base, self.n)


# Downdates the native backend defers before applying them to the stored P (BlockedP).
DEFERRED_DOWNDATES = 4

# Below this many bytes of P one thread does the update: an update then takes well under a
# millisecond, and an OpenMP region on a loaded 2-core machine can cost tens of milliseconds
# (measured: N = 512, L = 10: 0.34 ms on one thread, 22-24 ms on two while other jobs ran).
SMALL_P_BYTES = 8 << 20


def default_threads(P: torch.Tensor) -> int:
    """Threads of a one-off native RLS update when the caller gives none: one for a small P,
    else torch.get_num_threads(). (The trainer picks them by measurement: ThreadChooser.)"""
    if P.numel() * P.element_size() < SMALL_P_BYTES:
        return 1
    return torch.get_num_threads()


class ThreadChooser:
    """Picks the thread count of the repeated RLS updates by timing them: each update runs with
    the count of the lowest recent time per neuron, and every ``probe_every``-th update tries
    the other one. On a machine shared with other jobs the best count changes: measured at
    N = 10k, 2L = 90, two threads took 25 ms per update on an idle machine vs 45 ms on one, but
    2-2.5x longer than one thread while other jobs saturated both cores (a thread that loses its
    core holds up the end of the parallel region). Results do not depend on the count (every
    neuron's update is independent)."""

    def __init__(self, max_threads: int, probe_every: int = 10):
        self.options = [1] if max_threads <= 1 else [1, max_threads]
        self.seconds = {t: None for t in self.options}
        self.calls = 0
        self.probe_every = probe_every

    def choose(self) -> int:
        self.calls += 1
        untried = [t for t in self.options if self.seconds[t] is None]
        if untried:
            return untried[0]
        best = min(self.options, key=lambda t: self.seconds[t])
        if len(self.options) > 1 and self.calls % self.probe_every == 0:
            return next(t for t in self.options if t != best)
        return best

    def record(self, threads: int, seconds: float) -> None:
        old = self.seconds[threads]
        self.seconds[threads] = seconds if old is None else 0.5 * old + 0.5 * seconds


def _check_rls_args(P, w, inputs, r, u_static, u_target, blocked: bool, check_range: bool = True) -> None:
    if w.dim() != 2:
        raise ValueError(f"w must be (N, n), got {tuple(w.shape)}")
    n_cells, n = w.shape
    B = block_size(w.dtype)
    nb = -(-n // B)
    expect = (n_cells, B * B * nb * (nb + 1) // 2) if blocked else (n_cells, n, n)
    if tuple(P.shape) != expect:
        raise ValueError(f"P must have shape {expect}, got {tuple(P.shape)}")
    if tuple(inputs.shape) != (n_cells, n) or inputs.dtype != torch.int64:
        raise ValueError(f"inputs must be int64 (N, n) = ({n_cells}, {n})")
    for name, t in (("u_static", u_static), ("u_target", u_target)):
        if tuple(t.shape) != (n_cells,):
            raise ValueError(f"{name} must have shape ({n_cells},), got {tuple(t.shape)}")
    if r.dim() != 1:
        raise ValueError("r must be 1-D")
    if check_range and inputs.numel():
        low, high = torch.aminmax(inputs)
        if int(low) < 0 or int(high) >= r.shape[0]:
            raise ValueError("inputs index outside r")
    for name, t in (("P", P), ("w", w), ("r", r), ("u_static", u_static), ("u_target", u_target)):
        if t.dtype != w.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected {w.dtype}")
        if not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(f"{name} must be a contiguous CPU tensor")
    if not inputs.is_contiguous():
        raise ValueError("inputs must be contiguous")


# ----------------------------------------------------------------------------- simulation

@dataclass
class Recording:
    """Where a simulation writes u_total (rows, N): steps first + m every; and the per-neuron
    float64 sums of u and u² over steps >= sum_first (u_sum, u_sq_sum (N,), or None)."""

    u_total: Optional[torch.Tensor] = None
    first: int = 0
    every: int = 1
    u_sum: Optional[torch.Tensor] = None
    u_sq_sum: Optional[torch.Tensor] = None
    sum_first: int = 0


class NativeSimulation:
    """ctypes structures of one (network, state, weights, task, recording) for cuda/cpu_rls.cpp,
    built once per trial; ``run(begin, end)`` advances steps [begin, end)."""

    def __init__(self, net: Network, state: SimState, w: Optional[torch.Tensor], task: int = 0,
                 stimulus: bool = True, record: Optional[Recording] = None):
        p = net.params
        dtype = p.torch_dtype
        self.library = _native.load(dtype)
        Net, State, Rec = _native.structures(dtype)
        ptr = _native.pointer
        for name, t in net.tensors().items():
            if t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError(f"network tensor {name} must be a contiguous CPU tensor")
        check_network(net)
        if w is not None and (tuple(w.shape) != (p.n_cells, 2 * p.L) or w.dtype != dtype or not w.is_contiguous()):
            raise ValueError(f"w must be a contiguous {dtype} tensor of shape ({p.n_cells}, {2 * p.L})")
        if not 0 <= task < net.n_tasks:
            raise ValueError(f"task {task} out of range (network has {net.n_tasks})")
        c = {k: float(v) for k, v in constants(net).items()}
        self._keep = [net, state, w, record]
        stim = net.x_stim[task] if stimulus else None
        self.net = Net(n_cells=p.n_cells, n_exc=p.n_exc, static_ptr=ptr(net.static_ptr), static_post=ptr(net.static_post),
                       static_weight=ptr(net.static_weight),
                       plastic_ptr=ptr(net.plastic_ptr) if w is not None else None,
                       plastic_post=ptr(net.plastic_post), plastic_slot=ptr(net.plastic_slot),
                       plastic_weight=ptr(w) if w is not None else None, x_bal=ptr(net.x_bal),
                       x_stim=ptr(stim), stim_first_step=p.stim_on_steps + 1,
                       stim_rows=p.stim_off_steps - p.stim_on_steps - 1, dt=c["dt"], mem_rate=c["mem_rate"],
                       threshold=c["threshold"], v_reset=c["v_reset"], inv_tau_exc=c["inv_tau_exc"],
                       inv_tau_inh=c["inv_tau_inh"], inv_tau_plastic=c["inv_tau_plastic"],
                       refractory_steps=p.refractory_steps)
        fields_ = {}
        for name in ("v", "u_exc", "u_inh", "u_plastic", "r", "in_exc", "in_inh", "in_plastic", "u_static",
                     "spiked", "refractory", "spike_count"):
            t = getattr(state, name)
            expected = {"spiked": torch.uint8, "refractory": torch.int32, "spike_count": torch.int64}.get(name, dtype)
            if t.dtype != expected or tuple(t.shape) != (p.n_cells,) or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError(f"state.{name} must be a contiguous CPU {expected} tensor of shape ({p.n_cells},)")
            fields_[name] = ptr(t)
        self.state = State(**fields_)
        rec = record or Recording()
        if rec.u_total is not None:
            if rec.u_total.dtype != dtype or rec.u_total.dim() != 2 or rec.u_total.shape[1] != p.n_cells \
                    or not rec.u_total.is_contiguous() or rec.every < 1:
                raise ValueError("record.u_total must be a contiguous (rows, N) tensor of the network dtype, every >= 1")
        for name in ("u_sum", "u_sq_sum"):
            t = getattr(rec, name)
            if (t is None) != (rec.u_sum is None) or (t is not None and (t.dtype != torch.float64 or
                                                                        tuple(t.shape) != (p.n_cells,))):
                raise ValueError("record.u_sum and u_sq_sum must both be float64 (N,) tensors, or both None")
        self.record = Rec(u_total=ptr(rec.u_total), first_step=rec.first, every=max(1, rec.every),
                          rows=rec.u_total.shape[0] if rec.u_total is not None else 0, u_sum=ptr(rec.u_sum),
                          u_sq_sum=ptr(rec.u_sq_sum), sum_first_step=rec.sum_first)

    def run(self, step_begin: int, step_end: int) -> None:
        status = self.library.exodus_rls_simulate(ctypes.byref(self.net), ctypes.byref(self.state),
                                                  ctypes.byref(self.record), step_begin, step_end, 1)
        if status != 0:
            raise RuntimeError(f"exodus_rls_simulate failed ({status})")


class TorchSimulation:
    """The loop of cuda/cpu_rls.cpp in torch ops, one call per step (any device)."""

    def __init__(self, net: Network, state: SimState, w: Optional[torch.Tensor], task: int = 0,
                 stimulus: bool = True, record: Optional[Recording] = None):
        self.net, self.s, self.w, self.task, self.stimulus = net, state, w, task, stimulus
        self.rec = record or Recording()
        self.c = constants(net, state.v.device)
        p = net.params
        if not torch.equal(net.static_ptr.cpu(), torch.arange(p.n_cells + 1) * (2 * p.K)):
            raise ValueError("the torch backend needs the out-degree 2K of every cell (as build_network draws it)")
        self.post2d = net.static_post.long().view(p.n_cells, 2 * p.K)
        self.weight2d = net.static_weight.view(p.n_cells, 2 * p.K)
        self.w_flat = w.reshape(-1) if w is not None else None
        self.plastic_counts = net.plastic_ptr[1:] - net.plastic_ptr[:-1]
        self.plastic_post = net.plastic_post.long()
        self.stim_first = p.stim_on_steps + 1
        self.stim_rows = p.stim_off_steps - p.stim_on_steps - 1

    def run(self, step_begin: int, step_end: int) -> None:
        net, s, c, p, rec = self.net, self.s, self.c, self.net.params, self.rec
        dt, plastic = c["dt"], self.w is not None
        n_exc = p.n_exc
        for t in range(step_begin, step_end):
            s.u_exc.add_((-dt * s.u_exc + s.in_exc) * c["inv_tau_exc"])
            s.u_inh.add_((-dt * s.u_inh + s.in_inh) * c["inv_tau_inh"])
            torch.add(s.u_exc, s.u_inh, out=s.u_static)
            u = s.u_static
            if plastic:
                s.u_plastic.add_((-dt * s.u_plastic + s.in_plastic) * c["inv_tau_plastic"])
                u = s.u_static + s.u_plastic
                s.r.add_((-dt * s.r + s.spiked.to(s.r.dtype)) * c["inv_tau_plastic"])
            if rec.u_total is not None and t >= rec.first and (t - rec.first) % rec.every == 0:
                row = (t - rec.first) // rec.every
                if row < rec.u_total.shape[0]:
                    rec.u_total[row] = u
            if rec.u_sum is not None and t >= rec.sum_first:
                rec.u_sum.add_(u.double())
                rec.u_sq_sum.add_(u.double() ** 2)
            x = net.x_bal
            if self.stimulus and self.stim_first <= t < self.stim_first + self.stim_rows:
                x = net.x_bal + net.x_stim[self.task, t - self.stim_first]
            active = s.refractory <= 0
            v_new = s.v + c["mem_rate"] * ((x + u) - s.v)
            spike = active & (v_new > c["threshold"])
            s.v.copy_(torch.where(spike, c["v_reset"], torch.where(active, v_new, s.v)))
            s.refractory.copy_(torch.where(spike, p.refractory_steps, torch.where(active, 0, s.refractory - 1)))
            s.spiked.copy_(spike)
            s.in_exc.zero_()
            s.in_inh.zero_()
            if plastic:
                s.in_plastic.zero_()
            fired = torch.nonzero(spike).flatten()
            if fired.numel() == 0:
                continue
            s.spike_count[fired] += 1
            exc = fired[fired < n_exc]
            inh = fired[fired >= n_exc]
            s.in_exc.index_add_(0, self.post2d[exc].flatten(), self.weight2d[exc].flatten())
            s.in_inh.index_add_(0, self.post2d[inh].flatten(), self.weight2d[inh].flatten())
            if plastic:
                counts = self.plastic_counts[fired]
                starts = net.plastic_ptr[fired]
                offsets = torch.arange(int(counts.sum()), device=fired.device) - torch.repeat_interleave(
                    torch.cumsum(counts, 0) - counts, counts)
                m = torch.repeat_interleave(starts, counts) + offsets
                s.in_plastic.index_add_(0, self.plastic_post[m], self.w_flat[net.plastic_slot[m]])


def make_simulation(backend: str, *args, **kwargs):
    return NativeSimulation(*args, **kwargs) if backend == "native" else TorchSimulation(*args, **kwargs)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device.type != "cpu":
        if backend == "native":
            raise ValueError("the native backend runs on the CPU only; use backend='torch' on CUDA")
        return "torch"
    if backend == "auto":
        return "native" if _native.available(dtype) else "torch"
    if backend == "native":
        _native.load(dtype)  # BuildError with the compiler output if it cannot be built
    return backend


# ----------------------------------------------------------------------------- spontaneous run

@dataclass
class SpontaneousStats:
    """The network without plastic input or stimulus over one trial (TrainSpikingNet.jl's init run):
    u_mean (N) mean current over t > skip ms, u_std mean over the first ≤ 1000 cells of the
    current's std over time, rates (Hz) of the E and I populations over the whole trial."""

    u_mean: torch.Tensor
    u_std: float
    rate_exc: float
    rate_inh: float
    spike_count: torch.Tensor


def spontaneous_activity(net: Network, generator: Optional[torch.Generator] = None, backend: str = "auto",
                         skip: float = 1000.0, std_cells: int = 1000) -> SpontaneousStats:
    p = net.params
    device = net.x_bal.device
    backend = resolve_backend(backend, device, p.torch_dtype)
    gen = generator if generator is not None else torch.Generator().manual_seed(p.seed)
    state = new_state(p, gen, device)
    skip_steps = min(p.n_steps, round(skip / p.dt))
    rec = Recording(u_sum=torch.zeros(p.n_cells, dtype=torch.float64, device=device),
                    u_sq_sum=torch.zeros(p.n_cells, dtype=torch.float64, device=device), sum_first=skip_steps + 1)
    make_simulation(backend, net, state, None, 0, False, rec).run(1, p.n_steps + 1)
    m = max(1, p.n_steps - skip_steps)
    u_mean = rec.u_sum / m
    var = (rec.u_sq_sum - rec.u_sum ** 2 / m) / max(1, m - 1)
    u_std = float(var[:std_cells].clamp_min(0).sqrt().mean())
    seconds = p.train_time / 1000.0
    counts = state.spike_count.double()
    return SpontaneousStats(u_mean=u_mean.to(p.torch_dtype), u_std=u_std,
                            rate_exc=float(counts[:p.n_exc].mean()) / seconds,
                            rate_inh=float(counts[p.n_exc:].mean()) / seconds, spike_count=state.spike_count)


# ----------------------------------------------------------------------------- correlation

def smoothing_matrix(params: NetworkParams, window: float = 50.0, sample_every: float = 1.0) -> torch.Tensor:
    """(n_learn, rows) float64 averaging weights: the current sampled every ``sample_every`` ms
    at t_m = stim_off + (m+1) sample_every (m < rows, t_m <= train_time) is averaged over
    [T_j − window, T_j + window) around each update time T_j (TrainSpikingNet.jl's rolling average)."""
    rows = int(round((params.train_time - params.stim_off) / sample_every))
    t = params.stim_off + sample_every * torch.arange(1, rows + 1, dtype=torch.float64)
    centres = params.stim_off + params.learn_every * torch.arange(1, params.n_learn + 1, dtype=torch.float64)
    eps = 1e-9
    inside = (t.unsqueeze(0) >= centres.unsqueeze(1) - window - eps) & (t.unsqueeze(0) < centres.unsqueeze(1) + window - eps)
    weights = inside.double()
    return weights / weights.sum(1, keepdim=True).clamp_min(1.0)


def correlation(produced: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean over neurons of the Pearson correlation over time of produced and target (n_learn, N);
    neurons with a constant trace (NaN correlation) are left out. Returns (mean, per-neuron (N))."""
    if produced.shape != target.shape:
        raise ValueError(f"produced {tuple(produced.shape)} and target {tuple(target.shape)} differ in shape")
    a = produced.double() - produced.double().mean(0)
    b = target.double() - target.double().mean(0)
    per_neuron = (a * b).sum(0) / torch.sqrt((a * a).sum(0) * (b * b).sum(0))
    finite = torch.isfinite(per_neuron)
    return (float(per_neuron[finite].mean()) if bool(finite.any()) else float("nan")), per_neuron


# ----------------------------------------------------------------------------- trainer

@dataclass
class LoopStats:
    """One training loop (one trial): loop number (1-based), task, wall seconds (the trial, and the
    RLS updates within it), mean rate (Hz) and the correlation (NaN when not evaluated)."""

    loop: int
    task: int
    seconds: float
    rls_seconds: float
    rate_hz: float
    correlation: float = float("nan")


@dataclass
class TrialResult:
    stats: LoopStats
    smoothed: Optional[torch.Tensor] = None    # (n_learn, N) rolling-average u_total at the update times
    u_trace: Optional[torch.Tensor] = None     # (rows, N) u_total every sample_every ms over the whole trial
    per_neuron: Optional[torch.Tensor] = None  # (N) correlations


class _PrintProgress:
    """Progress as one printed line per loop when tqdm is not installed."""

    def set_postfix(self, **values):
        self.values = values

    def update(self, _):
        print("  ".join(f"{k} {v}" for k, v in self.values.items()), flush=True)

    def close(self):
        pass


class RLSTrainer:
    """Trains the plastic weights of ``net`` so each neuron's current follows ``targets``.

    targets (tasks, n_learn, N); backend "auto" (native on CPU when it builds, else torch),
    "native" or "torch"; device of the state (the network is moved there). State: w (N, 2L),
    P block-packed (N, blocked size) on the native backend (pack_blocked) or (N, n, n) on the
    torch one (P_full() gives (N, n, n) either way). Each training loop is one trial with a fresh random v(0);
    the task is loop % tasks (TrainSpikingNet.jl's default choice).
    """

    def __init__(self, net: Network, targets: torch.Tensor, backend: str = "auto", device=None,
                 threads: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 sample_every: float = 1.0, window: float = 50.0, deferred: int = DEFERRED_DOWNDATES):
        p = net.params.validate()
        self.device = torch.device(device) if device is not None else net.x_bal.device
        self.backend = resolve_backend(backend, self.device, p.torch_dtype)
        self.net = net.to(self.device)
        self.params = p
        self.targets = check_targets(targets, p, net.n_tasks).to(self.device)
        self.threads = threads
        self._chooser = ThreadChooser(torch.get_num_threads())
        self.generator = generator if generator is not None else torch.Generator().manual_seed(p.seed + 1)
        self.w = self.net.w0.clone().contiguous()
        P0 = initial_P(p).to(p.torch_dtype)
        n_cells, n = p.n_cells, 2 * p.L
        if self.backend == "native":
            check_network(self.net)
            self.P = BlockedP(pack_blocked(P0).unsqueeze(0).repeat(n_cells, 1).contiguous(), n, deferred)
        else:
            self.P = P0.to(self.device).unsqueeze(0).repeat(n_cells, 1, 1).contiguous()
        self.loop = 0
        self.history: list[LoopStats] = []
        self.sample_every = sample_every
        self.sample_steps = round(sample_every / p.dt)
        if self.sample_steps < 1 or abs(self.sample_steps * p.dt - sample_every) > 1e-9:
            raise ValueError(f"sample_every = {sample_every} ms must be a whole number of dt steps")
        self.window = window
        self._smoothing = smoothing_matrix(p, window, sample_every).to(p.torch_dtype).to(self.device)

    # -- state access
    def P_full(self) -> torch.Tensor:
        """(N, n, n) copy of the P matrices."""
        n = 2 * self.params.L
        return self.P.full() if self.backend == "native" else self.P.clone()

    def rls_update(self, state: SimState, target_row: torch.Tensor) -> None:
        normalized = self.params.normalized_weight_step
        if self.backend == "native":
            threads = self.threads
            if threads is None:
                small = self.P.base.numel() * self.P.base.element_size() < SMALL_P_BYTES
                threads = 1 if small else self._chooser.choose()
            start = time.perf_counter()
            self.P.update(self.w, self.net.plastic_inputs, state.r, state.u_static, target_row, normalized,
                          threads, check_inputs=False)  # checked by check_network in __init__
            if self.threads is None:
                self._chooser.record(threads, time.perf_counter() - start)
        else:
            rls_update_torch(self.P, self.w, self.net.plastic_inputs, state.r, state.u_static, target_row, normalized)

    def run_trial(self, task: int = 0, learn: bool = True, evaluate: bool = True, trace: bool = False) -> TrialResult:
        """One trial: stimulus, then the learning window with an RLS update every learn_every ms
        (learn=False: weights frozen). evaluate: correlation of the rolling-average u_total with the
        target; trace: also return u_total every sample_every ms over the whole trial."""
        p = self.params
        if not 0 <= task < self.net.n_tasks:
            raise ValueError(f"task {task} out of range (network has {self.net.n_tasks})")
        start = time.perf_counter()
        state = new_state(p, self.generator, self.device)
        record = Recording()
        if evaluate or trace:
            first = self.sample_steps if trace else p.stim_off_steps + self.sample_steps
            rows = (p.n_steps - first) // self.sample_steps + 1
            record = Recording(u_total=torch.zeros(rows, p.n_cells, dtype=p.torch_dtype, device=self.device),
                               first=first, every=self.sample_steps)
        sim = make_simulation(self.backend, self.net, state, self.w, task, True, record)
        rls_seconds = 0.0
        step = 1
        for j in range(p.n_learn):
            update_step = p.stim_off_steps + (j + 1) * p.learn_steps
            sim.run(step, update_step)
            step = update_step
            if learn:
                t0 = time.perf_counter()
                self.rls_update(state, self.targets[task, j])
                rls_seconds += time.perf_counter() - t0
        sim.run(step, p.n_steps + 1)
        rate = float(state.spike_count.double().mean()) / (p.train_time / 1000.0)
        result = TrialResult(stats=LoopStats(loop=self.loop, task=task, seconds=0.0, rls_seconds=rls_seconds,
                                             rate_hz=rate))
        if record.u_total is not None:
            learn_rows = record.u_total
            if trace:
                result.u_trace = record.u_total
                learn_rows = record.u_total[(p.stim_off_steps + self.sample_steps - first) // self.sample_steps:]
            learn_rows = learn_rows[: self._smoothing.shape[1]]
            result.smoothed = self._smoothing @ learn_rows
            result.stats.correlation, result.per_neuron = correlation(result.smoothed, self.targets[task])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result.stats.seconds = time.perf_counter() - start
        return result

    def train_loop(self, evaluate: bool = True, trace: bool = False) -> TrialResult:
        """One training loop (a trial with learning); appends its LoopStats to history."""
        task = self.loop % self.net.n_tasks
        self.loop += 1
        result = self.run_trial(task, learn=True, evaluate=evaluate, trace=trace)
        result.stats.loop = self.loop
        self.history.append(result.stats)
        return result

    def train(self, n_loops: int, evaluate_every: int = 1, progress: bool = False,
              callback: Optional[Callable[[TrialResult], None]] = None) -> list[LoopStats]:
        if not isinstance(n_loops, int) or n_loops < 0:
            raise ValueError(f"n_loops must be an int >= 0, got {n_loops!r}")
        bar = None
        if progress:
            try:
                from tqdm import tqdm  # optional (installed with the train extra), only for the progress bar
                bar = tqdm(total=n_loops, desc="RLS loops", unit="loop")
            except ImportError:
                bar = _PrintProgress()
        out = []
        for _ in range(n_loops):
            evaluate = evaluate_every > 0 and (self.loop + 1) % evaluate_every == 0
            result = self.train_loop(evaluate=evaluate)
            out.append(result.stats)
            if callback is not None:
                callback(result)
            if bar is not None:
                bar.set_postfix(rate=f"{result.stats.rate_hz:.2f}Hz", corr=f"{result.stats.correlation:.3f}",
                                s=f"{result.stats.seconds:.2f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    # -- checkpoints
    def state_dict(self) -> dict:
        return {"format": "exodus.rls/1", "params": self.params.to_dict(),
                "network": {k: v.cpu() for k, v in self.net.tensors().items()}, "targets": self.targets.cpu(),
                "w": self.w.cpu(), "P_packed": pack_symmetric(self.P_full()).cpu(),
                "loop": self.loop, "history": [vars(s) for s in self.history],
                "generator": self.generator.get_state(), "sample_every": self.sample_every, "window": self.window}

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path, backend: str = "auto", device=None, threads: Optional[int] = None) -> "RLSTrainer":
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != "exodus.rls/1":
            raise ValueError(f"{path} is not an exodus.rls checkpoint")
        params = NetworkParams.from_dict(data["params"])
        net = Network(params=params, **data["network"])
        generator = torch.Generator()
        generator.set_state(data["generator"])
        trainer = cls(net, data["targets"], backend=backend, device=device, threads=threads, generator=generator,
                      sample_every=data["sample_every"], window=data["window"])
        trainer.w.copy_(data["w"].to(trainer.w.device))
        n = 2 * params.L
        full = unpack_symmetric(data["P_packed"].to(params.torch_dtype), n)
        if trainer.backend == "native":
            trainer.P.base.copy_(pack_blocked(full))
        else:
            trainer.P.copy_(full.to(trainer.P.device))
        trainer.loop = data["loop"]
        trainer.history = [LoopStats(**s) for s in data["history"]]
        return trainer


def setup(params: NetworkParams, n_tasks: int = 1, backend: str = "auto", device=None,
          threads: Optional[int] = None, targets: str = "sinusoids", rates: Optional[torch.Tensor] = None,
          amplitude: float = 0.5, period: float = 1000.0,
          sigma: Optional[float] = None) -> tuple[RLSTrainer, SpontaneousStats]:
    """TrainSpikingNet.jl's init: draw the network, run it without plastic input (mean currents,
    rates), make the targets (``"sinusoids"`` around the mean currents, or ``"rates"``: currents
    from ``rates`` (n_learn, N) Hz via the Ricciardi curve with noise ``sigma``, by default
    estimated from the spontaneous run as TrainSpikingNet.jl does) and return a fresh trainer."""
    from .targets import rates_to_currents, ricciardi_sigma, sinusoid_targets

    params.validate()
    generator = torch.Generator().manual_seed(params.seed)
    net = build_network(params, n_tasks, generator)
    spont = spontaneous_activity(net, generator, backend)
    if targets == "sinusoids":
        utarg = sinusoid_targets(params, spont.u_mean, generator, n_tasks, amplitude, period)
    elif targets == "rates":
        if rates is None:
            raise ValueError("targets='rates' needs the rates (n_learn, N) in Hz")
        if sigma is None:
            sigma = ricciardi_sigma(spont.u_std, params)
            if not sigma > 1e-6:
                raise ValueError(f"the spontaneous run is nearly silent (current std {spont.u_std:.3g}): no noise "
                                 "level for the Ricciardi curve can be estimated; pass sigma")
        utarg = rates_to_currents(rates, sigma, params)
        if utarg.shape[0] != n_tasks:
            raise ValueError(f"rates hold {utarg.shape[0]} tasks, n_tasks = {n_tasks}")
    else:
        raise ValueError(f"targets must be 'sinusoids' or 'rates', got {targets!r}")
    return RLSTrainer(net, utarg, backend=backend, device=device, threads=threads), spont
