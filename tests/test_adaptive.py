"""The adaptive two-state neuron and recurrence (DESIGN.md §4-5): exodus.functional.adaptive_lif
against the plain-PyTorch oracle exodus.reference.adaptive_lif_ref under autograd (= BPTT).

Backends: "cpu" (cuda/cpu_adaptive.cpp), "emulation" (the __global__ exodus_adaptive_* kernels of
cuda/kernels.cu run on the CPU through cuda/host_emulation.h) and "torch" (the reference itself).
Forward: spikes, v and w bit for bit without recurrence. With recurrence the spikes are still
equal, but v and w only to rounding (RECURRENT_FWD_TOL): the kernels sum the recurrent input M a_{t-1}
inside the scan over the neurons that spiked, in ascending neuron order (cuda/cpu_adaptive.cpp,
kernels.cu), while the oracle forms it with torch's matrix product (BLAS), which sums in its own order
(checked: 2 of 540 float64 membranes differed by 1 ulp in one case). The CPU driver and the GPU kernel
(emulation) use the same order, so they agree with each other bit for bit, recurrent or not.
Backward: gradients of x, every parameter (alpha via tau_mem, threshold, rho via tau_adapt, the
couplings beta, gamma, zeta, eta), v0, w0, weight_rec and a0 within GRAD_RTOL of the oracle's.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch.autograd import gradcheck

import exodus
from conftest import (AMPLITUDES, SURROGATE_IDS, SURROGATES, assert_equal, assert_grad_close,
                      check_grad_x_over_saved_h, grad_rtol, param_shape, randn, uniform)
from exodus import functional as F
from exodus import surrogate as S
from exodus.backends import emulation, launch
from exodus.functional.adaptive import COUPLINGS
from exodus.reference import acc_dtype, adaptive_lif_ref

lif_module = importlib.import_module("exodus.functional.lif")  # the module (F.lif is the function)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
BACKENDS = ("cpu", "emulation", "torch")
# Recurrent v, w vs the oracle: |got - expected| <= tol + tol |expected| (see the module docstring).
RECURRENT_FWD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
# Sampling ranges of the couplings. beta may be negative, but small enough that the adaptive
# threshold theta + beta w stays positive (measured: > 0.5 over 300 random cases; w stays O(1):
# rho <= exp(-1/20), |zeta| small). Near theta_t = 0 the surrogates (~ 1/theta_t) blow up.
COUPLING_RANGES = {"beta": (-0.03, 0.3), "gamma": (-0.1, 0.5), "zeta": (-0.02, 0.05), "eta": (0.0, 0.3)}
NAMES = ("x", "tau", "threshold", "tau_adapt", *COUPLINGS, "v0", "w0", "weight_rec", "a0")


def reference(x, *args, state_trace: bool = True, backend: str = "", **kwargs):
    """adaptive_lif_ref with adaptive_lif's state_trace=False (final states) convention."""
    spikes, v, w = adaptive_lif_ref(x, *args, **kwargs)
    return (spikes, v, w) if state_trace else (spikes, v[:, -1], w[:, -1])


@dataclass
class AdaptiveCase:
    """Leaves of one adaptive-neuron problem and the random loss weights on spikes, v and w.

    Couplings are numbers or tensors (requiring grad); v0, w0, weight_rec, a0 tensors or None.
    The loss is sum(w_spikes * spikes) + sum(w_v * v) + sum(w_w * w) on the traces, or with
    state_trace=False on the final states v, w (weights w_v[:, -1], w_w[:, -1])."""

    x: torch.Tensor
    tau: torch.Tensor
    threshold: torch.Tensor
    tau_adapt: torch.Tensor
    couplings: dict
    v0: Optional[torch.Tensor]
    w0: Optional[torch.Tensor]
    weight_rec: Optional[torch.Tensor]
    a0: Optional[torch.Tensor]
    w_spikes: torch.Tensor
    w_v: torch.Tensor
    w_w: torch.Tensor
    options: dict = field(default_factory=dict)

    def named_leaves(self):
        values = dict(x=self.x, tau=self.tau, threshold=self.threshold, tau_adapt=self.tau_adapt, **self.couplings,
                      v0=self.v0, w0=self.w0, weight_rec=self.weight_rec, a0=self.a0)
        return [(name, values[name]) for name in NAMES
                if isinstance(values[name], torch.Tensor) and values[name].requires_grad]

    def run(self, fn: Callable, state_trace: bool = True, spikes_only: bool = False, **extra):
        """fn(x, alpha, threshold, rho, beta, gamma, zeta, eta, v0, w0, weight_rec=, a0=, state_trace=, ...)
        -> (spikes, v, w, {leaf name: gradient}). The loss weighs spikes, v and w (spikes_only: spikes)."""
        alpha, rho = torch.exp(-1.0 / self.tau), torch.exp(-1.0 / self.tau_adapt)
        spikes, v, w = fn(self.x, alpha, self.threshold, rho, *(self.couplings[n] for n in COUPLINGS), self.v0,
                          self.w0, weight_rec=self.weight_rec, a0=self.a0, state_trace=state_trace,
                          **{**self.options, **extra})
        acc = self.w_v.dtype
        w_v, w_w = (self.w_v, self.w_w) if state_trace else (self.w_v[:, -1], self.w_w[:, -1])
        loss = (spikes.to(acc) * self.w_spikes).sum()
        if not spikes_only:
            loss = loss + (v.to(acc) * w_v).sum() + (w.to(acc) * w_w).sum()
        names, leaves = zip(*self.named_leaves())
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return spikes.detach(), v.detach(), w.detach(), dict(zip(names, grads))


def _coupling(name, kind, shape, acc, g):
    low, high = COUPLING_RANGES[name]
    if kind == "zero":
        return 0.0
    if kind == "number":
        return float(uniform((), F64, g, low, high))
    return uniform(shape, acc, g, low, high).requires_grad_()


def make_case(*, batch=2, time=20, features=(5,), dtype=F64, seed=0, amplitude="moderate", param_kind="full",
              couplings=("tensor",) * 4, v0_kind="full", w0_kind="full", recurrent=False, a0=True,
              reset="subtract", v_min=None, max_spikes=1, surrogate=None, norm_input=False) -> AdaptiveCase:
    """couplings: per coupling (beta, gamma, zeta, eta) "zero" (the number 0), "number" or "tensor"
    (shaped like the other parameters, requiring grad). recurrent: features must be (N,)."""
    g = torch.Generator().manual_seed(seed)
    acc = acc_dtype(dtype)
    scale, offset = AMPLITUDES[(amplitude, bool(norm_input))]
    shape = param_shape(param_kind, features)
    x = randn((batch, time, *features), dtype, g, scale, offset).requires_grad_()
    tau = uniform(shape, acc, g, 2.0, 30.0).requires_grad_()
    threshold = uniform(shape, acc, g, 0.7, 1.4).requires_grad_()
    tau_adapt = uniform(shape, acc, g, 2.0, 20.0).requires_grad_()
    coupling_values = {name: _coupling(name, kind, shape, acc, g) for name, kind in zip(COUPLINGS, couplings)}

    def state(kind, scale_):
        if kind is None:
            return None
        return randn((batch if kind == "full" else 1, *features), acc, g, scale_).requires_grad_()

    v0, w0 = state(v0_kind, 0.4), state(w0_kind, 0.3)
    weight_rec = a0_value = None
    if recurrent:
        (N,) = features
        weight_rec = randn((N, N), acc, g, 0.6 / math.sqrt(N)).requires_grad_()
        if a0:
            a0_value = torch.bernoulli(torch.full((batch, N), 0.4, dtype=F64), generator=g).to(acc).requires_grad_()
    w_spikes, w_v, w_w = (randn((batch, time, *features), acc, g) for _ in range(3))
    options = dict(reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes, surrogate=surrogate,
                   norm_input=norm_input)
    return AdaptiveCase(x, tau, threshold, tau_adapt, coupling_values, v0, w0, weight_rec, a0_value, w_spikes, w_v,
                        w_w, options)


def compare(case: AdaptiveCase, backend: str, gradient: str = "exodus", grad_scale: float = 1.0,
            state_trace: bool = True, expected=None):
    """adaptive_lif(backend) against the oracle (computed once and returned)."""
    if expected is None:
        expected = case.run(reference, state_trace, gradient=gradient, grad_scale=grad_scale)
    got = case.run(F.adaptive_lif, state_trace, gradient=gradient, grad_scale=grad_scale, backend=backend)
    tag = f"[{backend}/{gradient}{'' if state_trace else '/final'}]"
    assert_equal(got[0], expected[0], f"spikes {tag}")
    for k, name in ((1, "v"), (2, "w")):
        if case.weight_rec is not None and backend != "torch":  # summation order of M a_{t-1} (docstring)
            tol = RECURRENT_FWD_TOL[case.x.dtype]
            torch.testing.assert_close(got[k], expected[k], rtol=tol, atol=tol, msg=lambda m: f"{name} {tag}: {m}")
        else:
            assert_equal(got[k], expected[k], f"{name} {tag}")
    rtol = grad_rtol(case.x.dtype)
    assert got[3].keys() == expected[3].keys()
    for name, e in expected[3].items():
        assert_grad_close(got[3][name], e, rtol, f"d/d{name} {tag}")
    return expected, got


def assert_same_forward(a, b, tag: str) -> None:
    """Two fused backends' results (spikes, v, w, grads): forward bit for bit."""
    for k, name in enumerate(("spikes", "v", "w")):
        assert_equal(a[k], b[k], f"{name} {tag}")


# ----------------------------------------------------------------------------- property test

NON_RECURRENT_FEATURES = [(3,), (2, 3), (1,), (8,), (2, 2, 2)]


@st.composite
def adaptive_case_kwargs(draw):
    # Hypothesis starts from (and mutates towards) the "simplest" draw: the first element of a
    # sampled_from, the low end of an integer range. The maps below make that simplest example a
    # typical one (time 24, batch 2, adaptive, all couplings tensors), not T = 1 with no adaptation.
    recurrent = draw(st.booleans())
    features = ((draw(st.integers(1, 8).map(lambda n: n % 8 + 1)),) if recurrent
                else draw(st.sampled_from(NON_RECURRENT_FEATURES)))
    max_spikes = draw(st.sampled_from([1, 2, None]))
    mode = draw(st.sampled_from(["tensors", "mixed", "numbers", "none"]))
    kinds = {"none": ["zero"], "numbers": ["number", "zero"], "tensors": ["tensor"],
             "mixed": ["tensor", "number", "zero"]}[mode]
    return dict(
        batch=draw(st.integers(1, 4).map(lambda b: b % 4 + 1)),
        time=draw(st.integers(1, 40).map(lambda t: (t + 22) % 40 + 1)),
        features=features,
        dtype=draw(st.sampled_from([F64, torch.float32])),
        seed=draw(st.integers(0, 2**31 - 1)),
        amplitude="moderate" if max_spikes == 1 else "large",
        param_kind=draw(st.sampled_from(["scalar", "full", "broadcast"])),
        couplings=tuple(draw(st.sampled_from(kinds)) for _ in COUPLINGS),
        v0_kind=draw(st.sampled_from([None, "full", "broadcast"])),
        w0_kind=draw(st.sampled_from([None, "full", "broadcast"])) if mode != "none" else None,
        recurrent=recurrent,
        a0=draw(st.booleans()),
        reset=draw(st.sampled_from(["subtract", "zero"])),
        v_min=draw(st.one_of(st.none(), st.floats(-1.5, -0.05))),
        max_spikes=max_spikes,
        surrogate=draw(st.sampled_from(SURROGATES)),
        norm_input=draw(st.booleans()),
    )


def test_adaptive_matches_reference_property():
    """Random shapes/options/couplings, recurrent or not: cpu, emulation and torch equal the oracle."""
    stats = []

    @settings(max_examples=60)
    @given(kwargs=adaptive_case_kwargs(), gradient=st.sampled_from(["exodus", "slayer"]),
           grad_scale=st.floats(0.3, 2.0), state_trace=st.booleans())
    def check(kwargs, gradient, grad_scale, state_trace):
        case = make_case(**kwargs)
        expected, cpu = compare(case, "cpu", gradient, grad_scale, state_trace)
        _, emulated = compare(case, "emulation", gradient, grad_scale, state_trace, expected)
        compare(case, "torch", gradient, grad_scale, state_trace, expected)
        assert_same_forward(cpu, emulated, "cpu vs emulation")
        # The adaptive threshold stayed positive (the sampled couplings are meant to keep it so).
        spikes, v, w, _ = case.run(reference)
        beta = case.couplings["beta"]
        w0 = case.w0.detach() if case.w0 is not None else torch.zeros((), dtype=w.dtype)
        w_prev = torch.cat([w0.to(w.dtype).expand(w[:, 0].shape).unsqueeze(1), w[:, :-1]], 1)
        theta_t = case.threshold.detach() + (beta.detach() if isinstance(beta, torch.Tensor) else beta) * w_prev
        assert bool((theta_t > 0).all()), "adaptive threshold fell to <= 0: narrow COUPLING_RANGES"
        stats.append((bool(spikes.any()), bool(w.any()), kwargs["recurrent"]))

    check()
    # The inputs are scaled so that most examples spike and adapt: the comparison is not vacuous.
    assert len(stats) >= 55, len(stats)
    assert sum(s for s, _, _ in stats) >= 0.8 * len(stats), stats
    assert sum(a for _, a, _ in stats) >= 0.5 * len(stats), stats
    assert 0.3 * len(stats) <= sum(r for _, _, r in stats) <= 0.7 * len(stats), stats


@settings(max_examples=40, deadline=None)
@given(kwargs=adaptive_case_kwargs(), state_trace=st.booleans(), frozen=st.booleans())
def test_spike_loss_paths_match_reference(kwargs, state_trace, frozen):
    """Loss on the spikes only, exodus gradient, single spikes, no v_min: the CPU backward's LEAN
    variants (dL/dv = dL/dw = 0 at compile time), which the test above never reaches (its loss weighs
    v and w too). Feed-forward and recurrent, with and without norm_input; neuron parameters trained,
    or frozen (the variant without the parameter sums)."""
    kwargs.update(v_min=None, max_spikes=1, amplitude="moderate")
    case = make_case(**kwargs)
    if frozen:
        detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
        case = dataclasses.replace(case, tau=case.tau.detach(), threshold=case.threshold.detach(),
                                   tau_adapt=case.tau_adapt.detach(),
                                   couplings={n: detach(c) for n, c in case.couplings.items()})
    expected = case.run(reference, state_trace, spikes_only=True)
    got = case.run(F.adaptive_lif, state_trace, spikes_only=True, backend="cpu")
    assert_equal(got[0], expected[0], "spikes")
    for name, e in expected[3].items():
        assert_grad_close(got[3][name], e, grad_rtol(case.x.dtype), f"d/d{name}")


# ----------------------------------------------------------------------------- fixed cases

@pytest.mark.parametrize("surrogate", SURROGATES, ids=SURROGATE_IDS)
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_every_surrogate_recurrent_and_not(surrogate, recurrent):
    """Every surrogate with all couplings trained, v_min clipping, both gradient modes, float64."""
    case = make_case(batch=3, time=30, features=(6,), seed=21, recurrent=recurrent, v_min=-0.5,
                     surrogate=surrogate, reset="zero" if recurrent else "subtract")
    expected, cpu = compare(case, "cpu")
    assert_same_forward(compare(case, "emulation", expected=expected)[1], cpu, "cpu vs emulation")
    compare(case, "cpu", "slayer", grad_scale=0.6)
    spikes, v, w, grads = expected
    assert 0.05 < spikes.mean() < 0.8
    assert bool((v == -0.5).any()), "v_min should clip"
    assert all(grads[name].abs().sum() > 0 for name in (*COUPLINGS, "tau_adapt")), "every coupling has gradient"


@pytest.mark.parametrize("time", [31, 32, 33, 66, 97])
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_cpu_w_rebuilt_across_checkpoint_chunks(time, recurrent):
    """The CPU forward keeps w only every 32 steps and the backward rebuilds each chunk from the saved h:
    lengths around and across chunk boundaries, every parameter trained, v_min, float64 against the
    oracle; the rebuilt w drives the gradients of the couplings, so a wrong w_t shows up there."""
    case = make_case(batch=3, time=time, features=(6,), seed=40 + time, recurrent=recurrent, v_min=-0.6)
    expected, _ = compare(case, "cpu")
    assert all(expected[3][name].abs().sum() > 0 for name in (*COUPLINGS, "tau_adapt"))


@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_cpu_saves_one_element_per_neuron_step(recurrent):
    """What autograd keeps for the CPU backward of an adaptive layer: h (B, T, N) and the w checkpoints
    (2 rows per 32 steps), plus the output spikes for a recurrent layer; not a full w trace."""
    B, T, N = 2, 100, 8
    case = make_case(batch=B, time=T, features=(N,), seed=5, recurrent=recurrent)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spikes, _, _ = F.adaptive_lif(case.x, torch.exp(-1.0 / case.tau), case.threshold,
                                      torch.exp(-1.0 / case.tau_adapt), *(case.couplings[n] for n in COUPLINGS),
                                      case.v0, case.w0, weight_rec=case.weight_rec, a0=case.a0, backend="cpu")
    big = sorted((t for t in saved if t.dim() == 3), key=lambda t: t.shape[1])
    checkpoints = 2 * math.ceil(T / 32)
    assert [tuple(t.shape) for t in big] == [(B, checkpoints, N)] + [(B, T, N)] * (2 if recurrent else 1)
    if recurrent:
        assert any(t is spikes or t.data_ptr() == spikes.data_ptr() for t in big)


def test_wide_recurrent_float32_multi_spike():
    """A wider recurrent float32 layer (N = 64), multi-spike counts and a non-binary a0 (both weight the
    recurrent sum): spikes equal the oracle's, v and w to rounding; CPU and GPU kernel bit for bit."""
    case = make_case(batch=5, time=25, features=(64,), dtype=torch.float32, seed=3, recurrent=True,
                     amplitude="large", max_spikes=None)
    case.a0 = randn((5, 64), torch.float32, torch.Generator().manual_seed(1), 0.7).requires_grad_()
    expected, cpu = compare(case, "cpu")
    assert_same_forward(compare(case, "emulation", expected=expected)[1], cpu, "cpu vs emulation")
    assert expected[0].max() > 1


def test_emulation_multiple_blocks():
    """B * N > BLOCK_SIZE and not a multiple of it: the last block has threads past the end."""
    B, N = 3, 67
    assert B * N > launch.BLOCK_SIZE and B * N % launch.BLOCK_SIZE != 0
    for recurrent in (False, True):
        case = make_case(batch=B, time=6, features=(N,), seed=4, recurrent=recurrent)
        expected, emulated = compare(case, "emulation")
        assert_same_forward(compare(case, "cpu", expected=expected)[1], emulated, "cpu vs emulation")


class Guarded:
    """A view into a larger buffer: NaN inside, SENTINEL in GUARD elements on each side."""

    GUARD, SENTINEL = 37, 12345.0

    def __init__(self, shape, dtype, fill=math.nan):
        self.size = math.prod(shape)
        self.buffer = torch.full((self.size + 2 * self.GUARD,), self.SENTINEL, dtype=dtype)
        self.view = self.buffer[self.GUARD:self.GUARD + self.size].view(shape)
        self.view.fill_(fill)

    def check(self, name: str, written: bool = True) -> torch.Tensor:
        assert bool((self.buffer[:self.GUARD] == self.SENTINEL).all()), f"{name}: write before the buffer"
        assert bool((self.buffer[self.GUARD + self.size:] == self.SENTINEL).all()), f"{name}: write past the buffer"
        if written:
            assert not bool(self.view.isnan().any()), f"{name}: elements left unwritten"
        return self.view.clone()


def test_emulated_kernels_stay_inside_their_buffers():
    """The adaptive GPU drivers, launched directly through the emulation over a multi-block grid,
    write every element of their outputs and nothing around them; results equal the oracle."""
    B, T, N = 3, 5, 67
    g = torch.Generator().manual_seed(6)
    x = randn((B, T, N), F64, g, 0.8, 0.4)
    params = torch.stack([uniform((N,), F64, g, *r) for r in
                          ((0.6, 0.95), (0.8, 1.2), (0.7, 0.95), (0.0, 0.5), (0.0, 0.4), (-0.05, 0.2), (0.0, 0.4))])
    v0, w0 = randn((B, N), F64, g, 0.3), randn((B, N), F64, g, 0.3)
    o = launch.LifOptions(has_vmin=True, v_min=-0.4, surrogate=S.Gaussian().kind,
                          surrogate_params=S.Gaussian().kernel_params())
    v_state, w_state = Guarded((B, N), F64), Guarded((B, N), F64)
    v_state.view.copy_(v0)
    w_state.view.copy_(w0)
    out = {name: Guarded((B, T, N), F64) for name in ("spikes", "v", "w", "h", "w_save")}
    plan = launch.adaptive_forward_plan(x, None, params, v_state.view, w_state.view, out["spikes"].view,
                                        out["v"].view, out["w"].view, out["h"].view, out["w_save"].view, o, True)
    emulation.launch(plan, F64)
    result = {name: buf.check(name) for name, buf in out.items()}
    ref = adaptive_lif_ref(x, *params, v0, w0, v_min=-0.4, surrogate=S.Gaussian())
    for k, name in enumerate(("spikes", "v", "w")):
        assert_equal(result[name], ref[k], name)
    assert_equal(v_state.check("v_state"), ref[1][:, -1], "final v")
    assert_equal(w_state.check("w_state"), ref[2][:, -1], "final w")
    assert 0.05 < result["spikes"].mean() < 0.9

    # backward, all parameter gradients, gradients of all three traces
    grads = [randn((B, T, N), F64, g) for _ in range(3)]
    carry_v, carry_w = Guarded((B, N), F64, 0.0), Guarded((B, N), F64, 0.0)
    grad_x, spikes_out = Guarded((B, T, N), F64), Guarded((B, T, N), F64)
    spikes_out.view[:, 0] = 0.0  # the kernel writes a_{t-1} for t >= 1; a_{-1} (a0) is the caller's
    grad_params = Guarded((7, B, N), F64, 0.0)
    plan = launch.adaptive_backward_plan(result["h"], result["w_save"], *grads, None, params, v0, w0, grad_x.view,
                                         spikes_out.view, carry_v.view, carry_w.view, grad_params.view, o, True)
    emulation.launch(plan, F64)
    previous = torch.cat([torch.zeros_like(ref[0][:, :1]), ref[0][:, :-1]], 1)
    assert_equal(spikes_out.check("prev_spikes"), previous, "recomputed previous spikes a_{t-1}")
    leaves = [x.clone().requires_grad_(), *(p.expand(B, N).clone().requires_grad_() for p in params),
              v0.clone().requires_grad_(), w0.clone().requires_grad_()]
    ref = adaptive_lif_ref(leaves[0], *leaves[1:8], leaves[8], leaves[9], v_min=-0.4, surrogate=S.Gaussian())
    expected = torch.autograd.grad(ref, leaves, grads)
    assert_grad_close(grad_x.check("grad_x"), expected[0], 1e-10, "grad_x")
    gp = grad_params.check("grad_params")
    for q, name in enumerate(F.adaptive.PARAMETERS):
        assert_grad_close(gp[q], expected[1 + q], 1e-10, f"grad {name}")
    assert_grad_close(carry_v.check("carry_v"), expected[8], 1e-10, "grad v0")
    assert_grad_close(carry_w.check("carry_w"), expected[9], 1e-10, "grad w0")


# ----------------------------------------------------------------------------- equivalence with LIF

LIF_GRID = [
    dict(),
    dict(reset="zero", v_min=-0.5, surrogate=SURROGATES[1]),
    dict(max_spikes_per_bin=None, norm_input=True, surrogate=SURROGATES[4]),
    dict(max_spikes_per_bin=2, gradient="slayer", grad_scale=0.6, surrogate=SURROGATES[3]),
]


@pytest.mark.parametrize("state_trace", [True, False], ids=["trace", "final"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("options", LIF_GRID, ids=["defaults", "zero-vmin", "unlimited-norm", "max2-slayer"])
@pytest.mark.parametrize("backend", ["cpu", "emulation"])
def test_zero_couplings_is_lif_bit_for_bit(backend, options, dtype, state_trace):
    """beta = gamma = zeta = eta = 0 (numbers) and no w0: exodus.functional.lif exactly."""
    g = torch.Generator().manual_seed(7)
    acc = acc_dtype(dtype)
    big = options.get("max_spikes_per_bin", 1) != 1
    scale, offset = AMPLITUDES[("large" if big else "moderate", options.get("norm_input", False))]
    x = randn((3, 25, 2, 3), dtype, g, scale, offset).requires_grad_()
    tau = uniform((2, 3), acc, g, 3.0, 25.0).requires_grad_()
    theta = uniform((3,), acc, g, 0.8, 1.3).requires_grad_()
    v0 = randn((3, 2, 3), acc, g, 0.4).requires_grad_()
    w_s, w_v = randn(x.shape, acc, g), randn(x.shape, acc, g)
    results = []
    for call in (lambda a: F.lif(x, a, theta, v0, v_trace=state_trace, backend="cpu", **options),
                 lambda a: F.adaptive_lif(x, a, theta, 0.9, 0, 0.0, 0, 0.0, v0, state_trace=state_trace,
                                          backend=backend, **options)[:2]):
        spikes, v = call(torch.exp(-1.0 / tau))
        loss = (spikes.to(acc) * w_s).sum() + (v.to(acc) * (w_v if state_trace else w_v[:, -1])).sum()
        results.append((spikes, v, torch.autograd.grad(loss, (x, tau, theta, v0))))
    (s_lif, v_lif, g_lif), (s, v, grads) = results
    assert torch.equal(s, s_lif) and s.dtype == s_lif.dtype, "spikes"
    assert torch.equal(v, v_lif) and v.dtype == v_lif.dtype, "v"
    assert s_lif.sum() > 10
    for name, got, exp in zip(("x", "tau", "threshold", "v0"), grads, g_lif):
        assert_grad_close(got, exp, grad_rtol(dtype), f"d/d{name}")


@pytest.mark.parametrize("state_trace", [True, False], ids=["trace", "final"])
def test_zero_couplings_return_zero_w(state_trace):
    """Without adaptation w is all zeros, shaped like v, and rho gets no (or a zero) gradient."""
    x = randn((2, 10, 4), F64, torch.Generator().manual_seed(8), 0.8, 0.3)
    rho = torch.tensor(0.9, dtype=F64, requires_grad=True)
    spikes, v, w = F.adaptive_lif(x, 0.9, 1.0, rho, state_trace=state_trace, backend="cpu")
    assert w.shape == v.shape and w.dtype == v.dtype and not bool(w.any())
    (grad,) = torch.autograd.grad(spikes.sum() + v.sum() + w.sum(), rho, allow_unused=True)
    assert grad is None or not bool(grad.any())


# ----------------------------------------------------------------------------- gradcheck

def _smooth_regime(seed: int, gain: float = 1.0):
    """A tiny recurrent adaptive problem whose pre-reset membranes stay >= MARGIN away from the
    adaptive threshold at every step (spikes included): with a narrow Gaussian surrogate sigma is
    < 1e-12 there, so the surrogate gradient is the true derivative of the (locally smooth) forward
    and finite differences measure what the backward computes."""
    g = torch.Generator().manual_seed(seed)
    B, T, N = 2, 6, 3
    x = randn((B, T, N), F64, g, 1.2, 0.4) * gain
    alpha = uniform((N,), F64, g, 0.5, 0.9)
    theta = uniform((N,), F64, g, 0.9, 1.1)
    rho = uniform((N,), F64, g, 0.6, 0.9)
    couplings = [uniform((N,), F64, g, *COUPLING_RANGES[name]) for name in COUPLINGS]
    v0, w0 = randn((B, N), F64, g, 0.3), randn((B, N), F64, g, 0.3)
    weight_rec = randn((N, N), F64, g, 0.5)
    a0 = randn((B, N), F64, g, 0.5)
    return [x, alpha, theta, rho, *couplings, v0, w0, weight_rec, a0]


MARGIN = 0.1
NARROW = S.Gaussian(sigma=0.01)  # sigma <= 20 exp(-50) ~ 4e-21 at MARGIN


def _pre_reset_margin(inputs, **options):
    x, alpha, theta, rho, beta, gamma, zeta, eta, v0, w0, weight_rec, a0 = inputs
    spikes, v, w = adaptive_lif_ref(x, alpha, theta, rho, beta, gamma, zeta, eta, v0, w0, weight_rec=weight_rec,
                                    a0=a0, **options)
    w_prev = torch.cat([w0.unsqueeze(1), w[:, :-1]], 1)
    theta_t = theta + beta * w_prev
    v_prev = torch.cat([v0.unsqueeze(1), v[:, :-1]], 1)
    a_prev = torch.cat([a0.unsqueeze(1), spikes[:, :-1]], 1)
    drive = x + a_prev @ weight_rec.t() - gamma * w_prev
    h = alpha * v_prev + ((1 - alpha) * drive if options.get("norm_input") else drive)
    return spikes, (h - theta_t).abs().min().item()


@pytest.mark.parametrize("seed, gain, options", [(20, 1.0, dict()), (31, 3.0, dict(reset="zero", norm_input=True))],
                         ids=["subtract", "zero-norm"])
def test_gradcheck_recurrent_adaptive(seed, gain, options):
    """Finite differences of the recurrent adaptive op (all 12 inputs) equal its backward, float64."""
    options = dict(surrogate=NARROW, **options)
    inputs = _smooth_regime(seed, gain)  # seeds picked as the first in the regime (checked here)
    spikes, margin = _pre_reset_margin(inputs, **options)
    assert margin > MARGIN, f"a pre-reset membrane is within {margin:.3f} of the adaptive threshold"
    assert 0.2 < spikes.mean() < 0.8, "the regime should have spikes (they drive the recurrence)"
    inputs = [t.clone().requires_grad_() for t in inputs]

    def fn(x, alpha, theta, rho, beta, gamma, zeta, eta, v0, w0, weight_rec, a0):
        return F.adaptive_lif(x, alpha, theta, rho, beta, gamma, zeta, eta, v0, w0, weight_rec=weight_rec, a0=a0,
                              backend="cpu", **options)

    assert gradcheck(fn, inputs)


# ----------------------------------------------------------------------------- torch.compile

class RecurrentNet(nn.Module):
    """Linear -> AdaptiveLIF (recurrent, all adaptation trained per neuron) -> Linear."""

    def __init__(self, n_in=4, n_hidden=6, n_out=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.alif = exodus.AdaptiveLIF(
            tau_mem=uniform((n_hidden,), torch.float32, g, 4.0, 20.0), tau_adapt=15.0, adapt_threshold=0.3,
            adapt_current=0.2, adapt_membrane=0.05, adapt_spike=0.2, train_tau=True, train_threshold=True,
            train_adaptation=True, recurrent=True, weight_rec_gain=0.5, shape=(n_hidden,), v_min=-1.0,
            record_states=True)
        self.fc2 = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        return self.fc2(self.alif(self.fc1(x)))


def _run_twice(model, inputs, weights):
    """Two consecutive calls (v, w, a carried with gradient); loss on outputs and recorded v, w."""
    loss, outputs = 0, []
    for x, w in zip(inputs, weights):
        out = model(x)
        rec = model.alif.recordings
        loss = loss + (out * w).sum() + 0.1 * rec["v"].sum() + 0.1 * rec["w"].sum()
        outputs.append(out.detach())
    return outputs, torch.autograd.grad(loss, list(inputs) + list(model.parameters()))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_recurrent_adaptive_model(fresh_dynamo):
    torch.manual_seed(1)
    model = RecurrentNet().to(F64)
    g = torch.Generator().manual_seed(1)
    inputs = [randn((3, t, 4), F64, g, 1.5, 0.5).requires_grad_() for t in (11, 7)]
    weights = [randn((3, t, 3), F64, g) for t in (11, 7)]
    compiled_model, explained_model = copy.deepcopy(model), copy.deepcopy(model)
    counts = []
    hook = model.alif.register_forward_hook(lambda m, a, out: counts.append(float(out.detach().sum())))
    eager = _run_twice(model, inputs, weights)
    hook.remove()
    assert min(counts) > 5, "the hidden layer should spike in both calls"

    seen = []

    def recording_backend(gm, example_inputs):  # aot_eager that records the ops dynamo traced
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return aot_autograd(fw_compiler=lambda g_, _: make_boxed_func(g_.forward))(gm, example_inputs)

    explanation = torch._dynamo.explain(explained_model)(inputs[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=recording_backend)
    result = _run_twice(compiled, inputs, weights)
    assert "exodus.adaptive_scan.default" in seen, seen
    for k, (a, b) in enumerate(zip(result[0], eager[0])):
        assert_grad_close(a, b, 1e-12, f"output {k}")
    for k, (a, b) in enumerate(zip(result[1], eager[1])):
        assert_grad_close(a, b, 1e-12, f"gradient {k}")
    for name in ("v", "w", "a"):
        assert_grad_close(getattr(compiled_model.alif, name), getattr(model.alif, name), 1e-12, f"state {name}")


def _recorded_calls(monkeypatch, module, op_name, call):
    calls = []
    original = getattr(module, op_name)

    def recorder(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(module, op_name, recorder)
    call()
    monkeypatch.undo()
    assert calls, f"{op_name} was not called"
    return calls


@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_opcheck_adaptive_ops(monkeypatch, recurrent):
    """torch.library.opcheck of the forward and backward custom ops with the arguments the API passes."""
    case = make_case(batch=2, time=5, features=(3,), seed=9, recurrent=recurrent, v_min=-0.5)
    module = F.adaptive
    detached = lambda args: tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)  # noqa: E731
    # The eager CPU backward writes dL/dx over the saved h (the _into_h op, checked last);
    # opcheck compares the forward's outputs, h among them, after a backward: keep h intact there.
    lif_module.GRAD_X_IN_H = False
    try:
        for args in _recorded_calls(monkeypatch, module, "adaptive_scan",
                                    lambda: case.run(F.adaptive_lif, backend="cpu")):
            torch.library.opcheck(torch.ops.exodus.adaptive_scan.default, args)
        for args in _recorded_calls(monkeypatch, module, "adaptive_scan_backward",
                                    lambda: case.run(F.adaptive_lif, backend="cpu")):
            torch.library.opcheck(torch.ops.exodus.adaptive_scan_backward.default, detached(args))
    finally:
        lif_module.GRAD_X_IN_H = True
    for args in _recorded_calls(monkeypatch, module, "adaptive_scan_backward_into_h",
                                lambda: case.run(F.adaptive_lif, backend="cpu")):
        assert args[12] is True  # into_h
        torch.library.opcheck(torch.ops.exodus.adaptive_scan_backward_into_h.default, detached(args))


# ----------------------------------------------------------------------------- empty inputs

@pytest.mark.parametrize("state_trace", [True, False], ids=["trace", "final"])
@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 5, 3), (2, 5, 0), (0, 0, 0)], ids=["T0", "B0", "N0", "all0"])
def test_empty_inputs(shape, backend, recurrent, state_trace):
    B, T, N = shape
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    params = [torch.full((N,), value, dtype=F64, requires_grad=True) for value in (0.9, 1.0, 0.8, 0.2, 0.1, 0.1, 0.2)]
    v0, w0 = (torch.randn((B, N), dtype=F64, requires_grad=True) for _ in range(2))
    extra = {}
    if recurrent:
        extra = dict(weight_rec=torch.randn((N, N), dtype=F64, requires_grad=True),
                     a0=torch.ones((B, N), dtype=F64, requires_grad=True))
    spikes, v, w = F.adaptive_lif(x, *params, v0, w0, state_trace=state_trace, backend=backend, **extra)
    state_shape = shape if state_trace else (B, N)
    assert spikes.shape == shape and spikes.dtype == F64
    assert v.shape == w.shape == state_shape
    if not state_trace and T == 0:  # no steps: the final states are the initial ones
        assert_equal(v.detach(), v0.detach(), "final v")
        assert_equal(w.detach(), w0.detach(), "final w")
    loss = spikes.sum() + v.sum() + w.sum()
    if loss.requires_grad:
        leaves = [x, *params, v0, w0, *extra.values()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for k, grad in enumerate(grads):
            assert grad is None or grad.shape == leaves[k].shape
            if not (not state_trace and T == 0 and k in (8, 9)):
                assert grad is None or not bool(grad.any()), f"leaf {k}: gradient of an empty output must be zero"


# ----------------------------------------------------------------------------- dL/dx over the saved h

@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_grad_x_written_over_saved_h(recurrent):
    """The CPU backward writes dL/dx over the saved h (no new (B, T, N) buffer) unless the graph is
    kept; kept or not, and with the reuse switched off, the gradients are the same bits."""
    case = make_case(batch=3, time=12, features=(4,), seed=21, recurrent=recurrent)

    def make_loss():
        spikes, v, w = F.adaptive_lif(case.x, torch.exp(-1.0 / case.tau), case.threshold,
                                      torch.exp(-1.0 / case.tau_adapt), *(case.couplings[n] for n in COUPLINGS),
                                      case.v0, case.w0, weight_rec=case.weight_rec, a0=case.a0, backend="cpu")
        loss = (spikes * case.w_spikes).sum() + (v * case.w_v).sum() + (w * case.w_w).sum()
        return loss, [leaf for _, leaf in case.named_leaves()]

    check_grad_x_over_saved_h(F.adaptive, make_loss, case.x.shape)


# ----------------------------------------------------------------------------- recurrent CPU backward over threads

@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kind", ["float64-all-trained", "float32-multi-spike"])
def test_recurrent_backward_over_neuron_columns(threads, kind):
    """The one-call recurrent CPU backward splits the neurons into column ranges, one per thread
    (uneven ranges, a partial last panel of M, a barrier per step): the oracle's gradients, and the
    single-thread run's to rounding (its forward, parallel over batch rows, bit for bit). B T N is
    above the drivers' parallel-work threshold."""
    if kind == "float64-all-trained":
        case = make_case(batch=9, time=64, features=(70,), seed=31, recurrent=True, v_min=-0.5, v0_kind="broadcast")
    else:
        case = make_case(batch=7, time=48, features=(100,), dtype=torch.float32, seed=32, recurrent=True,
                         amplitude="large", max_spikes=None)
    assert case.x.numel() >= 1 << 15
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        compare(case, "cpu")
        split = case.run(F.adaptive_lif, backend="cpu")
        torch.set_num_threads(1)
        whole = case.run(F.adaptive_lif, backend="cpu")
    finally:
        torch.set_num_threads(previous)
    assert_same_forward(split, whole, "forward over threads vs one thread")  # same summation order
    rtol = 1e-12 if case.x.dtype == F64 else 1e-5
    for name, g in whole[3].items():
        torch.testing.assert_close(split[3][name], g, rtol=rtol, atol=rtol * float(g.abs().max()), msg=name)
