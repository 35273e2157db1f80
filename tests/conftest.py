"""Shared helpers for the exodus tests.

The oracle is exodus.reference (plain PyTorch loop; autograd through it is BPTT).
Fast paths are compared against it: forward bit for bit, gradients within
``GRAD_RTOL`` relative to the largest reference gradient.

Test files import the helpers with ``from conftest import ...`` (pytest puts
tests/ on sys.path because tests/ has no __init__.py).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from exodus import surrogate as S
from exodus.reference import acc_dtype

# torch.compile's on-disk caches (AOT autograd, FX graphs) key a compiled backward on the forward
# graph only: after a change to an op's backward they can hand back a stale one. The tests compile
# into a fresh cache of their own (subprocesses inherit it).
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="exodus-tests-inductor-")
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

# Reproducible property tests: same examples on every run, nothing read from a local database.
settings.register_profile("exodus", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("exodus")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (and CuPy)")

# Gradient tolerance relative to max |reference gradient| (the kernels change only the
# summation order of the reverse scan, not the math).
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}

# All six surrogates, with non-default parameters where they have any.
SURROGATES = [
    S.SingleExponential(width=0.4, scale=0.8),
    S.PeriodicExponential(width=0.3, scale=1.2),
    S.Heaviside(window=0.6),
    S.Gaussian(mu=0.1, sigma=0.4, scale=0.9),
    S.FastSigmoid(slope=8.0, scale=0.7),
    S.ATan(alpha=3.0),
]
SURROGATE_IDS = [type(s).__name__ for s in SURROGATES]

FEATURE_SHAPES = [(1,), (5,), (2, 3), (2, 2, 3)]


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for modules that make thousands of tiny kernel calls: on a
    loaded 2-core machine an OpenMP region per tiny call costs milliseconds. The
    multi-threaded tiling is tested explicitly (test_oracle.py::test_cpu_threads_and_tiles)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- comparisons

def assert_grad_close(got: Optional[torch.Tensor], expected: Optional[torch.Tensor], rtol: float, name: str) -> None:
    """|got - expected| <= rtol * max(|expected|, |got|) elementwise-max, same shape and dtype."""
    if expected is None or got is None:  # unused leaf: the other side must be None or all zeros
        assert _all_zero(got) and _all_zero(expected), f"{name}: None vs non-zero gradient"
        return
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert got.dtype == expected.dtype, f"{name}: dtype {got.dtype} != {expected.dtype}"
    assert bool(torch.isfinite(expected).all()), f"{name}: reference gradient is not finite"
    g, e = got.double(), expected.double()
    scale = max(e.abs().max().item(), g.abs().max().item()) if e.numel() else 0.0
    err = (g - e).abs().max().item() if e.numel() else 0.0
    assert err <= rtol * scale, f"{name}: max abs error {err:.3e} > {rtol:.0e} x {scale:.3e}"


def _all_zero(t: Optional[torch.Tensor]) -> bool:
    return t is None or not bool(t.any())


def assert_equal(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, \
        f"{name}: {tuple(got.shape)}/{got.dtype} vs {tuple(expected.shape)}/{expected.dtype}"
    if not torch.equal(got, expected):
        diff = (got.double() - expected.double()).abs()
        raise AssertionError(f"{name}: not bitwise equal, {int((diff > 0).sum())} of {diff.numel()} elements "
                             f"differ, max {diff.max().item():.3e}")


# ----------------------------------------------------------------------------- inputs

def randn(shape, dtype, generator, scale=1.0, offset=0.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=torch.float64, generator=generator) * scale + offset).to(dtype)


def uniform(shape, dtype, generator, low, high) -> torch.Tensor:
    return (torch.rand(shape, dtype=torch.float64, generator=generator) * (high - low) + low).to(dtype)


# Input amplitudes (scale, offset) with threshold ~1: "moderate" spikes a fair amount,
# "large" gives several spikes per bin when allowed. With norm_input the input is
# multiplied by (1 - alpha), so the offset must exceed the threshold to reach it.
AMPLITUDES = {
    ("moderate", False): (0.8, 0.3),
    ("large", False): (2.0, 1.5),
    ("moderate", True): (1.5, 1.3),
    ("large", True): (4.0, 3.0),
}


def param_shape(kind: str, features: tuple) -> tuple:
    """'scalar' -> (), 'full' -> features, 'broadcast' -> features with leading dims 1."""
    if kind == "scalar":
        return ()
    if kind == "full":
        return tuple(features)
    return (1,) * (len(features) - 1) + tuple(features[-1:])


@dataclass
class LifCase:
    """Leaves of one LIF problem and the random loss weights on spikes and membrane.

    x (batch, time, *features) in ``dtype``; tau (steps) and threshold in the math dtype,
    scalar or per-neuron; v0 (batch or 1, *features) or None. The loss is
    sum(w_spikes * spikes) + sum(w_v * v), so both outputs carry gradient.
    """

    x: torch.Tensor
    tau: torch.Tensor
    threshold: torch.Tensor
    v0: Optional[torch.Tensor]
    w_spikes: torch.Tensor
    w_v: torch.Tensor
    options: dict = field(default_factory=dict)

    @property
    def leaves(self):
        return [t for t in (self.x, self.tau, self.threshold, self.v0) if t is not None]

    def run(self, fn: Callable, final_only: bool = False, **extra):
        """fn(x, alpha, threshold, v0, **options) -> (spikes, v, grads of the leaves).

        final_only: the loss sees only the final membrane v[:, -1] (batch, *features); fn
        returns either the trace (the reference) or the final membrane (lif with v_trace=False).
        """
        alpha = torch.exp(-1.0 / self.tau)
        spikes, v = fn(self.x, alpha, self.threshold, self.v0, **{**self.options, **extra})
        acc = self.w_v.dtype
        w_v = self.w_v
        if final_only:
            w_v = w_v[:, -1]
            if v.dim() == spikes.dim():
                v = v[:, -1]
        loss = (spikes.to(acc) * self.w_spikes).sum() + (v.to(acc) * w_v).sum()
        grads = torch.autograd.grad(loss, self.leaves, allow_unused=True)
        return spikes.detach(), v.detach(), grads

    def names(self):
        return [n for n, t in zip(("x", "tau", "threshold", "v0"), (self.x, self.tau, self.threshold, self.v0))
                if t is not None]


def make_lif_case(*, batch=2, time=20, features=(5,), dtype=torch.float64, seed=0, amplitude="moderate",
                  tau_kind="full", threshold_kind="full", v0_kind="full", reset="subtract", v_min=None,
                  max_spikes=1, surrogate=None, norm_input=False) -> LifCase:
    g = torch.Generator().manual_seed(seed)
    acc = acc_dtype(dtype)
    scale, offset = AMPLITUDES[(amplitude, bool(norm_input))]
    x = randn((batch, time, *features), dtype, g, scale, offset).requires_grad_()
    tau = uniform(param_shape(tau_kind, features), acc, g, 2.0, 30.0).requires_grad_()
    threshold = uniform(param_shape(threshold_kind, features), acc, g, 0.7, 1.4).requires_grad_()
    v0 = None
    if v0_kind is not None:
        v0_shape = (batch, *features) if v0_kind == "full" else (1, *features)
        v0 = randn(v0_shape, acc, g, 0.4).requires_grad_()
    w_spikes = randn((batch, time, *features), acc, g)
    w_v = randn((batch, time, *features), acc, g)
    options = dict(reset=reset, v_min=v_min, max_spikes_per_bin=max_spikes, surrogate=surrogate,
                   norm_input=norm_input)
    return LifCase(x, tau, threshold, v0, w_spikes, w_v, options)


@st.composite
def lif_case_kwargs(draw, dtypes=(torch.float64, torch.float32)):
    """Hypothesis strategy for make_lif_case keyword arguments."""
    return dict(
        batch=draw(st.integers(1, 4)),
        time=draw(st.integers(1, 40)),
        features=draw(st.sampled_from(FEATURE_SHAPES)),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**31 - 1)),
        amplitude=draw(st.sampled_from(["moderate", "large"])),
        tau_kind=draw(st.sampled_from(["scalar", "full", "broadcast"])),
        threshold_kind=draw(st.sampled_from(["scalar", "full", "broadcast"])),
        v0_kind=draw(st.sampled_from([None, "full", "broadcast"])),
        reset=draw(st.sampled_from(["subtract", "zero"])),
        v_min=draw(st.one_of(st.none(), st.floats(-1.5, -0.05))),
        max_spikes=draw(st.sampled_from([1, 2, 3, None])),
        surrogate=draw(st.sampled_from(SURROGATES)),
        norm_input=draw(st.booleans()),
    )


def grad_rtol(dtype: torch.dtype) -> float:
    return GRAD_RTOL[dtype]


def finite_and_nonzero(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all()) and bool(t.abs().sum() > 0)



def check_grad_x_over_saved_h(module, make_loss: Callable, shape) -> list:
    """The CPU backward writes dL/dx over the saved h (exodus.functional.lif.grad_x_in_h). make_loss()
    runs a fresh forward and returns (loss, leaves). Checks: a plain backward asks `module`'s
    empty_for_kernel for no buffer of `shape`; with retain_graph the first backward asks for one and
    the last for none; the gradients are plain tensors and the same bits in all cases and with the
    reuse switched off. Returns the plain backward's gradients."""
    lif_module = sys.modules["exodus.functional.lif"]
    shape = tuple(shape)

    def grads(retain: bool):
        loss, leaves = make_loss()
        results, counts = [], []
        for keep in ((True, False) if retain else (False,)):
            requested, original = [], module.empty_for_kernel

            def spy(size, *args, **kwargs):
                requested.append(tuple(size))
                return original(size, *args, **kwargs)

            module.empty_for_kernel = spy
            try:
                results.append(torch.autograd.grad(loss, leaves, retain_graph=keep, allow_unused=True))
            finally:
                module.empty_for_kernel = original
            counts.append(requested.count(shape))
        return results, counts

    plain, plain_buffers = grads(retain=False)
    kept, kept_buffers = grads(retain=True)
    assert plain_buffers == [0], "dL/dx should take h's buffer"
    assert kept_buffers == [1, 0], "a kept graph needs a fresh dL/dx; the last backward reuses h"
    assert all(g is None or (not g.requires_grad and g.grad_fn is None) for g in plain[0])
    lif_module.GRAD_X_IN_H = False
    try:
        off, off_buffers = grads(retain=False)
    finally:
        lif_module.GRAD_X_IN_H = True
    assert off_buffers == [1]
    for other in (*kept, *off):
        for a, b in zip(plain[0], other):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b)
    return plain[0]
