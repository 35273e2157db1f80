"""Stateless, differentiable neuron scans (pure functions of the state).

    spikes, v = lif(x, alpha, threshold, v0)       # LIF / IAF (alpha = 1)
    v = leaky(x, alpha, v0)                        # ExpLeak, synaptic current

All tensors are (batch, time, *features); alpha = exp(-1/tau) and threshold are
scalars or tensors broadcastable to the feature shape (per-neuron parameters);
v0 is (batch, *features) or broadcastable to it. Time is in steps (dt = 1).

The fused path is a pair of ``torch.library`` custom ops per neuron
(``exodus::lif_scan`` / ``exodus::lif_scan_backward``, ``exodus::leaky_scan`` /
``exodus::leaky_scan_backward``) with fake implementations, so models run under
``torch.compile`` without graph breaks. The forward saves one element per
neuron-step (the pre-reset membrane h); the backward is the O(T) reverse scan of
DESIGN.md §2 (exact, "exodus") or its detached-reset variant ("slayer").
``gradient="bptt"`` or ``backend="torch"`` run the plain-PyTorch reference
(exodus.reference) under autograd instead.

NaN or inf in the input propagate like in any torch op (a NaN membrane stays NaN
and does not spike); they never crash the kernels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import backends, reference
from ..backends import launch
from ..backends.memory import empty_for_kernel
from ..reference import acc_dtype
from ..surrogate import SingleExponential, Surrogate

__all__ = ["lif", "leaky", "lif_ref", "leaky_ref", "RESETS", "GRADIENTS"]

lif_ref = reference.lif_ref
leaky_ref = reference.leaky_ref

RESETS = {"subtract": 0, "zero": 1}
GRADIENTS = ("exodus", "slayer", "bptt")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- validation

def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_input(x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor of shape (batch, time, *features), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"input must have shape (batch, time, *features) with at least 2 dims, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input dtype must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _as_parameter(name: str, value, x: Tensor) -> Tensor:
    """A neuron parameter as a tensor on x's device that broadcasts to the feature shape."""
    features = tuple(x.shape[2:])
    if isinstance(value, Tensor):
        if value.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.device != x.device:
            raise ValueError(f"{name} is on {value.device} but the input is on {x.device}")
        try:
            shape = torch.broadcast_shapes(tuple(value.shape), features)
        except RuntimeError:
            shape = None
        if shape != features:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the feature shape {features} "
                             f"of the input {tuple(x.shape)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor(float(value), dtype=acc_dtype(x.dtype), device=x.device)


def _check_range(name: str, value: Tensor, low: float, high: float, low_open: bool, high_open: bool = False) -> None:
    if _is_compiling() or value.device.type == "meta":  # no values to check
        return
    with torch.no_grad():
        bad = (value <= low if low_open else value < low) | (value >= high if high_open else value > high)
        if bool((bad | torch.isnan(value)).any()):
            interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
            raise ValueError(f"{name} must lie in {interval}; got values from "
                             f"{value.min().item()} to {value.max().item()}")


def _check_threshold(theta: Tensor, v_min: Optional[float]) -> None:
    _check_range("threshold", theta, 0.0, math.inf, low_open=True)
    if v_min is not None:
        if isinstance(v_min, bool) or not isinstance(v_min, (int, float)) or math.isnan(v_min):
            raise TypeError(f"v_min must be a number or None, got {v_min!r}")
        if not _is_compiling() and theta.device.type != "meta" and bool((theta <= v_min).any()):
            raise ValueError(f"v_min ({v_min}) must be below the threshold (min threshold {theta.min().item()})")


def _check_v0(name: str, v0: Optional[Tensor], x: Tensor) -> None:
    if v0 is None:
        return
    if not isinstance(v0, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (batch, *features) or None")
    if v0.device != x.device:
        raise ValueError(f"{name} is on {v0.device} but the input is on {x.device}")
    target = (x.shape[0], *x.shape[2:])
    try:
        ok = torch.broadcast_shapes(tuple(v0.shape), target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {tuple(v0.shape)} does not broadcast to (batch, *features) = {target}")


def _check_number(name: str, value) -> None:
    if _is_compiling():  # checked in eager mode; under torch.compile numbers may be symbolic
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")


def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(choices)}")


def check_spiking_options(reset, gradient, max_spikes_per_bin, surrogate, grad_scale) -> tuple[int, Surrogate]:
    """Options every spiking op takes; returns the kernels' max-spikes code and the surrogate (default
    SingleExponential)."""
    _check_choice("reset", reset, RESETS)
    _check_choice("gradient", gradient, GRADIENTS)
    max_spikes = _max_spikes_code(max_spikes_per_bin)
    surrogate = surrogate if surrogate is not None else SingleExponential()
    if not isinstance(surrogate, Surrogate):
        raise TypeError(f"surrogate must be an exodus.surrogate.Surrogate, got {type(surrogate).__name__}")
    _check_number("grad_scale", grad_scale)
    return max_spikes, surrogate


def _max_spikes_code(max_spikes_per_bin: Optional[int]) -> int:
    if max_spikes_per_bin is None:
        return 0
    if isinstance(max_spikes_per_bin, bool) or not isinstance(max_spikes_per_bin, int) or max_spikes_per_bin < 1:
        raise ValueError(f"max_spikes_per_bin must be a positive int or None (unlimited), got {max_spikes_per_bin!r}")
    return max_spikes_per_bin


# ----------------------------------------------------------------------------- kernel launches

def _storage(x: Tensor, backend: str) -> Tensor:
    """Tensor in the dtype the kernels store: CPU kernels have float/double only (half -> float32)."""
    if backend == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _launch(plan, backend: str, storage_dtype: torch.dtype, acc: torch.dtype, device: torch.device) -> None:
    if backend == "cpu":
        backends.cpu.run(plan, acc)
    elif backend == "cupy":
        backends.cupy.run(plan, device, storage_dtype, acc)
    else:
        raise ValueError(f"the fused ops run on backend 'cpu' or 'cupy', not {backend!r}")


def _options(reset, max_spikes, has_vmin, v_min, norm_input, v_trace, gradient, surrogate, grad_scale,
             surrogate_params):
    return launch.LifOptions(reset, max_spikes, has_vmin, v_min, norm_input, v_trace, gradient, surrogate,
                             grad_scale, tuple(surrogate_params))


@torch.library.custom_op("exodus::lif_scan", mutates_args=())
def lif_scan(x: Tensor, alpha: Tensor, theta: Tensor, v0: Tensor, reset: int, max_spikes: int, has_vmin: bool,
             v_min: float, norm_input: bool, v_trace: bool, gradient: int, surrogate: int, grad_scale: float,
             surrogate_params: list[float], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Fused LIF scan. x (B, T, N) contiguous; alpha, theta (N,), v0 (B, N) in the math dtype.
    Returns spikes (B, T, N) and v — the trace (B, T, N) with v_trace, else the final membrane (B, N) —
    in x's dtype, and h (B, T, N) in the math dtype (saved for backward)."""
    o = _options(reset, max_spikes, has_vmin, v_min, norm_input, v_trace, gradient, surrogate, grad_scale,
                 surrogate_params)
    acc = acc_dtype(x.dtype)
    xs = _storage(x, backend)
    B, T, N = xs.shape
    # Large outputs come from exodus' pool of reused, already faulted-in memory (backends/memory.py).
    spikes = empty_for_kernel(xs.shape, xs.dtype, xs.device)
    v = empty_for_kernel(xs.shape, xs.dtype, xs.device) if v_trace else xs.new_empty((B, N))
    h = empty_for_kernel(xs.shape, acc, x.device)
    if B * N > 0:
        _launch(launch.lif_forward_plan(xs, alpha, theta, v0, spikes, v, h, o), backend, xs.dtype, acc, x.device)
    return spikes.to(x.dtype), v.to(x.dtype), h


@lif_scan.register_fake
def _(x, alpha, theta, v0, reset, max_spikes, has_vmin, v_min, norm_input, v_trace, gradient, surrogate,
      grad_scale, surrogate_params, backend):
    v = torch.empty_like(x) if v_trace else x.new_empty((x.shape[0], x.shape[2]))
    return torch.empty_like(x), v, x.new_empty(x.shape, dtype=acc_dtype(x.dtype))


# The CPU backward writes dL/dx over the saved h when the graph is not kept (see grad_x_in_h); False
# keeps h intact (torch.library.opcheck compares the forward's outputs, h among them, after a backward).
GRAD_X_IN_H = True


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True or create_graph=True): its
    saved tensors must then stay intact. True outside a backward or where torch has no such query."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if query is None else bool(query())


def _eager(t: Tensor) -> bool:
    """t is a plain tensor outside any tracing (torch.compile, AOT / make_fx, fake or functional modes)."""
    return (not _is_compiling() and type(t) is torch.Tensor and _get_current_dispatch_mode() is None
            and not torch._is_functional_tensor(t))


def grad_x_in_h(backend: str, h: Tensor) -> bool:
    """Whether a backward may write dL/dx over the saved pre-reset membrane h (B, T, N): on the CPU
    (the drivers read h_t for the last time just before they write dL/dx_t), eagerly, and only when
    the graph is not kept for another backward. Saves one (B, T, N) buffer at the backward's peak."""
    return GRAD_X_IN_H and backend == "cpu" and _eager(h) and not _graph_kept()


def _lif_scan_backward(grad_spikes: Optional[Tensor], grad_v: Optional[Tensor], h: Tensor, alpha: Tensor,
                       theta: Tensor, v0: Tensor, need_grad_alpha: bool, need_grad_theta: bool, into_h: bool, reset: int,
                      max_spikes: int, has_vmin: bool, v_min: float, norm_input: bool, v_trace: bool, gradient: int,
                      surrogate: int, grad_scale: float, surrogate_params: list[float],
                      backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reverse scan of DESIGN.md §2. Returns dL/dx (B, T, N), dL/dv0 (B, N), dL/dalpha (N,), dL/dtheta (N,).
    A parameter gradient that is not needed comes back as zeros, and its work is skipped. into_h (CPU
    only, see grad_x_in_h): dL/dx is written over h and returned empty."""
    o = _options(reset, max_spikes, has_vmin, v_min, norm_input, v_trace, gradient, surrogate, grad_scale,
                 surrogate_params)
    acc = h.dtype
    out_dtype = (grad_spikes if grad_spikes is not None else grad_v).dtype
    gs = None if grad_spikes is None else _storage(grad_spikes, backend).contiguous()
    gv = None if grad_v is None else _storage(grad_v, backend).contiguous()
    storage = (gs if gs is not None else gv).dtype
    B, _, N = h.shape
    if into_h and (backend != "cpu" or storage != acc):
        raise ValueError("into_h needs the cpu backend (kernels store in the math dtype)")
    grad_x = h if into_h else empty_for_kernel(h.shape, storage, h.device)
    grad_v0 = torch.zeros((B, N), dtype=acc, device=h.device)
    # Per-(batch, neuron) partial sums, summed over the batch below; null pointers when not needed.
    grad_alpha = torch.zeros((B, N), dtype=acc, device=h.device) if need_grad_alpha else None
    grad_theta = torch.zeros((B, N), dtype=acc, device=h.device) if need_grad_theta else None
    if B * N > 0:
        plan = launch.lif_backward_plan(h, gs, gv, alpha, theta, v0, grad_x, grad_v0, grad_alpha, grad_theta, o)
        _launch(plan, backend, storage, acc, h.device)
    grad_x = h.new_empty((0,), dtype=out_dtype) if into_h else grad_x.to(out_dtype)
    return grad_x, grad_v0, _batch_sum(grad_alpha, N, acc, h.device), _batch_sum(grad_theta, N, acc, h.device)


def _batch_sum(partials: Optional[Tensor], n: int, acc: torch.dtype, device: torch.device) -> Tensor:
    """Per-neuron parameter gradient from its (B, N) partials; zeros (N,) when it was not computed."""
    return partials.sum(0) if partials is not None else torch.zeros((n,), dtype=acc, device=device)


def _lif_scan_backward_fake(grad_spikes, grad_v, h, alpha, theta, v0, need_grad_alpha, need_grad_theta, into_h,
                            *options):
    out_dtype = (grad_spikes if grad_spikes is not None else grad_v).dtype
    B, _, N = h.shape
    return (h.new_empty((0,) if into_h else h.shape, dtype=out_dtype), h.new_empty((B, N)), h.new_empty((N,)),
            h.new_empty((N,)))


# One implementation, two ops: the second declares that it writes dL/dx over h (into_h=True).
lif_scan_backward = torch.library.custom_op("exodus::lif_scan_backward", mutates_args=())(_lif_scan_backward)
lif_scan_backward_into_h = torch.library.custom_op("exodus::lif_scan_backward_into_h",
                                                   mutates_args=("h",))(_lif_scan_backward)
lif_scan_backward.register_fake(_lif_scan_backward_fake)
lif_scan_backward_into_h.register_fake(_lif_scan_backward_fake)


def _lif_setup_context(ctx, inputs, output):
    x, alpha, theta, v0, *options = inputs
    ctx.save_for_backward(output[2], alpha, theta, v0)
    ctx.options = options
    ctx.set_materialize_grads(False)  # an output outside the loss arrives as None: no stream of zeros


def _lif_backward(ctx, grad_spikes, grad_v, grad_h):
    h, alpha, theta, v0 = ctx.saved_tensors
    if grad_spikes is None and grad_v is None:
        return (None,) * 15
    need_alpha, need_theta = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    into_h = grad_x_in_h(ctx.options[-1], h)
    op = lif_scan_backward_into_h if into_h else lif_scan_backward
    grad_x, grad_v0, grad_alpha, grad_theta = op(grad_spikes, grad_v, h, alpha, theta, v0, need_alpha, need_theta,
                                                 into_h, *ctx.options)
    if into_h:
        grad_x = h.detach().to(grad_x.dtype)  # no copy in float32 / float64
    return (grad_x, grad_alpha if need_alpha else None, grad_theta if need_theta else None, grad_v0) + (None,) * 11


lif_scan.register_autograd(_lif_backward, setup_context=_lif_setup_context)


@torch.library.custom_op("exodus::leaky_scan", mutates_args=())
def leaky_scan(x: Tensor, alpha: Tensor, v0: Tensor, norm_input: bool, backend: str) -> Tensor:
    """Fused leaky integrator. x (B, T, N) contiguous; alpha (N,), v0 (B, N). Returns v (B, T, N)."""
    acc = acc_dtype(x.dtype)
    xs = _storage(x, backend)
    v = empty_for_kernel(xs.shape, xs.dtype, xs.device)
    if xs.numel() > 0:
        _launch(launch.leaky_forward_plan(xs, alpha, v0, v, norm_input), backend, xs.dtype, acc, x.device)
    return v.to(x.dtype)


@leaky_scan.register_fake
def _(x, alpha, v0, norm_input, backend):
    return torch.empty_like(x)


@torch.library.custom_op("exodus::leaky_scan_backward", mutates_args=())
def leaky_scan_backward(grad_v: Tensor, v: Tensor, alpha: Tensor, v0: Tensor, need_grad_alpha: bool,
                        norm_input: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse scan of the leaky integrator. Returns dL/dx (B, T, N), dL/dv0 (B, N), dL/dalpha (N,)
    (zeros, without the work, when not needed)."""
    acc = alpha.dtype
    gv, vs = _storage(grad_v, backend).contiguous(), _storage(v, backend)
    B, _, N = v.shape
    grad_x = empty_for_kernel(vs.shape, vs.dtype, vs.device)
    grad_v0 = torch.zeros((B, N), dtype=acc, device=v.device)
    grad_alpha = torch.zeros((B, N), dtype=acc, device=v.device) if need_grad_alpha else None
    if B * N > 0 and v.shape[1] > 0:
        plan = launch.leaky_backward_plan(vs, gv, alpha, v0, grad_x, grad_v0, grad_alpha, norm_input)
        _launch(plan, backend, vs.dtype, acc, v.device)
    return grad_x.to(grad_v.dtype), grad_v0, _batch_sum(grad_alpha, N, acc, v.device)


@leaky_scan_backward.register_fake
def _(grad_v, v, alpha, v0, need_grad_alpha, norm_input, backend):
    B, _, N = v.shape
    return torch.empty_like(grad_v), alpha.new_empty((B, N)), alpha.new_empty((N,))


def _leaky_setup_context(ctx, inputs, output):
    x, alpha, v0, norm_input, backend = inputs
    ctx.save_for_backward(output, alpha, v0)
    ctx.options = (norm_input, backend)


def _leaky_backward(ctx, grad_v):
    v, alpha, v0 = ctx.saved_tensors
    need_alpha = ctx.needs_input_grad[1]
    grad_x, grad_v0, grad_alpha = leaky_scan_backward(grad_v, v, alpha, v0, need_alpha, *ctx.options)
    return grad_x, grad_alpha if need_alpha else None, grad_v0, None, None


leaky_scan.register_autograd(_leaky_backward, setup_context=_leaky_setup_context)


# ----------------------------------------------------------------------------- public API

def _flatten(x: Tensor, alpha: Tensor, v0: Optional[Tensor], *params: Tensor):
    """(B, T, *F) -> (B, T, N) contiguous; parameters -> (N,), v0 -> (B, N), all in the math dtype."""
    B, T, features = x.shape[0], x.shape[1], tuple(x.shape[2:])
    N = math.prod(features)
    acc = acc_dtype(x.dtype)
    x3 = x.reshape(B, T, N).contiguous()
    flat = [p.to(acc).expand(features).reshape(N).contiguous() for p in (alpha, *params)]
    if v0 is None:
        v0n = torch.zeros((B, N), dtype=acc, device=x.device)
    else:
        v0n = v0.to(acc).expand((B, *features)).reshape(B, N).contiguous()
    return x3, flat, v0n


def lif(
    x: Tensor,
    alpha,
    threshold=1.0,
    v0: Optional[Tensor] = None,
    *,
    reset: str = "subtract",
    v_min: Optional[float] = None,
    max_spikes_per_bin: Optional[int] = 1,
    surrogate: Optional[Surrogate] = None,
    norm_input: bool = False,
    gradient: str = "exodus",
    grad_scale: float = 1.0,
    v_trace: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """LIF scan (IAF with alpha = 1), DESIGN.md §1.

    x: input current, (batch, time, *features). alpha = exp(-1/tau_mem) in [0, 1] and
    threshold > 0: numbers or tensors broadcastable to the features. v0: membrane before
    the first step, (batch, *features), default 0. Returns (spikes, v), both
    (batch, time, *features) in x's dtype: spike counts and post-reset membrane. With
    v_trace=False, v is only the final membrane (batch, *features) (one output stream less).
    gradient: "exodus" (exact), "slayer" (reset detached, surrogate x grad_scale) or
    "bptt" (autograd through the reference loop).
    """
    check_input(x)
    max_spikes, surrogate = check_spiking_options(reset, gradient, max_spikes_per_bin, surrogate, grad_scale)
    alpha = _as_parameter("alpha", alpha, x)
    theta = _as_parameter("threshold", threshold, x)
    # With norm_input the input is scaled by 1 - alpha; alpha = 1 would discard it (and dL/dalpha
    # needs the input back from (h - alpha v) / (1 - alpha)).
    _check_range("alpha" + (" (with norm_input)" if norm_input else ""), alpha, 0.0, 1.0, low_open=False,
                 high_open=bool(norm_input))
    _check_threshold(theta, v_min)
    _check_v0("v0", v0, x)
    chosen = backends.resolve(backend, x.device)
    if gradient == "bptt" or chosen == "torch":
        spikes, v = reference.lif_ref(x, alpha, theta, v0, reset=reset, v_min=v_min,
                                      max_spikes_per_bin=max_spikes_per_bin, surrogate=surrogate,
                                      norm_input=norm_input, gradient=gradient, grad_scale=grad_scale)
        if not v_trace:  # clone: a view would keep the whole trace's storage alive
            v = v[:, -1].clone() if x.shape[1] > 0 else _initial_state(v0, x)
        return spikes, v
    if x.shape[1] == 0 and not v_trace:  # nothing to scan: the final membrane is v0 (keeps its gradient)
        return x.clone(), _initial_state(v0, x)  # (empty) spikes stay attached to the graph
    x3, (alpha_n, theta_n), v0n = _flatten(x, alpha, v0, theta)
    spikes, v, _ = lif_scan(x3, alpha_n, theta_n, v0n, RESETS[reset], max_spikes, v_min is not None,
                            0.0 if v_min is None else float(v_min), bool(norm_input), bool(v_trace),
                            1 if gradient == "slayer" else 0, surrogate.kind, float(grad_scale),
                            list(surrogate.kernel_params()), chosen)
    return spikes.view(x.shape), v.view(x.shape if v_trace else (x.shape[0], *x.shape[2:]))


def _initial_state(v0: Optional[Tensor], x: Tensor) -> Tensor:
    shape = (x.shape[0], *x.shape[2:])
    return x.new_zeros(shape) if v0 is None else v0.to(x.dtype).expand(shape).clone()


def leaky(x: Tensor, alpha, v0: Optional[Tensor] = None, *, norm_input: bool = False,
          backend: str = "auto") -> Tensor:
    """Leaky integrator v_t = alpha v_{t-1} + u_t (u = x, or (1 - alpha) x with norm_input).

    x: (batch, time, *features); alpha in [0, 1], broadcastable to the features; v0:
    (batch, *features), default 0. Returns v, (batch, time, *features) in x's dtype.
    """
    check_input(x)
    alpha = _as_parameter("alpha", alpha, x)
    _check_range("alpha" + (" (with norm_input)" if norm_input else ""), alpha, 0.0, 1.0, low_open=False,
                 high_open=bool(norm_input))
    _check_v0("v0", v0, x)
    chosen = backends.resolve(backend, x.device)
    if chosen == "torch":
        return reference.leaky_ref(x, alpha, v0, norm_input=norm_input)
    x3, (alpha_n,), v0n = _flatten(x, alpha, v0)
    return leaky_scan(x3, alpha_n, v0n, bool(norm_input), chosen).view(x.shape)
