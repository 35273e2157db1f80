"""Fused Linear -> LIF block with a sparse exact backward (DESIGN.md §6).

    spikes, v = linear_lif(s, weight, bias, alpha, threshold, v0, gradient="sparse")

s: input (batch, time, in_features); weight (out, in), bias (out,) or None; the LIF options are
those of :func:`exodus.functional.lif`. ``linear_lif_ref`` is the plain composition
``F.linear`` + ``reference.lif_ref`` (autograd through it = BPTT), the oracle.

``gradient="sparse"`` needs a truncated surrogate (``exodus.surrogate.Truncated``): then only the
"active" neuron-steps — surrogate nonzero, a spike, a v_min clamp — carry gradient, and the
backward visits them alone (cuda/neuron.cuh, ``lif_sparse_point_step``): one reverse scan over the
active points, dL/dW = sum e (x) s_hat with the input filtered by the membrane (recomputed, not
saved), dL/db likewise, dL/dalpha from the filtered v_{t-1}. It keeps the reset term and equals
``gradient="exodus"`` with the same surrogate to rounding; ``detach_reset=True`` drops it (S3GD).
Saved for backward: the active points only (index, h, q), not the (B, T, N) membrane.

Limits, by design: one membrane decay alpha for the whole layer (the input filter s_hat is shared by
its neurons; per-neuron tau raises a ValueError: use gradient="exodus"). When v reaches the loss
(dL/dv != 0 anywhere makes every neuron-step active) the backward recomputes the forward and runs
the dense exodus backward: same gradients, no sparsity. When the input comes straight from another
sparse block, dL/ds is computed only at that block's active points (the only ones its backward reads),
by a sampled matrix product; otherwise dL/ds is one dense product. Not a torch.library custom op:
under torch.compile the block runs in eager mode (a graph break).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backends, reference
from ..backends import launch
from ..reference import acc_dtype
from ..surrogate import Surrogate, Truncated
from .lif import (RESETS, _as_parameter, _check_range, _check_threshold, _check_v0, _launch, _options, _storage,
                  check_input, check_spiking_options, leaky_scan, leaky_scan_backward, lif, lif_scan)

__all__ = ["linear_lif", "linear_lif_ref", "LINEAR_GRADIENTS"]

LINEAR_GRADIENTS = ("exodus", "sparse", "slayer", "bptt")
# Attribute on a sparse block's spike output: its active points (row_ptr, flat), so that the block
# above computes dL/ds only there.
_POINTS_ATTR = "_exodus_active_points"
# Attribute on the sparse dL/ds that block returns: the flat points tensor it holds values at.
_GRAD_POINTS_ATTR = "_exodus_grad_points"


def linear_lif_ref(s: Tensor, weight: Tensor, bias: Optional[Tensor], alpha, threshold, v0=None, **options):
    """F.linear then the reference LIF scan (BPTT under autograd); options as for lif_ref."""
    return reference.lif_ref(F.linear(s, weight, bias), alpha, threshold, v0, **options)


def _check_linear(s: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    check_input(s)
    if s.dim() != 3:
        raise ValueError(f"linear_lif input must be (batch, time, in_features), got shape {tuple(s.shape)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != s.shape[2]:
        raise ValueError(f"weight must be (out_features, in_features={s.shape[2]}), got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"bias must be (out_features={weight.shape[0]},) or None")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != s.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {s.device}")


def linear_lif(
    s: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
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
    detach_reset: bool = False,
    grad_scale: float = 1.0,
    v_trace: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """LIF scan of x = s W^T + b. s (batch, time, in); returns (spikes, v), (batch, time, out) (v: the
    final membrane (batch, out) with v_trace=False). gradient: "exodus" | "sparse" | "slayer" | "bptt";
    detach_reset (sparse only): S3GD's gradient, reset detached."""
    _check_linear(s, weight, bias)
    if gradient not in LINEAR_GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; expected one of {LINEAR_GRADIENTS}")
    if detach_reset and gradient != "sparse":
        raise ValueError("detach_reset applies to gradient='sparse'; for a dense detached reset use gradient='slayer'")
    options = dict(reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes_per_bin, surrogate=surrogate,
                   norm_input=norm_input, grad_scale=grad_scale)
    if gradient != "sparse":
        return lif(F.linear(s, weight, bias), alpha, threshold, v0, gradient=gradient, v_trace=v_trace,
                   backend=backend, **options)
    max_spikes, surrogate = check_spiking_options(reset, "exodus", max_spikes_per_bin, surrogate, grad_scale)
    if not isinstance(surrogate, Truncated):
        raise ValueError("gradient='sparse' needs a truncated surrogate, e.g. "
                         "exodus.surrogate.Truncated(FastSigmoid(slope=100), band=0.2): with an untruncated one "
                         "every neuron-step is active")
    x_like = s.new_empty((s.shape[0], 0, weight.shape[0]))
    alpha = _as_parameter("alpha", alpha, x_like)
    theta = _as_parameter("threshold", threshold, x_like)
    if alpha.numel() != 1:
        raise ValueError("gradient='sparse' needs one tau_mem (alpha) shared by the layer's neurons: the filtered "
                         "input it reuses is common to them. Per-neuron tau: use gradient='exodus'")
    _check_range("alpha" + (" (with norm_input)" if norm_input else ""), alpha, 0.0, 1.0, low_open=False,
                 high_open=bool(norm_input))
    _check_threshold(theta, v_min)
    _check_v0("v0", v0, x_like)
    chosen = backends.resolve(backend, s.device)
    if chosen == "torch":  # no compiled kernels: the reference (same function, BPTT gradients)
        spikes, v = linear_lif_ref(s, weight, bias, alpha, theta, v0, gradient="slayer" if detach_reset else "exodus",
                                   **options)
        return spikes, (v if v_trace else v[:, -1].clone())
    B, N = s.shape[0], weight.shape[0]
    acc = acc_dtype(s.dtype)
    theta_n = theta.to(acc).expand((N,)).reshape(N).contiguous()
    v0n = (torch.zeros((B, N), dtype=acc, device=s.device) if v0 is None
           else v0.to(acc).expand((B, N)).contiguous())
    o = _options(RESETS[reset], max_spikes, v_min is not None, 0.0 if v_min is None else float(v_min),
                 bool(norm_input), True, 1 if detach_reset else 0, surrogate.kind,
                 float(grad_scale) if detach_reset else 1.0, surrogate.kernel_params())
    spikes, v = _SparseLinearLIF.apply(s, weight, bias, alpha.to(acc).reshape(()), theta_n, v0n, o, chosen)
    if not v_trace:
        v = v[:, -1].clone() if s.shape[1] > 0 else v0n.to(s.dtype)
    return spikes, v


def _filtered(x: Tensor, alpha_n: Tensor, backend: str) -> Tensor:
    """x filtered by the membrane, x_hat_t = alpha x_hat_{t-1} + x_t (the fused leaky scan), in x's dtype."""
    B, _, N = x.shape
    return leaky_scan(x.contiguous(), alpha_n, torch.zeros((B, N), dtype=alpha_n.dtype, device=x.device), False,
                      backend)


class _SparseLinearLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, weight, bias, alpha, theta_n, v0n, o, backend):
        B, T, _ = s.shape
        N = weight.shape[0]
        acc = alpha.dtype
        x = F.linear(s, weight, bias).contiguous()
        alpha_n = alpha.expand((N,)).contiguous()
        spikes, v, h = lif_scan(x, alpha_n, theta_n, v0n, o.reset, o.max_spikes, o.has_vmin, o.v_min, o.norm_input,
                                True, o.gradient, o.surrogate, o.grad_scale, list(o.surrogate_params), backend)
        # The active points, in (b, t, n) order: CSR over the (b, t) rows.
        mask = torch.empty(h.shape, dtype=torch.uint8, device=h.device)
        if h.numel() > 0:
            _launch(launch.lif_sparse_active_plan(h, theta_n, mask, o, ctx.needs_input_grad[4]), backend, h.dtype, acc, h.device)
        flat = mask.view(-1).nonzero().squeeze(1)
        del mask
        row_ptr = torch.zeros(B * T + 1, dtype=torch.int64, device=h.device)
        torch.cumsum(torch.bincount(flat // N, minlength=B * T), 0, out=row_ptr[1:])
        h_points = h.view(-1)[flat]
        del h
        # q: v_{t-1} filtered by alpha (for dL/dalpha); y: x filtered (norm_input's -x term of dL/dalpha).
        v_prev = torch.cat([v0n.unsqueeze(1), v[:, :-1].to(acc)], 1)
        q_points = _filtered(v_prev, alpha_n, backend).view(-1)[flat]
        del v_prev
        y_points = _filtered(x.to(acc), alpha_n, backend).view(-1)[flat] if o.norm_input else None
        # s is read by the backward only (nothing to pack for a forward without gradients)
        saved_s = _packed_counts(s, backend) if any(ctx.needs_input_grad[:6]) else s
        ctx.save_for_backward(saved_s, weight, bias, alpha, theta_n, v0n, row_ptr, flat, h_points,
                              q_points, y_points)
        ctx.o, ctx.backend, ctx.s_dtype = o, backend, s.dtype
        ctx.input_points = getattr(s, _POINTS_ATTR, None)
        ctx.set_materialize_grads(False)
        setattr(spikes, _POINTS_ATTR, (row_ptr, flat))
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes, grad_v):
        s, weight, bias, alpha, theta_n, v0n, row_ptr, flat, h_points, q_points, y_points = ctx.saved_tensors
        o, backend, s_dtype = ctx.o, ctx.backend, ctx.s_dtype   # s: the input, maybe packed into uint8
        need_s, need_w, need_b, need_alpha, need_theta, need_v0 = ctx.needs_input_grad[:6]
        if grad_spikes is None and grad_v is None:
            return (None,) * 8
        if grad_v is not None:
            return _dense_backward(ctx, s.to(s_dtype), weight, bias, alpha, theta_n, v0n, grad_spikes, grad_v)
        B, T, N_in = s.shape
        N = weight.shape[0]
        acc = alpha.dtype
        alpha_n = alpha.expand((N,)).contiguous()
        col, _ = _point_indices((row_ptr, flat), (B, T, N), backend)
        grad_points = gs = None
        if grad_spikes.is_sparse and getattr(grad_spikes, _GRAD_POINTS_ATTR, None) is flat:
            grad_points = grad_spikes._values().to(acc).contiguous()  # made by the block above, at these points
        elif grad_spikes.is_sparse:  # from a sparse block above: usually exactly at this block's points
            grad_spikes = grad_spikes.coalesce()
            indices = grad_spikes.indices()
            at_points = indices.shape[1] == flat.numel() and torch.equal(
                (indices[0] * T + indices[1]) * N + indices[2], flat)
            if at_points:
                grad_points = grad_spikes.values().to(acc).contiguous()
            else:
                grad_spikes = grad_spikes.to_dense()
        if grad_points is None:
            gs = _storage(grad_spikes, backend).contiguous()
        storage = gs.dtype if gs is not None else s_dtype
        if backend == "cpu" and storage not in (torch.float32, torch.float64):
            storage = torch.float32
        e = torch.empty_like(h_points)
        grad_v0 = torch.empty((B, N), dtype=acc, device=s.device)
        g_alpha = torch.empty((B, N), dtype=acc, device=s.device) if need_alpha else None
        g_theta = torch.empty((B, N), dtype=acc, device=s.device) if need_theta else None
        lam_state = torch.empty((B, N), dtype=acc, device=s.device)
        t_state = torch.empty((B, N), dtype=torch.int64, device=s.device)
        gain = (1 - alpha) if o.norm_input else torch.ones((), dtype=acc, device=s.device)  # dL/dx = gain lambda
        # dL/ds at the active points of the block below, fused into the scan (CPU driver).
        sampled = grad_s = in_coo = None
        if need_s and ctx.input_points is not None and backend == "cpu":
            in_row_ptr, in_flat = ctx.input_points
            grad_in = torch.empty(in_flat.shape, dtype=acc, device=s.device)
            _, in_coo = _point_indices(ctx.input_points, (B, T, N_in), backend, col=False, coo=True)
            sampled = (weight.detach().to(acc).t().contiguous(), in_row_ptr, in_coo[2],
                       torch.empty((B, N), dtype=acc, device=s.device), grad_in, float(gain))
        plan = launch.lif_sparse_backward_plan(row_ptr, col, h_points, q_points, y_points, gs, alpha_n, theta_n,
                                               lam_state, t_state, e, grad_v0, g_alpha, g_theta, B, T, N, o,
                                               grad_points=grad_points, sampled=sampled)
        _launch(plan, backend, storage, acc, s.device)
        grad_w = grad_b = None
        if need_w or need_b:
            grad_w, grad_b = _weight_grads(s, row_ptr, col, flat, e, alpha, N, backend)
            grad_w = (gain * grad_w).to(weight.dtype)
            grad_b = (gain * grad_b).to(bias.dtype) if need_b else None
        if sampled is not None:
            grad_s = _at_points(ctx.input_points[1], in_coo, sampled[4], s.shape, s_dtype)
        elif need_s:
            grad_s = _input_grad(ctx, s.shape, s_dtype, weight, flat, e, alpha_n, gain, B, T, N, backend)
        grad_alpha = None
        if need_alpha:
            grad_alpha = g_alpha.sum()  # includes norm_input's -x term (through y)
        return (grad_s, grad_w if need_w else None, grad_b, grad_alpha,
                g_theta.sum(0) if need_theta else None, grad_v0 if need_v0 else None, None, None)


def _weight_grads(s, row_ptr, col, flat, e, alpha, N, backend, native: Optional[bool] = None):
    """dL/dW (N, N_in) and dL/db (N,) of the filtered sums (before the norm_input gain), math dtype.
    native: the CPU driver (default on the cpu backend) or the device-generic torch path."""
    B, T, N_in = s.shape
    acc = alpha.dtype
    if native if native is not None else backend == "cpu":
        slots = max(1, torch.get_num_threads())
        gw = torch.empty((slots, N, N_in), dtype=acc, device=s.device)
        gb = torch.empty((slots, N), dtype=acc, device=s.device)
        s_in = s if s.dtype == torch.uint8 else _storage(s, backend).contiguous()
        plan = launch.sparse_weight_grad_plan(s_in, row_ptr, col, e, float(alpha), gw, gb)
        _launch(plan, backend, s_in.dtype, acc, s.device)
        return gw.sum(0), gb.sum(0)
    # Device-generic torch path (GPU): E^T (N, B T) sparse times the filtered input (B T, N_in).
    s_hat = _filtered(s.to(acc), alpha.expand((N_in,)).contiguous(), backend).view(B * T, N_in)
    rows = flat // N
    e_t = torch.sparse_coo_tensor(torch.stack([col, rows]), e, (N, B * T), check_invariants=False).coalesce()
    ones_hat = _filtered(torch.ones((1, T, 1), dtype=acc, device=s.device), alpha.reshape(1), backend).view(T)
    grad_b = torch.zeros(N, dtype=acc, device=s.device).index_add_(0, col, e * ones_hat[rows % T])
    return torch.sparse.mm(e_t, s_hat), grad_b


def _input_grad(ctx, s_shape, s_dtype, weight, flat, e, alpha_n, gain, B, T, N, backend):
    """dL/ds (s_shape, s_dtype) = gain lambda W: lambda is the reverse leaky scan of e (it only decays
    between points)."""
    acc, device, N_in = alpha_n.dtype, e.device, s_shape[2]
    e_dense = torch.zeros((B, T, N), dtype=acc, device=device)
    e_dense.view(-1)[flat] = e
    zeros = torch.zeros((B, N), dtype=acc, device=device)
    lam, _, _ = leaky_scan_backward(e_dense, e_dense, alpha_n, zeros, False, False, backend)
    del e_dense
    lam = (gain * lam).view(B * T, N)
    w = weight.to(acc)
    if ctx.input_points is not None:  # the block below reads dL/ds at its own active points only
        row_ptr_in, flat_in = ctx.input_points
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(row_ptr_in, flat_in % N_in,
                                              torch.ones(flat_in.shape, dtype=acc, device=device),
                                              (B * T, N_in), check_invariants=False)
            sampled = torch.sparse.sampled_addmm(pattern, lam, w, beta=0.0)
        _, coo = _point_indices(ctx.input_points, s_shape, backend, col=False, coo=True)
        return _at_points(flat_in, coo, sampled.values(), s_shape, s_dtype)
    return (lam @ w).to(s_dtype).view(s_shape)


def _point_indices(points, shape, backend: str, col: bool = True, coo: bool = False):
    """(columns (nnz,), COO indices (3, nnz) = (b, t, n)) int64 of a (B, T, N) layer's active points
    points = (row_ptr, flat) (CSR over the (b, t) rows; each None unless asked for)."""
    row_ptr, flat = points
    B, T, N = shape
    if backend == "cpu":  # one native pass, a subtraction per point
        cols = torch.empty_like(flat) if col else None
        indices = torch.empty((3, flat.numel()), dtype=torch.int64) if coo else None
        _launch(launch.sparse_point_indices_plan(row_ptr, flat, cols, indices, B, T, N), backend, torch.float32,
                torch.float32, flat.device)
        return cols, indices
    t_n = flat % (T * N)
    return (flat % N if col else None), (torch.stack([flat // (T * N), t_n // N, t_n % N]) if coo else None)


def _at_points(flat: Tensor, indices: Tensor, values: Tensor, shape, dtype: torch.dtype) -> Tensor:
    """dL/ds as a sparse COO tensor of s's shape (B, T, N_in) and dtype, nonzero at the block below's active
    points (flat indices flat, COO indices (3, nnz)); the only entries its backward reads. Autograd passes it on
    to that block, which finds its own points' tensor on it (then it reads the values without a check)."""
    grad = torch.sparse_coo_tensor(indices, values.to(dtype), tuple(shape), is_coalesced=True, check_invariants=False)
    setattr(grad, _GRAD_POINTS_ATTR, flat)
    return grad


def _packed_counts(s: Tensor, backend: str) -> Tensor:
    """The input as saved for the backward: packed into uint8 on the CPU when every value is a whole number in
    [0, 255] (spikes, or the counts of multi-spike bins: exact), which the CPU backward reads as it is
    (4x / 8x less saved memory than float32 / float64); otherwise s itself. One pass over s."""
    if backend != "cpu" or s.numel() == 0 or not torch.is_floating_point(s):
        return s
    xs = _storage(s, backend).contiguous()
    packed, ok = torch.empty(xs.shape, dtype=torch.uint8), torch.zeros(1, dtype=torch.int32)
    _launch(launch.sparse_pack_counts_plan(xs, packed, ok), backend, xs.dtype, acc_dtype(s.dtype), s.device)
    return packed if int(ok) else s


def _dense_backward(ctx, s, weight, bias, alpha, theta_n, v0n, grad_spikes, grad_v):
    """dL/dv reaches the loss: recompute the block and run the dense exodus backward (same gradients)."""
    o, backend = ctx.o, ctx.backend
    needs = ctx.needs_input_grad[:6]
    if grad_spikes is not None and grad_spikes.is_sparse:
        grad_spikes = grad_spikes.to_dense()
    inputs = [t.detach().requires_grad_(need) if t is not None else None
              for t, need in zip((s, weight, bias, alpha, theta_n, v0n), needs)]
    with torch.enable_grad():
        x = F.linear(inputs[0], inputs[1], inputs[2]).contiguous()
        N = weight.shape[0]
        spikes, v, _ = lif_scan(x, inputs[3].expand((N,)).contiguous(), inputs[4], inputs[5], o.reset, o.max_spikes,
                                o.has_vmin, o.v_min, o.norm_input, True, o.gradient, o.surrogate, o.grad_scale,
                                list(o.surrogate_params), backend)
        outputs = [t for t, g in ((spikes, grad_spikes), (v, grad_v)) if g is not None]
        grads = [g for g in (grad_spikes, grad_v) if g is not None]
        wanted = [t for t, need in zip(inputs, needs) if need]
        result = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True) if wanted else ())
    return tuple(next(result) if need else None for need in needs) + (None, None)
