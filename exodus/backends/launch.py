"""Launch plans of the __global__ drivers in cuda/kernels.cu.

A plan names the kernel, the 1-D grid and block, and the typed argument list in
the kernel's parameter order. The cupy backend launches it on the GPU; the host
emulation (exodus.backends.emulation) runs the same kernel on the CPU from the
same plan; the CPU backend calls its tiled drivers (cuda/cpu_drivers.cpp, same
parameter order plus a thread count) from the same argument list.
Argument kinds: "ptr" (a tensor or None), "i64", "i32", "acc" (float in the math dtype).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

BLOCK_SIZE = 128


@dataclass(frozen=True)
class LifOptions:
    """Integer/float options of the LIF kernels (codes as in cuda/common.cuh)."""

    reset: int = 0            # 0 subtract, 1 zero
    max_spikes: int = 1       # 1 single, k > 1 at most k, 0 unlimited
    has_vmin: bool = False
    v_min: float = 0.0
    norm_input: bool = False
    v_trace: bool = True      # v output is the trace (B, T, N); else only the final v (B, N)
    gradient: int = 0         # 0 exodus, 1 slayer
    surrogate: int = 0
    grad_scale: float = 1.0
    surrogate_params: tuple[float, float, float, float] = (0.5, 1.0, 0.0, 0.0)  # p0, p1, p2, band


@dataclass
class LaunchPlan:
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list[tuple[str, Any]]
    # Positions of the (t_begin, t_end) arguments in `args` for drivers that run a range of
    # steps (exodus.backends.bind re-launches them step by step); None for whole-sequence drivers.
    time_range: Optional[tuple[int, int]] = None


def _plan(kernel: str, threads: int, args: list[tuple[str, Any]]) -> LaunchPlan:
    grid = max(1, (threads + BLOCK_SIZE - 1) // BLOCK_SIZE)
    return LaunchPlan(kernel, (grid, 1, 1), (BLOCK_SIZE, 1, 1), args)


def _dims(x: torch.Tensor) -> list[tuple[str, Any]]:
    B, T, N = x.shape
    return [("i64", B), ("i64", T), ("i64", N)]


def lif_forward_plan(x, alpha, theta, v0, spikes, v, h, o: LifOptions) -> LaunchPlan:
    B, _, N = x.shape
    return _plan("exodus_lif_forward", B * N, [
        ("ptr", x), ("ptr", alpha), ("ptr", theta), ("ptr", v0),
        ("ptr", spikes), ("ptr", v), ("ptr", h), *_dims(x),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", int(o.v_trace)),
    ])


def lif_backward_plan(h, grad_spikes: Optional[torch.Tensor], grad_v: Optional[torch.Tensor], alpha, theta,
                      v0, grad_x, grad_v0, grad_alpha, grad_theta, o: LifOptions) -> LaunchPlan:
    B, _, N = h.shape
    p0, p1, p2, band = o.surrogate_params
    return _plan("exodus_lif_backward", B * N, [
        ("ptr", h), ("ptr", grad_spikes), ("ptr", grad_v), ("ptr", alpha), ("ptr", theta), ("ptr", v0),
        ("ptr", grad_x), ("ptr", grad_v0), ("ptr", grad_alpha), ("ptr", grad_theta), *_dims(h),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", int(o.v_trace)), ("i32", o.gradient), ("i32", o.surrogate), ("acc", o.grad_scale),
        ("acc", p0), ("acc", p1), ("acc", p2), ("acc", band),
    ])


def leaky_forward_plan(x, alpha, v0, v, norm_input: bool) -> LaunchPlan:
    B, _, N = x.shape
    return _plan("exodus_leaky_forward", B * N, [
        ("ptr", x), ("ptr", alpha), ("ptr", v0), ("ptr", v), *_dims(x), ("i32", int(norm_input)),
    ])


def leaky_backward_plan(v, grad_v, alpha, v0, grad_x, grad_v0, grad_alpha, norm_input: bool) -> LaunchPlan:
    B, _, N = v.shape
    return _plan("exodus_leaky_backward", B * N, [
        ("ptr", v), ("ptr", grad_v), ("ptr", alpha), ("ptr", v0), ("ptr", grad_x), ("ptr", grad_v0),
        ("ptr", grad_alpha), *_dims(v), ("i32", int(norm_input)),
    ])


def _ranged(kernel: str, threads: int, args: list[tuple[str, Any]]) -> LaunchPlan:
    """A plan for a driver with a (t_begin, t_end) argument pair, initially the whole sequence."""
    names = [value for kind, value in args if kind == "name"]
    assert names == ["t_begin", "t_end"], names
    begin = next(i for i, (kind, value) in enumerate(args) if kind == "name" and value == "t_begin")
    T = args[begin - 2][1]
    args = [*args[:begin], ("i64", 0), ("i64", T), *args[begin + 2:]]
    plan = _plan(kernel, threads, args)
    plan.time_range = (begin, begin + 1)
    return plan


def adaptive_forward_plan(x, rec, params, v_state, w_state, spikes, v_out, w_out, h_save, w_save,
                          o: LifOptions, adaptive: bool) -> LaunchPlan:
    """exodus_adaptive_forward (cuda/kernels.cu): x (B, T, N); rec (B, N) or None; params (7, N);
    v_state / w_state (B, N) in/out; spikes, v_out, w_out, h_save, w_save (B, T, N) (traces may be None)."""
    B, _, N = x.shape
    return _ranged("exodus_adaptive_forward", B * N, [
        ("ptr", x), ("ptr", rec), ("ptr", params), ("ptr", v_state), ("ptr", w_state), ("ptr", spikes),
        ("ptr", v_out), ("ptr", w_out), ("ptr", h_save), ("ptr", w_save), *_dims(x),
        ("name", "t_begin"), ("name", "t_end"),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", int(adaptive)),
    ])


def adaptive_backward_plan(h_save, w_save, grad_spikes, grad_v, grad_w, grad_rec, params, v0, w0, grad_x,
                           prev_spikes, carry_v, carry_w, grad_params, o: LifOptions, adaptive: bool) -> LaunchPlan:
    """exodus_adaptive_backward (cuda/kernels.cu); shapes as in the kernel's comment. grad_params
    (7, P, N) or None: P = B for the GPU kernel, P >= the thread count for the CPU driver."""
    B, _, N = h_save.shape
    p0, p1, p2, band = o.surrogate_params
    return _ranged("exodus_adaptive_backward", B * N, [
        ("ptr", h_save), ("ptr", w_save), ("ptr", grad_spikes), ("ptr", grad_v), ("ptr", grad_w), ("ptr", grad_rec),
        ("ptr", params), ("ptr", v0), ("ptr", w0), ("ptr", grad_x), ("ptr", prev_spikes), ("ptr", carry_v),
        ("ptr", carry_w), ("ptr", grad_params), *_dims(h_save), ("name", "t_begin"), ("name", "t_end"),
        ("i64", 0 if grad_params is None else grad_params.shape[1]), ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", int(adaptive)), ("i32", o.gradient), ("i32", o.surrogate),
        ("acc", o.grad_scale), ("acc", p0), ("acc", p1), ("acc", p2), ("acc", band),
    ])


def adaptive_recurrent_backward_plan(h_save, w_save, grad_spikes, grad_v, grad_w, weight, spikes, a0, params, v0,
                                     grad_x, carry_v, carry_w, grad_params, grad_weight_t, o: LifOptions,
                                     adaptive: bool) -> LaunchPlan:
    """exodus_adaptive_recurrent_backward (CPU driver only, cuda/cpu_adaptive.cpp): the whole recurrent
    reverse scan with its per-step product in one call. weight (N, N) = M; spikes (B, T, N) the forward's
    output, a0 (B, N); w_save the CPU forward's w checkpoints (they hold w0); grad_params (7, P, N)
    per-thread partials or None; grad_weight_t (N, N) receives dL/dM^T (or None)."""
    B, T, N = h_save.shape
    p0, p1, p2, band = o.surrogate_params
    return LaunchPlan("exodus_adaptive_recurrent_backward", (1, 1, 1), (1, 1, 1), [
        ("ptr", h_save), ("ptr", w_save), ("ptr", grad_spikes), ("ptr", grad_v), ("ptr", grad_w), ("ptr", weight),
        ("ptr", spikes), ("ptr", a0), ("ptr", params), ("ptr", v0), ("ptr", grad_x), ("ptr", carry_v),
        ("ptr", carry_w), ("ptr", grad_params), ("ptr", grad_weight_t), *_dims(h_save),
        ("i64", 0 if grad_params is None else grad_params.shape[1]), ("i32", o.reset), ("i32", o.max_spikes),
        ("i32", int(o.has_vmin)), ("acc", o.v_min), ("i32", int(o.norm_input)), ("i32", int(adaptive)),
        ("i32", o.gradient), ("i32", o.surrogate), ("acc", o.grad_scale), ("acc", p0), ("acc", p1), ("acc", p2),
        ("acc", band),
    ])


# The fused recurrent forward keeps a batch row's spikes in one GPU block's shared memory.
MAX_RECURRENT_NEURONS = 1024
WARP = 32


def adaptive_recurrent_forward_plan(x, weight_t, a_state, params, v_state, w_state, spikes, v_out, w_out, h_save,
                                    w_save, o: LifOptions, adaptive: bool) -> LaunchPlan:
    """exodus_adaptive_recurrent_forward (cuda/kernels.cu): one block per batch row, one thread per
    neuron (N <= MAX_RECURRENT_NEURONS). weight_t: the recurrent weight transposed, (N, N) contiguous;
    a_state (B, N): the spikes before the first step, in/out."""
    B, T, N = x.shape
    if N > MAX_RECURRENT_NEURONS:
        raise ValueError(f"the fused recurrent forward handles at most {MAX_RECURRENT_NEURONS} neurons, got {N}")
    args = [
        ("ptr", x), ("ptr", weight_t), ("ptr", a_state), ("ptr", params), ("ptr", v_state), ("ptr", w_state),
        ("ptr", spikes), ("ptr", v_out), ("ptr", w_out), ("ptr", h_save), ("ptr", w_save), *_dims(x),
        ("i64", 0), ("i64", T),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", int(adaptive)),
    ]
    block = max(WARP, (N + WARP - 1) // WARP * WARP)
    return LaunchPlan("exodus_adaptive_recurrent_forward", (max(B, 1), 1, 1), (block, 1, 1), args,
                      time_range=(14, 15))


def lif_sparse_backward_plan(row_ptr, col, h, q, y, grad_spikes, alpha, theta, lambda_state, t_state, e, grad_v0,
                             grad_alpha, grad_theta, B: int, T: int, N: int, o: LifOptions, grad_points=None,
                             sampled=None) -> LaunchPlan:
    """exodus_lif_sparse_backward (cuda/kernels.cu): the reverse scan over a layer's active points
    (DESIGN.md §6), one block per batch row; point arrays (nnz,), row_ptr (B T + 1,), states (B, N).
    grad_points: dL/dspikes at the points (instead of the dense grad_spikes). sampled: (weight_t (N_in, N),
    in_row_ptr, in_col, lambda_row (B, N) scratch, grad_in (nnz_in,), gain): also dL/ds at the input's
    own active points."""
    p0, p1, p2, band = o.surrogate_params
    weight_t, in_row_ptr, in_col, lambda_row, grad_in, gain = sampled if sampled is not None else (None,) * 5 + (1.0,)
    args = [
        ("ptr", row_ptr), ("ptr", col), ("ptr", h), ("ptr", q), ("ptr", y), ("ptr", grad_spikes), ("ptr", alpha),
        ("ptr", theta), ("ptr", lambda_state), ("ptr", t_state), ("ptr", e), ("ptr", grad_v0), ("ptr", grad_alpha),
        ("ptr", grad_theta), ("ptr", grad_points), ("ptr", weight_t), ("ptr", in_row_ptr), ("ptr", in_col),
        ("ptr", lambda_row), ("ptr", grad_in), ("i64", B), ("i64", T), ("i64", N),
        ("i64", 0 if weight_t is None else weight_t.shape[0]), ("acc", gain),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", o.gradient), ("i32", o.surrogate), ("acc", o.grad_scale),
        ("acc", p0), ("acc", p1), ("acc", p2), ("acc", band),
    ]
    return LaunchPlan("exodus_lif_sparse_backward", (max(B, 1), 1, 1), (BLOCK_SIZE, 1, 1), args)


def sparse_weight_grad_plan(s, row_ptr, col, e, alpha: float, grad_w, grad_b) -> LaunchPlan:
    """exodus_sparse_weight_grad (CPU driver only, cuda/cpu_sparse.cpp): s (B, T, N_in) in the math dtype
    or packed into uint8 (sparse_pack_counts_plan); grad_w (P, N_out, N_in) and grad_b (P, N_out)
    per-thread partials."""
    B, T, N_in = s.shape
    P, N_out, _ = grad_w.shape
    kernel = "exodus_sparse_weight_grad_u8" if s.dtype == torch.uint8 else "exodus_sparse_weight_grad"
    return LaunchPlan(kernel, (1, 1, 1), (1, 1, 1), [
        ("ptr", s), ("ptr", row_ptr), ("ptr", col), ("ptr", e), ("acc", alpha), ("ptr", grad_w), ("ptr", grad_b),
        ("i64", B), ("i64", T), ("i64", N_in), ("i64", N_out), ("i64", P),
    ])


def sparse_point_indices_plan(row_ptr, flat, col, coo, B: int, T: int, N: int) -> LaunchPlan:
    """exodus_sparse_point_indices (CPU driver only): the points (CSR rows row_ptr (B T + 1,), flat indices
    flat (nnz,) into (B, T, N)) -> col (nnz,) and/or coo (3, nnz) int64 (either may be None)."""
    return LaunchPlan("exodus_sparse_point_indices", (1, 1, 1), (1, 1, 1), [
        ("ptr", row_ptr), ("ptr", flat), ("ptr", col), ("ptr", coo), ("i64", B), ("i64", T), ("i64", N),
    ])


def sparse_pack_counts_plan(s, out, packed) -> LaunchPlan:
    """exodus_sparse_pack_counts (CPU driver only): s (any shape, contiguous, math dtype) -> out uint8 of the
    same size; packed (1,) int32 is set to 1 when every value of s is a whole number in [0, 255]."""
    return LaunchPlan("exodus_sparse_pack_counts", (1, 1, 1), (1, 1, 1), [
        ("ptr", s), ("ptr", out), ("ptr", packed), ("i64", s.numel()),
    ])


def lif_sparse_active_plan(h, theta, mask, o: LifOptions, with_theta: bool) -> LaunchPlan:
    """exodus_lif_sparse_active: mask (B, T, N) uint8 of the active points of h (B, T, N); with_theta:
    dL/dtheta is needed (then every spike is a point)."""
    B, T, N = h.shape
    p0, p1, p2, band = o.surrogate_params
    return _plan("exodus_lif_sparse_active", B * T * N, [
        ("ptr", h), ("ptr", theta), ("ptr", mask), ("i64", B), ("i64", T), ("i64", N),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", o.gradient), ("i32", o.surrogate), ("acc", o.grad_scale),
        ("acc", p0), ("acc", p1), ("acc", p2), ("acc", band), ("i32", int(with_theta)),
    ])


def lif_online_advance_plan(x, s, v_start, theta, s_hat, dev, stamp, e_alpha, e_bias, e_theta, v_end, t0: int,
                            alpha: float, gain: float, o: LifOptions) -> LaunchPlan:
    """exodus_lif_online_advance (CPU driver only, cuda/cpu_online.cpp): the online traces of a
    Linear -> LIF block over one chunk (DESIGN.md §7); shapes as in the driver's comment."""
    B, T, N = x.shape
    p0, p1, p2, band = o.surrogate_params
    return LaunchPlan("exodus_lif_online_advance", (1, 1, 1), (1, 1, 1), [
        ("ptr", x), ("ptr", s), ("ptr", v_start), ("ptr", theta), ("ptr", s_hat), ("ptr", dev), ("ptr", stamp),
        ("ptr", e_alpha), ("ptr", e_bias), ("ptr", e_theta), ("ptr", v_end), ("i64", B), ("i64", T), ("i64", N),
        ("i64", s.shape[2]), ("i64", t0), ("acc", alpha), ("acc", gain),
        ("i32", o.reset), ("i32", o.max_spikes), ("i32", int(o.has_vmin)), ("acc", o.v_min),
        ("i32", int(o.norm_input)), ("i32", o.gradient), ("i32", o.surrogate), ("acc", o.grad_scale),
        ("acc", p0), ("acc", p1), ("acc", p2), ("acc", band),
    ])
