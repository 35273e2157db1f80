"""Online gradients of a Linear -> LIF block with memory independent of the sequence length
(forward-mode eligibility traces; Lohoff et al. 2025, e-prop, OSTL; DESIGN.md §7).

A long sequence is fed in chunks (batch, T_chunk, in_features); the loss of each chunk is
backpropagated right away. Within a chunk the gradient is the exact (EXODUS) one. Across chunks the
block carries, besides its membrane v, the forward-mode traces of v's derivatives:

    G_t = dv_t/dW[n, :] = kappa rho (alpha G_{t-1} + g s_t) = s_hat_t + D_t     (weight trace, (B, N, N_in))
    dv_t/dalpha, dv_t/db, dv_t/dtheta                                         (per neuron, (B, N))

so that a chunk's loss reaches the parameters through the membrane it started from: dL/dW +=
sum_b dL/dv_{t0-1} G_{t0-1}, and likewise for alpha, b, theta. For one layer whose loss at each step
depends on that step's outputs (spikes or v), the accumulated gradient over the whole sequence equals
full-sequence BPTT (tested to 1e-10 in float64); memory is O(B N N_in + chunk), flat in T. The
presynaptic trace s_hat is shared by the block's neurons (one tau_mem per block); D changes only
where kappa rho != 1 (surrogate nonzero, resets that act, clamps) and is updated lazily there
(cuda/cpu_online.cpp), so a truncated surrogate (exodus.surrogate.Truncated) keeps the trace update
sparse. The reset is kept (gradient "exodus"); ``detach_reset`` gives e-prop's trace (D = 0 for the
subtract reset).

Deeper stacks: each block's traces see only its own parameters; a chunk's loss still reaches lower
blocks within the chunk (autograd through the chunk), but not through earlier chunks of the block
above (the e-prop approximation across layers). Calls under torch.no_grad() (evaluation) do not
advance the traces: they are dropped, and gradients of later chunks then start from there. CPU only in
this version (the trace driver has no GPU kernel yet).

    block = exodus.LinearLIF(700, 256, tau_mem=10.0, gradient="online")
    for chunk, target in zip(x.split(100, 1), y.split(100, 1)):
        loss = loss_fn(readout(block(chunk)), target); loss.backward()   # traces carry over
    optimizer.step(); block.reset_states()

An existing network of nn.Linear -> exodus.LIF layers is trained online after ``to_online(model)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, functional
from .backends import launch
from .functional.lif import RESETS, _launch, _max_spikes_code, _options, _storage
from .reference import acc_dtype

__all__ = ["OnlineTraces", "online_forward", "fit_sequence", "to_online"]


@dataclass
class OnlineTraces:
    """The forward-mode state of one block after ``step`` steps (all in the math dtype)."""

    s_hat: Tensor        # (B, N_in) presynaptic trace (input filtered by the membrane, times the gain)
    dev: Tensor          # (B, N, N_in) weight-trace deviation D, each row as of its stamp
    stamp: Tensor        # (B, N) int64: global step of each row's last update
    e_alpha: Tensor      # (B, N) dv/dalpha
    e_bias: Tensor       # (B, N) dv/db
    e_theta: Tensor      # (B, N) dv/dtheta
    step: int = 0

    @classmethod
    def zeros(cls, B: int, N: int, N_in: int, dtype: torch.dtype, device) -> "OnlineTraces":
        z = lambda *shape: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return cls(z(B, N_in), z(B, N, N_in), torch.zeros((B, N), dtype=torch.int64, device=device), z(B, N),
                   z(B, N), z(B, N))

    def weight_trace(self, alpha: Tensor) -> Tensor:
        """G at the last step, (B, N, N_in) (dense; for tests and inspection)."""
        decay = alpha ** (self.step - 1 - self.stamp).clamp_min(0).to(alpha.dtype)
        return self.s_hat.unsqueeze(1) + decay.unsqueeze(2) * self.dev

    def matches(self, B: int, N: int, N_in: int, device) -> bool:
        return tuple(self.dev.shape) == (B, N, N_in) and self.dev.device == device


class _ThroughStartState(torch.autograd.Function):
    """Identity on the chunk's initial membrane v0; its backward turns dL/dv0 into the parameters'
    gradients through the traces: dL/dW = sum_b dL/dv0 G, dL/dalpha = sum dL/dv0 dv/dalpha, ..."""

    @staticmethod
    def forward(ctx, v0, weight, bias, alpha, theta, traces: OnlineTraces):
        ctx.traces = traces
        ctx.save_for_backward(alpha)
        ctx.shapes = (None if bias is None else bias.shape, theta.shape)
        return v0.clone()

    @staticmethod
    def backward(ctx, grad_v0):
        (alpha,) = ctx.saved_tensors
        tr = ctx.traces
        need_w, need_b, need_alpha, need_theta = ctx.needs_input_grad[1:5]
        g = grad_v0.to(tr.dev.dtype)
        grad_w = grad_b = grad_alpha = grad_theta = None
        if tr.step == 0:  # the first chunk starts from a constant membrane
            return (None,) * 6
        if need_w:
            decay = alpha.detach() ** (tr.step - 1 - tr.stamp).to(g.dtype)
            grad_w = g.t() @ tr.s_hat + torch.einsum("bn,bnj->nj", g * decay, tr.dev)
        if need_b:
            grad_b = (g * tr.e_bias).sum(0)
        if need_alpha:
            grad_alpha = (g * tr.e_alpha).sum().reshape(alpha.shape)
        if need_theta:
            grad_theta = (g * tr.e_theta).sum(0)
            if len(ctx.shapes[1]) == 0:
                grad_theta = grad_theta.sum()
        return None, grad_w, grad_b, grad_alpha, grad_theta, None


def _advance(traces: OnlineTraces, x: Tensor, s: Tensor, v0: Tensor, alpha: Tensor, theta_n: Tensor, o,
             gain: float) -> tuple[OnlineTraces, Tensor]:
    """The traces after the chunk (new tensors: the chunk's backward still needs the old ones) and the
    membrane at its end (B, N)."""
    B, T, N = x.shape
    acc = traces.dev.dtype
    new = OnlineTraces(traces.s_hat.clone(), traces.dev.clone(), traces.stamp.clone(), traces.e_alpha.clone(),
                       traces.e_bias.clone(), traces.e_theta.clone(), traces.step + T)
    v_end = torch.empty((B, N), dtype=acc, device=x.device)
    plan = launch.lif_online_advance_plan(_storage(x, "cpu").contiguous(), _storage(s, "cpu").contiguous(),
                                          v0.to(acc).contiguous(), theta_n, new.s_hat, new.dev, new.stamp, new.e_alpha,
                                          new.e_bias, new.e_theta, v_end, traces.step, float(alpha), gain, o)
    _launch(plan, "cpu", _storage(x, "cpu").dtype, acc, x.device)
    return new, v_end


def online_forward(block, s: Tensor) -> Tensor:
    """One chunk through an ``exodus.LinearLIF(gradient="online")`` block: spikes (batch, T_chunk, out);
    updates ``block.v`` (detached) and ``block.traces``."""
    functional.check_input(s)
    if s.device.type != "cpu":
        raise NotImplementedError("gradient='online' runs on CPU tensors in this version (the trace driver has no GPU "
                                  "kernel yet); use gradient='exodus' on the GPU")
    if not backends._available("cpu"):
        raise RuntimeError("gradient='online' needs the compiled CPU kernels: " + str(backends.cpu._error))
    B, T, N_in = s.shape
    N = block.out_features
    acc = acc_dtype(s.dtype)
    alpha = block.alpha().detach().to(acc)
    theta = block.threshold
    theta_n = theta.detach().to(acc).expand((N,)).contiguous()
    traces = block.traces
    if traces is None or not traces.matches(B, N, N_in, s.device) or traces.dev.dtype != acc:
        traces = OnlineTraces.zeros(B, N, N_in, acc, s.device)
    v_prev = block.v if (block.v is not None and tuple(block.v.shape) == (B, N)) else None
    v0 = (v_prev.detach() if v_prev is not None else torch.zeros((B, N), dtype=s.dtype, device=s.device)).to(s.dtype)
    v0_in = _ThroughStartState.apply(v0, block.weight, block.bias, block.alpha(), theta, traces)
    x = F.linear(s, block.weight, block.bias)
    options = dict(reset=block.reset, v_min=block.v_min, max_spikes_per_bin=block.max_spikes_per_bin,
                   surrogate=block.surrogate, norm_input=block.norm_input, grad_scale=block.grad_scale,
                   backend=block.backend)
    gradient = "slayer" if block.detach_reset else "exodus"
    spikes, v = functional.lif(x, block.alpha(), theta, v0_in, gradient=gradient, v_trace=block.record_states,
                               **options)
    if not torch.is_grad_enabled():  # evaluation: no traces to carry (they restart at the next chunk with grad)
        block.traces = None
        if block.record_states:
            block.recordings = {"v": v}
        block.v = (v[:, -1] if block.record_states else v).detach() if T > 0 else v0
        return spikes
    o = _options(RESETS[block.reset], _max_spikes_code(block.max_spikes_per_bin), block.v_min is not None,
                 0.0 if block.v_min is None else float(block.v_min), bool(block.norm_input), True,
                 1 if gradient == "slayer" else 0, block.surrogate.kind,
                 float(block.grad_scale) if gradient == "slayer" else 1.0, block.surrogate.kernel_params())
    gain = float(1 - alpha) if block.norm_input else 1.0
    with torch.no_grad():
        block.traces, v_end = _advance(traces, x.detach(), s.detach(), v0, alpha.detach(), theta_n, o, gain)
    if block.record_states:
        block.recordings = {"v": v}
    block.v = v_end.to(s.dtype)  # detached: no graph across chunks, memory flat in T
    return spikes


def fit_sequence(model: torch.nn.Module, x: Tensor, loss_fn: Callable[[Tensor, slice], Tensor], chunk: int,
                 reset: bool = True) -> float:
    """Feed ``x`` (batch, time, ...) through ``model`` in chunks of ``chunk`` steps, calling
    ``loss_fn(output_chunk, time_slice).backward()`` after each: the parameters' ``.grad`` then hold the
    gradient of the summed loss over the whole sequence (exact for one online block; see the module
    docstring). Returns the summed loss. Does not step an optimizer; ``reset`` clears the model's states
    (and traces) first."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if reset:
        for module in model.modules():
            if hasattr(module, "reset_states"):
                module.reset_states()
    total = 0.0
    for start in range(0, x.shape[1], chunk):
        window = slice(start, min(start + chunk, x.shape[1]))
        loss = loss_fn(model(x[:, window]), window)
        loss.backward()
        total += float(loss.detach())
    return total


def to_online(module: torch.nn.Module, *, detach_reset: bool = False) -> torch.nn.Module:
    """Make the LIF layers fed by a Linear train online, in place: in every nn.Sequential inside ``module``,
    each nn.Linear directly followed by an exodus.LIF (or IAF) becomes one
    ``exodus.LinearLIF(gradient="online")`` block at the Linear's position, and the LIF's position holds an
    nn.Identity (indices stay valid). The block holds the same parameter objects (the Linear's weight and
    bias, a trained tau_mem / threshold), so an optimizer built before keeps working; the neuron options
    (reset, v_min, surrogate, ...) are copied and the LIF's ``gradient`` is replaced by "online"
    (``detach_reset=True``: e-prop's trace). States start fresh. Returns ``module``.

    The LIF needs one tau_mem (a number), no tau_syn and no recurrence, and must see the Linear's output
    (batch, time, out_features) directly; a ValueError names the layer otherwise, and when no such pair
    exists at all."""
    from .layers import IAF, LIF, LinearLIF

    converted = 0
    for prefix, sequential in module.named_modules():
        if not isinstance(sequential, torch.nn.Sequential):
            continue
        names = list(sequential._modules)
        for first, second in zip(names, names[1:]):
            linear, lif = sequential._modules[first], sequential._modules[second]
            if not isinstance(linear, torch.nn.Linear) or type(lif) not in (LIF, IAF):
                continue
            where = f"{prefix + '.' if prefix else ''}{first} (Linear) -> {prefix + '.' if prefix else ''}{second}"
            if lif.recurrent or lif.tau_syn is not None:
                raise ValueError(f"to_online: {where} is {'recurrent' if lif.recurrent else 'synaptic (tau_syn)'}; "
                                 f"online blocks are Linear -> LIF only")
            if lif.tau_mem.numel() != 1:
                raise ValueError(f"to_online: {where} has a tau_mem of shape {tuple(lif.tau_mem.shape)}; online "
                                 f"blocks need one tau_mem per layer (per-neuron thresholds are fine)")
            block = LinearLIF(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              tau_mem=float(lif.tau_mem.detach()), threshold=lif.threshold.detach().clone(), reset=lif.reset,
                              v_min=lif.v_min, max_spikes_per_bin=lif.max_spikes_per_bin, surrogate=lif.surrogate,
                              norm_input=lif.norm_input, grad_scale=lif.grad_scale, gradient="online",
                              detach_reset=detach_reset, train_tau=isinstance(lif.tau_mem, torch.nn.Parameter),
                              train_threshold=isinstance(lif.threshold, torch.nn.Parameter),
                              record_states=lif.record_states, backend=lif.backend)
            block.weight, block.bias = linear.weight, linear.bias
            for name in ("tau_mem", "threshold"):  # the same Parameter objects when they are trained
                value = getattr(lif, name)
                if isinstance(value, torch.nn.Parameter):
                    setattr(block, name, value)
            sequential.add_module(first, block)  # replaces, keeping the position
            sequential.add_module(second, torch.nn.Identity())
            converted += 1
    if not converted:
        raise ValueError("to_online: no nn.Linear directly followed by an exodus.LIF inside an nn.Sequential; build "
                         "the layers as exodus.LinearLIF(gradient='online') instead")
    return module
