"""Two-state adaptive neurons (ALIF / adLIF) and recurrent layers, DESIGN.md §4–5.

    spikes, v, w = adaptive_lif(x, alpha, threshold, rho, beta, gamma, zeta, eta, v0, w0)
    spikes, v, w = adaptive_lif(x, alpha, threshold, ..., weight_rec=M, a0=a0)    # recurrent

The ``torch.library`` custom ops ``exodus::adaptive_scan`` and ``exodus::adaptive_scan_backward``
(``_into_h``: the same, writing dL/dx over the saved h on the CPU) run the kernels of cuda/adaptive.cuh. A feed-forward layer
is one kernel launch over all steps. The recurrent forward is one launch too: the recurrent input
M a_{t-1} is summed inside the kernel over the neurons that spiked (one GPU block per batch row, the
spikes in shared memory; N <= 1024 on the GPU, else one launch per step with cuBLAS in between).
The recurrent backward on the CPU is one call as well (exodus_cpu_adaptive_recurrent_backward): each
thread owns a range of neuron columns, keeps its columns of M packed in its cache and computes the dense
product c H_{t+1} M of its columns at every step (one barrier per step), then dL/dM over the spikes
only. On the GPU it launches the reverse-step driver once per step, with c H_{t+1} M computed by
cuBLAS between the launches. Saved for the backward: h, and w — every w_t on the GPU (two elements per
neuron-step), on the CPU two rows every 32 steps from which the backward rebuilds the rest (one element
per neuron-step and 1/16) — and for a recurrent layer the output spikes (held by the caller anyway).

Without adaptation (beta = gamma = zeta = eta = 0 given as numbers, no w0) w is never computed
and the neuron is exodus.functional.lif's LIF, bit for bit: that is how recurrent LIF layers run.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends, reference
from ..reference import acc_dtype
from ..surrogate import Surrogate
from ..backends import launch
from ..backends.memory import empty_for_kernel
from .lif import (RESETS, _as_parameter, _check_range, _check_threshold, _check_v0, _initial_state, _is_compiling, _options,
                  _storage, check_input, check_spiking_options, grad_x_in_h)

__all__ = ["adaptive_lif", "adaptive_lif_ref", "COUPLINGS"]

adaptive_lif_ref = reference.adaptive_lif_ref

# Order of the packed (7, N) parameter array (AdaptiveParam in cuda/adaptive.cuh).
PARAMETERS = ("alpha", "threshold", "rho", "beta", "gamma", "zeta", "eta")
COUPLINGS = ("beta", "gamma", "zeta", "eta")
# Test-only backend: the GPU drivers executed on the CPU through cuda/host_emulation.h.
EMULATION = "emulation"


def _fused_recurrent(backend: str, neurons: int) -> bool:
    """The recurrent forward runs in one launch (spikes of a batch row shared by one GPU block; the CPU
    driver has no limit); wider GPU layers take one launch per step with cuBLAS in between."""
    return backend == "cpu" or neurons <= launch.MAX_RECURRENT_NEURONS


def _run_forward(plan, rec: Optional[Tensor], weight_rec: Optional[Tensor], a0: Optional[Tensor],
                 spikes: Tensor, backend: str, storage: torch.dtype, acc: torch.dtype) -> None:
    T = spikes.shape[1]
    run = backends.bind(plan, backend, storage, acc, spikes.device)
    if weight_rec is None:
        run(0, T)
        return
    weight_t = weight_rec.t()
    previous = a0
    for t in range(T):
        torch.mm(previous, weight_t, out=rec)       # x_t <- x_t + M a_{t-1}  (DESIGN §5)
        run(t, t + 1)
        previous = spikes[:, t] if spikes.dtype == acc else spikes[:, t].to(acc)


@torch.library.custom_op("exodus::adaptive_scan", mutates_args=())
def adaptive_scan(x: Tensor, params: Tensor, v0: Tensor, w0: Tensor, weight_rec: Optional[Tensor],
                  a0: Optional[Tensor], reset: int, max_spikes: int, has_vmin: bool, v_min: float, norm_input: bool,
                  state_trace: bool, adaptive: bool, gradient: int, surrogate: int, grad_scale: float,
                  surrogate_params: list[float], backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused scan of DESIGN §4 (§5 with weight_rec). x (B, T, N) contiguous; params (7, N), v0, w0, a0
    (B, N) and weight_rec (N, N) in the math dtype. Returns spikes and the states v, w — traces
    (B, T, N) with state_trace, else the final (B, N) — in x's dtype, then h and w (B, T, N) in the math
    dtype (saved for the backward). Without adaptation the w outputs are empty."""
    o = _options(reset, max_spikes, has_vmin, v_min, norm_input, state_trace, gradient, surrogate, grad_scale,
                 surrogate_params)
    acc = acc_dtype(x.dtype)
    xs = _storage(x, backend)
    B, T, N = xs.shape
    # Large outputs come from exodus' pool of reused, already faulted-in memory (backends/memory.py).
    spikes = empty_for_kernel(xs.shape, xs.dtype, xs.device)
    v_state, w_state = v0.clone(), (w0.clone() if adaptive else None)
    v_out = empty_for_kernel(xs.shape, xs.dtype, xs.device) if state_trace else None
    w_out = empty_for_kernel(xs.shape, xs.dtype, xs.device) if state_trace and adaptive else None
    h_save = empty_for_kernel(xs.shape, acc, x.device)
    w_save = empty_for_kernel(_w_saved_shape(xs.shape, backend), acc, x.device) if adaptive else None
    if B * N > 0 and T > 0:
        if weight_rec is not None and _fused_recurrent(backend, N):
            plan = launch.adaptive_recurrent_forward_plan(xs, weight_rec.t().contiguous(), a0.clone(), params, v_state,
                                                          w_state, spikes, v_out, w_out, h_save, w_save, o, adaptive)
            backends.bind(plan, backend, xs.dtype, acc, x.device)(0, T)
        else:
            rec = torch.zeros((B, N), dtype=acc, device=x.device) if weight_rec is not None else None
            plan = launch.adaptive_forward_plan(xs, rec, params, v_state, w_state, spikes, v_out, w_out, h_save,
                                                w_save, o, adaptive)
            _run_forward(plan, rec, weight_rec, a0, spikes, backend, xs.dtype, acc)
    v = v_out if state_trace else v_state
    w = (w_out if state_trace else w_state) if adaptive else x.new_empty((0,))
    return (spikes.to(x.dtype), v.to(x.dtype), w.to(x.dtype), h_save,
            w_save if adaptive else h_save.new_empty((0,)))


def _w_saved_shape(shape, backend: str) -> tuple[int, int, int]:
    """What the forward saves of w: every w_t on the GPU, checkpoints every few steps on the CPU (the
    backward rebuilds the rest from h, cuda/cpu_adaptive.cpp)."""
    B, T, N = shape
    return (B, backends.cpu.adaptive_w_checkpoint_rows(T), N) if backend == "cpu" else (B, T, N)


@adaptive_scan.register_fake
def _(x, params, v0, w0, weight_rec, a0, reset, max_spikes, has_vmin, v_min, norm_input, state_trace, adaptive,
      *options):
    acc = acc_dtype(x.dtype)
    B, _, N = x.shape
    v = torch.empty_like(x) if state_trace else x.new_empty((B, N))
    w = (torch.empty_like(x) if state_trace else x.new_empty((B, N))) if adaptive else x.new_empty((0,))
    w_save = x.new_empty(_w_saved_shape(x.shape, options[-1]), dtype=acc) if adaptive else x.new_empty((0,), dtype=acc)
    return torch.empty_like(x), v, w, x.new_empty(x.shape, dtype=acc), w_save


def _run_backward(plan, grad_x: Tensor, grad_rec: Optional[Tensor], weight_rec: Optional[Tensor], backend: str,
                  storage: torch.dtype, acc: torch.dtype) -> None:
    T = grad_x.shape[1]
    run = backends.bind(plan, backend, storage, acc, grad_x.device)
    if weight_rec is None:
        run(0, T)
        return
    for t in range(T - 1, -1, -1):
        if t < T - 1:  # dL/da_t gains M^T (c H_{t+1}); c H_{t+1} = dL/dx_{t+1}  (DESIGN §5)
            following = grad_x[:, t + 1] if grad_x.dtype == acc else grad_x[:, t + 1].to(acc)
            torch.mm(following, weight_rec, out=grad_rec)
        run(t, t + 1)


def _adaptive_scan_backward(grad_spikes: Optional[Tensor], grad_v: Optional[Tensor], grad_w: Optional[Tensor],
                           h_save: Tensor, w_save: Tensor, params: Tensor, v0: Tensor, w0: Tensor,
                           weight_rec: Optional[Tensor], a0: Optional[Tensor], spikes: Optional[Tensor],
                           need_params: bool, into_h: bool, reset: int,
                           max_spikes: int, has_vmin: bool, v_min: float, norm_input: bool, state_trace: bool,
                           adaptive: bool, gradient: int, surrogate: int, grad_scale: float,
                           surrogate_params: list[float],
                           backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reverse scan of DESIGN §4/§5. spikes: the forward's output (B, T, N) with weight_rec (else
    None). Returns dL/dx (B, T, N), dL/dparams (7, N) (zeros when not needed), dL/dv0, dL/dw0 (B, N),
    and with weight_rec dL/dweight_rec (N, N) and dL/da0 (B, N) (else empty tensors).

    into_h (CPU only): dL/dx is written over h_save, whose step t the reverse scan reads for
    the last time just before it writes dL/dx_t there (one (B, T, N) buffer less at the peak);
    dL/dx is then returned empty and h_save holds it."""
    o = _options(reset, max_spikes, has_vmin, v_min, norm_input, state_trace, gradient, surrogate, grad_scale,
                 surrogate_params)
    acc = h_save.dtype
    given = next(g for g in (grad_spikes, grad_v, grad_w) if g is not None)
    B, T, N = h_save.shape
    storage = _storage(given, backend).dtype

    def trace(grad: Optional[Tensor]) -> Optional[Tensor]:  # a (B, T, N) gradient in the kernels' storage dtype
        return None if grad is None or not state_trace else _storage(grad, backend).to(storage).contiguous()

    def final(grad: Optional[Tensor]) -> Tensor:  # the final state's gradient starts the carry
        if grad is None or state_trace:
            return torch.zeros((B, N), dtype=acc, device=h_save.device)
        return grad.to(acc).contiguous().clone()

    gs = None if grad_spikes is None else _storage(grad_spikes, backend).to(storage).contiguous()
    carry_v, carry_w = final(grad_v), final(grad_w if adaptive else None)
    if into_h and (backend != "cpu" or storage != acc):
        raise ValueError("into_h needs the cpu backend (kernels store in the math dtype)")
    grad_x = h_save if into_h else empty_for_kernel((B, T, N), storage, h_save.device)
    recurrent = weight_rec is not None
    # Partial sums of the parameter gradients: one slot per batch row (GPU) or per CPU thread.
    slots = torch.get_num_threads() if backend == "cpu" else B
    grad_params = torch.zeros((7, slots, N), dtype=acc, device=h_save.device) if need_params else None
    grad_v_trace, grad_w_trace = trace(grad_v), trace(grad_w) if adaptive else None
    w_part = w_save if adaptive else None
    w0_part = w0 if adaptive else None
    carry_w_part = carry_w if adaptive else None
    if recurrent and backend == "cpu":
        # One call: the reverse scan with its per-step product M^T c H_{t+1} and dL/dM over the
        # spikes only (cuda/cpu_adaptive.cpp).
        grad_weight_t = torch.empty((N, N), dtype=acc)
        if B * N > 0 and T > 0:
            spikes_acc = _storage(spikes, backend).to(acc).contiguous()
            failed = backends.cpu.run(launch.adaptive_recurrent_backward_plan(
                h_save, w_part, gs, grad_v_trace, grad_w_trace, weight_rec.contiguous(), spikes_acc, a0.to(acc).contiguous(),
                params, v0, grad_x, carry_v, carry_w_part, grad_params, grad_weight_t, o, adaptive), acc)
            if failed:
                raise MemoryError(f"the recurrent CPU backward could not allocate its scratch ({N} neurons: the "
                                  f"recurrent weight's panels, {B} x {N} recurrent terms and rebuilt w)")
            grad_weight, grad_a0 = grad_weight_t.t().contiguous(), grad_x[:, 0].to(acc) @ weight_rec
        else:
            grad_weight, grad_a0 = torch.zeros_like(weight_rec), torch.zeros_like(a0)
    else:
        # Feed-forward: one launch. Recurrent on the GPU: one launch per step with the product in
        # between, then dL/dM = sum over (b, t) of dL/dx_t (x) a_{t-1} (DESIGN §5) as one dense
        # product with a_{t-1} for every step (a0 first; the kernel fills the rest).
        prev_spikes = empty_for_kernel((B, T, N), storage, h_save.device) if recurrent else None
        if prev_spikes is not None and T > 0:
            prev_spikes[:, 0] = a0
        grad_rec = torch.zeros((B, N), dtype=acc, device=h_save.device) if recurrent else None
        if B * N > 0 and T > 0:
            plan = launch.adaptive_backward_plan(h_save, w_part, gs, grad_v_trace, grad_w_trace, grad_rec, params, v0,
                                                 w0_part, grad_x, prev_spikes, carry_v, carry_w_part, grad_params, o,
                                                 adaptive)
            _run_backward(plan, grad_x, grad_rec, weight_rec, backend, storage, acc)
        if recurrent and T > 0:
            gx, a_prev = grad_x.to(acc).reshape(B * T, N), prev_spikes.to(acc).reshape(B * T, N)
            grad_weight = gx.t() @ a_prev                  # sum over (b, t) of dL/dx_t (x) a_{t-1}  (DESIGN §5)
            grad_a0 = grad_x[:, 0].to(acc) @ weight_rec
        elif recurrent:
            grad_weight, grad_a0 = torch.zeros_like(weight_rec), torch.zeros_like(a0)
        else:
            grad_weight, grad_a0 = h_save.new_empty((0,)), h_save.new_empty((0,))
    out_dtype = given.dtype
    grad_p = grad_params.sum(1) if need_params else torch.zeros((7, N), dtype=acc, device=h_save.device)
    grad_x = h_save.new_empty((0,), dtype=out_dtype) if into_h else grad_x.to(out_dtype)
    return grad_x, grad_p, carry_v, carry_w, grad_weight, grad_a0


def _adaptive_scan_backward_fake(grad_spikes, grad_v, grad_w, h_save, w_save, params, v0, w0, weight_rec, a0, spikes,
                                 need_params, into_h, *options):
    given = next(g for g in (grad_spikes, grad_v, grad_w) if g is not None)
    B, _, N = h_save.shape
    recurrent = weight_rec is not None
    return (h_save.new_empty((0,) if into_h else h_save.shape, dtype=given.dtype), h_save.new_empty((7, N)),
            h_save.new_empty((B, N)), h_save.new_empty((B, N)), h_save.new_empty((N, N) if recurrent else (0,)),
            h_save.new_empty((B, N) if recurrent else (0,)))


# One implementation, two ops: the second declares that it writes dL/dx over h_save (into_h=True).
adaptive_scan_backward = torch.library.custom_op("exodus::adaptive_scan_backward", mutates_args=())(
    _adaptive_scan_backward)
adaptive_scan_backward_into_h = torch.library.custom_op("exodus::adaptive_scan_backward_into_h",
                                                        mutates_args=("h_save",))(_adaptive_scan_backward)
adaptive_scan_backward.register_fake(_adaptive_scan_backward_fake)
adaptive_scan_backward_into_h.register_fake(_adaptive_scan_backward_fake)


def _setup_context(ctx, inputs, output):
    x, params, v0, w0, weight_rec, a0, *options = inputs
    # The output spikes are a_{t-1} of dL/dM (recurrent only; the caller holds them anyway).
    ctx.save_for_backward(output[3], output[4], params, v0, w0, weight_rec, a0,
                          output[0] if weight_rec is not None else None)
    ctx.options = options
    ctx.set_materialize_grads(False)  # outputs outside the loss arrive as None: no streams of zeros


def _backward(ctx, grad_spikes, grad_v, grad_w, grad_h, grad_w_save):
    h_save, w_save, params, v0, w0, weight_rec, a0, spikes = ctx.saved_tensors
    adaptive = ctx.options[6]
    if not adaptive:
        grad_w = None
    if grad_spikes is None and grad_v is None and grad_w is None:
        return (None,) * 18
    need_params = ctx.needs_input_grad[1]
    # On the CPU dL/dx takes h's buffer (h is read for the last time as dL/dx is written), unless
    # the graph is kept for another backward (retain_graph / create_graph, gradcheck) or traced.
    into_h = grad_x_in_h(ctx.options[-1], h_save)
    op = adaptive_scan_backward_into_h if into_h else adaptive_scan_backward
    grad_x, grad_p, grad_v0, grad_w0, grad_weight, grad_a0 = op(
        grad_spikes, grad_v, grad_w, h_save, w_save, params, v0, w0, weight_rec, a0, spikes, need_params,
        into_h, *ctx.options)
    if into_h:
        grad_x = h_save.detach().to(grad_x.dtype)  # no copy in float32 / float64
    recurrent = weight_rec is not None
    return (grad_x, grad_p if need_params else None, grad_v0, grad_w0 if adaptive else None,
            grad_weight if recurrent else None, grad_a0 if recurrent else None) + (None,) * 12


adaptive_scan.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API

def _is_zero_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _check_finite(name: str, value: Tensor) -> None:
    if _is_compiling() or value.device.type == "meta":
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")


def _check_recurrent(x: Tensor, weight_rec, a0) -> None:
    if not isinstance(weight_rec, Tensor):
        raise TypeError(f"weight_rec must be a (N, N) tensor or None, got {type(weight_rec).__name__}")
    if x.dim() != 3:
        raise ValueError("a recurrent layer needs input of shape (batch, time, neurons) with one feature dim; "
                         f"got shape {tuple(x.shape)} (flatten the features first)")
    N = x.shape[2]
    if tuple(weight_rec.shape) != (N, N):
        raise ValueError(f"weight_rec must have shape (N, N) = {(N, N)} for {N} neurons, got {tuple(weight_rec.shape)}")
    if not torch.is_floating_point(weight_rec):
        raise TypeError(f"weight_rec must be a floating-point tensor, got dtype {weight_rec.dtype}")
    if weight_rec.device != x.device:
        raise ValueError(f"weight_rec is on {weight_rec.device} but the input is on {x.device}")
    _check_finite("weight_rec", weight_rec)
    _check_v0("a0", a0, x)


def adaptive_lif(
    x: Tensor,
    alpha,
    threshold=1.0,
    rho=0.0,
    beta=0.0,
    gamma=0.0,
    zeta=0.0,
    eta=0.0,
    v0: Optional[Tensor] = None,
    w0: Optional[Tensor] = None,
    *,
    weight_rec: Optional[Tensor] = None,
    a0: Optional[Tensor] = None,
    reset: str = "subtract",
    v_min: Optional[float] = None,
    max_spikes_per_bin: Optional[int] = 1,
    surrogate: Optional[Surrogate] = None,
    norm_input: bool = False,
    gradient: str = "exodus",
    grad_scale: float = 1.0,
    state_trace: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive LIF scan (DESIGN.md §4), recurrent with ``weight_rec`` (§5).

    x: input current (batch, time, *features); with weight_rec the features must be one dim N and
    weight_rec is (N, N): x_t <- x_t + weight_rec @ a_{t-1}, a0 (batch, N) the spikes before the first
    step (default 0). alpha = exp(-1/tau_mem), rho = exp(-1/tau_adapt) in [0, 1]; threshold > 0 (the
    adaptive threshold theta + beta w may fall to <= 0 for beta < 0: never clamped); couplings beta
    (threshold), gamma (current), zeta (membrane -> w), eta (spike -> w): numbers or tensors broadcastable
    to the features. v0, w0: (batch, *features), default 0.
    Returns (spikes, v, w) in x's dtype: traces (batch, time, *features), or with state_trace=False the
    final states (batch, *features). gradient: "exodus" (exact), "slayer" (reset detached, surrogate x
    grad_scale) or "bptt" (autograd through exodus.reference.adaptive_lif_ref).
    """
    check_input(x)
    max_spikes, surrogate = check_spiking_options(reset, gradient, max_spikes_per_bin, surrogate, grad_scale)
    adaptive = not (all(_is_zero_number(c) for c in (beta, gamma, zeta, eta)) and w0 is None)
    values = dict(zip(PARAMETERS, (alpha, threshold, rho, beta, gamma, zeta, eta)))
    tensors = {name: _as_parameter(name, value, x) for name, value in values.items()}
    _check_range("alpha" + (" (with norm_input)" if norm_input else ""), tensors["alpha"], 0.0, 1.0,
                 low_open=False, high_open=bool(norm_input))
    _check_range("rho", tensors["rho"], 0.0, 1.0, low_open=False)
    _check_threshold(tensors["threshold"], v_min)
    for name in COUPLINGS:
        _check_finite(name, tensors[name])
    _check_v0("v0", v0, x)
    _check_v0("w0", w0, x)
    if weight_rec is not None:
        _check_recurrent(x, weight_rec, a0)
    elif a0 is not None:
        raise ValueError("a0 (the previous spikes) is only used by a recurrent layer: pass weight_rec too")
    chosen = EMULATION if backend == EMULATION and x.device.type == "cpu" else backends.resolve(backend, x.device)
    if gradient == "bptt" or chosen == "torch":
        spikes, v, w = reference.adaptive_lif_ref(
            x, *(tensors[name] for name in PARAMETERS), v0, w0, weight_rec=weight_rec, a0=a0, reset=reset,
            v_min=v_min, max_spikes_per_bin=max_spikes_per_bin, surrogate=surrogate, norm_input=norm_input,
            gradient=gradient, grad_scale=grad_scale)
        if not state_trace:
            v = v[:, -1].clone() if x.shape[1] > 0 else _initial_state(v0, x)
            w = w[:, -1].clone() if x.shape[1] > 0 else _initial_state(w0, x)
        return spikes, v, w
    B, T, features = x.shape[0], x.shape[1], tuple(x.shape[2:])
    N = math.prod(features)
    acc = acc_dtype(x.dtype)
    if T == 0 and not state_trace:
        return x.clone(), _initial_state(v0, x), _initial_state(w0, x)
    x3 = x.reshape(B, T, N).contiguous()
    params = torch.stack([tensors[name].to(acc).expand(features).reshape(N) for name in PARAMETERS]).contiguous()

    def state(value: Optional[Tensor]) -> Tensor:
        if value is None:
            return torch.zeros((B, N), dtype=acc, device=x.device)
        return value.to(acc).expand((B, *features)).reshape(B, N).contiguous()

    recurrent = weight_rec is not None
    spikes, v, w, _, _ = adaptive_scan(
        x3, params, state(v0), state(w0), weight_rec.to(acc).contiguous() if recurrent else None,
        state(a0) if recurrent else None, RESETS[reset], max_spikes, v_min is not None,
        0.0 if v_min is None else float(v_min), bool(norm_input), bool(state_trace), adaptive,
        1 if gradient == "slayer" else 0, surrogate.kind, float(grad_scale), list(surrogate.kernel_params()), chosen)
    out_shape = x.shape if state_trace else (B, *features)
    v = v.view(out_shape)
    w = w.view(out_shape) if adaptive else x.new_zeros(()).expand(out_shape)
    return spikes.view(x.shape), v, w
