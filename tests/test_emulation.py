"""The __global__ kernels of cuda/kernels.cu, run on the CPU through the host emulation
(exodus.backends.emulation) from the launch plans the cupy backend uses, against the
plain-PyTorch reference and its autograd (BPTT).

Every launch writes into buffers with sentinel guards on both sides and NaN inside, so a
missing bounds check (threads past B*N in the last block) or an unwritten element shows up.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from exodus import surrogate as S
from exodus.backends import emulation, launch
from exodus.functional import RESETS
from exodus.reference import leaky_ref, lif_ref

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")

GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
GUARD = 41
SENTINEL = 12345.0
SURROGATES = [
    S.SingleExponential(),
    S.SingleExponential(width=0.3, scale=0.7),
    S.PeriodicExponential(width=0.4),
    S.Heaviside(window=0.4),
    S.Gaussian(mu=0.1, sigma=0.4, scale=0.8),
    S.FastSigmoid(slope=5.0, scale=0.5),
    S.ATan(alpha=1.5),
]
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _emulation_available() -> None:
    try:
        emulation._load(torch.float64)
        emulation._load(torch.float32)
    except Exception as error:  # no C++ compiler
        pytest.skip(f"host emulation cannot be built: {error}")


@pytest.fixture(scope="module", autouse=True)
def _built():
    _emulation_available()


# ----------------------------------------------------------------------------- guarded buffers

class Guarded:
    """A (shape) view into a larger buffer: NaN inside, SENTINEL in GUARD elements on each side."""

    def __init__(self, shape, dtype):
        self.size = math.prod(shape)
        self.buffer = torch.full((self.size + 2 * GUARD,), SENTINEL, dtype=dtype)
        self.view = self.buffer[GUARD:GUARD + self.size].view(shape)
        self.view.fill_(math.nan)

    def result(self, name: str) -> torch.Tensor:
        """The view, after checking that the guards are intact and every element was written."""
        assert bool((self.buffer[:GUARD] == SENTINEL).all()), f"{name}: write before the buffer"
        assert bool((self.buffer[GUARD + self.size:] == SENTINEL).all()), f"{name}: write past the buffer"
        assert not bool(self.view.isnan().any()), f"{name}: elements left unwritten"
        return self.view.clone()


def _options(case) -> launch.LifOptions:
    max_spikes, v_min = case["max_spikes"], case["v_min"]
    return launch.LifOptions(
        reset=RESETS[case["reset"]], max_spikes=0 if max_spikes is None else max_spikes, has_vmin=v_min is not None,
        v_min=0.0 if v_min is None else v_min, norm_input=case["norm_input"], v_trace=case["v_trace"],
        gradient=1 if case["gradient"] == "slayer" else 0, surrogate=case["surrogate"].kind,
        grad_scale=case["grad_scale"], surrogate_params=case["surrogate"].kernel_params())


def emulate_lif_forward(x, alpha, theta, v0, o):
    """spikes (B, T, N), v (B, T, N) with o.v_trace else (B, N), h (B, T, N)."""
    B, T, N = x.shape
    spikes, h = Guarded((B, T, N), x.dtype), Guarded((B, T, N), x.dtype)
    v = Guarded((B, T, N) if o.v_trace else (B, N), x.dtype)
    emulation.launch(launch.lif_forward_plan(x, alpha, theta, v0, spikes.view, v.view, h.view, o), x.dtype)
    return spikes.result("spikes"), v.result("v"), h.result("h")


def emulate_lif_backward(h, grad_spikes, grad_v, alpha, theta, v0, o):
    B, T, N = h.shape
    grad_x = Guarded((B, T, N), h.dtype)
    grad_v0, grad_alpha, grad_theta = (Guarded((B, N), h.dtype) for _ in range(3))
    plan = launch.lif_backward_plan(h, grad_spikes, grad_v, alpha, theta, v0, grad_x.view, grad_v0.view,
                                    grad_alpha.view, grad_theta.view, o)
    emulation.launch(plan, h.dtype)
    return (grad_x.result("grad_x"), grad_v0.result("grad_v0"), grad_alpha.result("grad_alpha"),
            grad_theta.result("grad_theta"))


def _reference_lif_grads(x, alpha, theta, v0, kwargs, v_trace, grad_spikes, grad_v):
    """Autograd (BPTT) of lif_ref w.r.t. x, v0 and per-(batch, neuron) alpha, theta (all (B, N)).
    grad_v is the gradient of the membrane trace (B, T, N), or of the final membrane (B, N)."""
    B, _, N = x.shape
    leaves = [x.clone().requires_grad_(), alpha.expand(B, N).clone().requires_grad_(),
              theta.expand(B, N).clone().requires_grad_(), v0.clone().requires_grad_()]
    spikes, v = lif_ref(*leaves, **kwargs)
    v = v if v_trace else v[:, -1]
    pairs = [(out, g) for out, g in ((spikes, grad_spikes), (v, grad_v)) if g is not None]
    if not pairs:
        return [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad([p[0] for p in pairs], leaves, [p[1] for p in pairs], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def assert_rel_close(actual, expected, rtol, name):
    """max |actual - expected| <= rtol * max |expected| (normwise relative error)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= rtol * scale or error == 0.0, f"{name}: max abs error {error:.3e}, max |ref| {scale:.3e}"


# ----------------------------------------------------------------------------- strategies

@st.composite
def lif_cases(draw):
    B = draw(st.integers(1, 3))
    N = draw(st.integers(1, 150))
    assume(B * N % launch.BLOCK_SIZE != 0)
    T = draw(st.integers(1, 10))
    norm_input = draw(st.booleans())
    gradient = draw(st.sampled_from(["exodus", "slayer"]))
    return dict(
        shape=(B, T, N),
        seed=draw(st.integers(0, 2**31 - 1)),
        # alpha = 1 (IAF) with norm_input is rejected by exodus.functional (tests/test_bad_input.py).
        iaf=draw(st.booleans()) and not norm_input,
        reset=draw(st.sampled_from(sorted(RESETS))),
        max_spikes=draw(st.sampled_from([1, 2, 3, None])),
        v_min=draw(st.sampled_from([None, -0.4, 0.2])),
        norm_input=norm_input,
        v_trace=draw(st.booleans()),
        gradient=gradient,
        grad_scale=draw(st.sampled_from([1.0, 0.3])) if gradient == "slayer" else 1.0,
        surrogate=draw(st.sampled_from(SURROGATES)),
        grads=draw(st.sampled_from(["both", "spikes", "v", "none"])),
    )


MULTI_BLOCK = dict(shape=(3, 7, 67), seed=1, iaf=False, reset="subtract", max_spikes=1, v_min=None, norm_input=False,
                   v_trace=True, gradient="exodus", grad_scale=1.0, surrogate=SURROGATES[0], grads="both")


def _inputs(case, dtype):
    B, T, N = case["shape"]
    g = torch.Generator().manual_seed(case["seed"])
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x_scale = 2.0 if case["max_spikes"] != 1 else 0.8     # multi-spike cases need h >> theta
    x = (0.3 + x_scale * randn(B, T, N)).to(dtype)
    alpha = (0.5 + 0.49 * torch.rand(N, generator=g, dtype=torch.float64)).to(dtype)
    if case["iaf"]:
        alpha[::2] = 1.0
    theta = (0.5 + torch.rand(N, generator=g, dtype=torch.float64)).to(dtype)
    v0 = (0.5 * randn(B, N)).to(dtype)
    grad_spikes = randn(B, T, N).to(dtype) if case["grads"] in ("both", "spikes") else None
    v_shape = (B, T, N) if case["v_trace"] else (B, N)
    grad_v = randn(*v_shape).to(dtype) if case["grads"] in ("both", "v") else None
    return x, alpha, theta, v0, grad_spikes, grad_v


def _check_lif(case, dtype):
    x, alpha, theta, v0, grad_spikes, grad_v = _inputs(case, dtype)
    o = _options(case)
    kwargs = dict(reset=case["reset"], v_min=case["v_min"], max_spikes_per_bin=case["max_spikes"],
                  surrogate=case["surrogate"], norm_input=case["norm_input"], gradient=case["gradient"],
                  grad_scale=case["grad_scale"])

    spikes, v, h = emulate_lif_forward(x, alpha, theta, v0, o)
    ref_spikes, ref_v = lif_ref(x, alpha, theta, v0, **kwargs)
    ref_v = ref_v if case["v_trace"] else ref_v[:, -1]
    assert torch.equal(spikes, ref_spikes), "spikes differ from the reference"
    assert torch.equal(v, ref_v), f"membrane differs from the reference by {(v - ref_v).abs().max().item():.3e}"

    grads = emulate_lif_backward(h, grad_spikes, grad_v, alpha, theta, v0, o)
    expected = _reference_lif_grads(x, alpha, theta, v0, kwargs, case["v_trace"], grad_spikes, grad_v)
    for name, actual, ref in zip(("grad_x", "grad_alpha", "grad_theta", "grad_v0"),
                                 (grads[0], grads[2], grads[3], grads[1]), expected):
        assert_rel_close(actual, ref, GRAD_RTOL[dtype], name)
    return spikes


# ----------------------------------------------------------------------------- LIF

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@SETTINGS
@given(case=lif_cases())
@example(case=MULTI_BLOCK)
def test_lif_kernels_match_reference(dtype, case):
    _check_lif(case, dtype)


@pytest.mark.parametrize("skip", ["alpha", "theta", "both"])
def test_lif_backward_without_parameter_gradients(skip):
    """grad_alpha / grad_theta passed as null pointers (parameters not trained): the kernel skips them
    and dL/dx, dL/dv0 and the remaining parameter gradient are unchanged, bit for bit."""
    case = dict(MULTI_BLOCK, v_min=-0.4, norm_input=True)
    x, alpha, theta, v0, grad_spikes, grad_v = _inputs(case, torch.float64)
    o = _options(case)
    _, _, h = emulate_lif_forward(x, alpha, theta, v0, o)
    full = emulate_lif_backward(h, grad_spikes, grad_v, alpha, theta, v0, o)
    B, T, N = h.shape
    grad_x, grad_v0 = Guarded((B, T, N), h.dtype), Guarded((B, N), h.dtype)
    kept = None if skip == "both" else Guarded((B, N), h.dtype)
    grad_alpha, grad_theta = (kept, None) if skip == "theta" else (None, kept)
    plan = launch.lif_backward_plan(h, grad_spikes, grad_v, alpha, theta, v0, grad_x.view, grad_v0.view,
                                    grad_alpha and grad_alpha.view, grad_theta and grad_theta.view, o)
    emulation.launch(plan, h.dtype)
    assert torch.equal(grad_x.result("grad_x"), full[0]) and torch.equal(grad_v0.result("grad_v0"), full[1])
    if skip == "theta":
        assert torch.equal(grad_alpha.result("grad_alpha"), full[2])
    if skip == "alpha":
        assert torch.equal(grad_theta.result("grad_theta"), full[3])
    assert bool(full[2].abs().sum() > 0) and bool(full[3].abs().sum() > 0)


def test_cases_exercise_spikes_and_multiple_blocks():
    """The fixed multi-block example really spans blocks and produces spikes (guards the test itself)."""
    B, T, N = MULTI_BLOCK["shape"]
    assert B * N > launch.BLOCK_SIZE and B * N % launch.BLOCK_SIZE != 0
    spikes = _check_lif(MULTI_BLOCK, torch.float64)
    assert 0 < spikes.mean().item() < 1


def test_lif_zero_time_steps_with_trace():
    """T = 0: the forward writes nothing; the backward returns zero state/parameter gradients."""
    B, N = 3, 50
    x = torch.empty(B, 0, N, dtype=torch.float64)
    alpha, theta = torch.full((N,), 0.9, dtype=torch.float64), torch.ones(N, dtype=torch.float64)
    v0 = torch.ones(B, N, dtype=torch.float64)
    o = launch.LifOptions(v_trace=True)
    spikes, v, h = emulate_lif_forward(x, alpha, theta, v0, o)
    assert spikes.shape == v.shape == h.shape == (B, 0, N)
    grads = emulate_lif_backward(h, torch.empty_like(h), torch.empty_like(h), alpha, theta, v0, o)
    assert grads[0].shape == (B, 0, N)
    for g in grads[1:]:
        assert torch.equal(g, torch.zeros(B, N, dtype=torch.float64))


@pytest.mark.parametrize("part", ["forward", "backward"])
def test_lif_zero_time_steps_final_membrane(part):
    """T = 0 without the trace: the final membrane is v0 itself, so dL/dv0 = dL/dv."""
    B, N = 3, 50
    x = torch.empty(B, 0, N, dtype=torch.float64)
    alpha, theta = torch.full((N,), 0.9, dtype=torch.float64), torch.ones(N, dtype=torch.float64)
    v0 = torch.linspace(-1, 0.9, B * N, dtype=torch.float64).view(B, N)
    o = launch.LifOptions(v_trace=False)
    spikes, v, h = emulate_lif_forward(x, alpha, theta, v0, o)
    assert torch.equal(v, v0)
    if part == "backward":
        grad_v = torch.linspace(1, 2, B * N, dtype=torch.float64).view(B, N)
        _, grad_v0, grad_alpha, grad_theta = emulate_lif_backward(h, None, grad_v, alpha, theta, v0, o)
        assert torch.equal(grad_v0, grad_v)
        assert not grad_alpha.any() and not grad_theta.any()


# ----------------------------------------------------------------------------- leaky integrator

def emulate_leaky(x, alpha, v0, grad_v, norm_input):
    B, T, N = x.shape
    v = Guarded((B, T, N), x.dtype)
    emulation.launch(launch.leaky_forward_plan(x, alpha, v0, v.view, norm_input), x.dtype)
    v = v.result("v")
    grad_x, grad_v0, grad_alpha = Guarded((B, T, N), x.dtype), Guarded((B, N), x.dtype), Guarded((B, N), x.dtype)
    emulation.launch(launch.leaky_backward_plan(v, grad_v, alpha, v0, grad_x.view, grad_v0.view, grad_alpha.view,
                                                norm_input), x.dtype)
    return v, grad_x.result("grad_x"), grad_v0.result("grad_v0"), grad_alpha.result("grad_alpha")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@SETTINGS
@given(B=st.integers(1, 3), N=st.integers(1, 150), T=st.integers(0, 10), norm_input=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
@example(B=2, N=99, T=5, norm_input=True, seed=3)
def test_leaky_kernels_match_reference(dtype, B, N, T, norm_input, seed):
    assume(B * N % launch.BLOCK_SIZE != 0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, N, generator=g, dtype=torch.float64).to(dtype)
    alpha = (0.3 + 0.69 * torch.rand(N, generator=g, dtype=torch.float64)).to(dtype)
    if not norm_input:
        alpha[::3] = 1.0
    v0 = torch.randn(B, N, generator=g, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(B, T, N, generator=g, dtype=torch.float64).to(dtype)

    v, grad_x, grad_v0, grad_alpha = emulate_leaky(x, alpha, v0, grad_v, norm_input)
    if T == 0:  # (leaky_ref itself cannot run T = 0 with a v0, see tests/test_bad_input.py)
        assert v.shape == grad_x.shape == (B, 0, N)
        assert torch.equal(grad_v0, torch.zeros_like(v0)) and torch.equal(grad_alpha, torch.zeros_like(v0))
        return
    leaves = [x.clone().requires_grad_(), alpha.expand(B, N).clone().requires_grad_(), v0.clone().requires_grad_()]
    ref_v = leaky_ref(*leaves, norm_input=norm_input)
    assert torch.equal(v, ref_v)
    expected = torch.autograd.grad(ref_v, leaves, grad_v)
    for name, actual, ref in zip(("grad_x", "grad_alpha", "grad_v0"), (grad_x, grad_alpha, grad_v0), expected):
        assert_rel_close(actual, ref, GRAD_RTOL[dtype], name)


def test_leaky_backward_without_alpha_gradient():
    """exodus_leaky_backward with grad_alpha = null (alpha not trained): same dL/dx and dL/dv0."""
    g = torch.Generator().manual_seed(5)
    B, T, N = 2, 9, 131
    x, grad_v = (torch.randn(B, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    alpha = 0.3 + 0.69 * torch.rand(N, generator=g, dtype=torch.float64)
    v0 = torch.randn(B, N, generator=g, dtype=torch.float64)
    v, grad_x_full, grad_v0_full, _ = emulate_leaky(x, alpha, v0, grad_v, True)
    grad_x, grad_v0 = Guarded((B, T, N), x.dtype), Guarded((B, N), x.dtype)
    emulation.launch(launch.leaky_backward_plan(v, grad_v, alpha, v0, grad_x.view, grad_v0.view, None, True), x.dtype)
    assert torch.equal(grad_x.result("grad_x"), grad_x_full)
    assert torch.equal(grad_v0.result("grad_v0"), grad_v0_full)


# ----------------------------------------------------------------------------- python -m exodus.check

def test_self_check_passes(capsys):
    from exodus import check
    assert check.main([]) == 0
    out = capsys.readouterr().out
    assert "exodus self-check: PASS" in out
    rows = [line.split()[:2] for line in out.splitlines() if line.split()[:1] in (["cpu"], ["emulation"])]
    expected = len(check.CASES) * len(check.DTYPES)
    assert rows.count(["cpu", "float64"]) + rows.count(["cpu", "float32"]) == expected
    assert rows.count(["emulation", "float64"]) + rows.count(["emulation", "float32"]) == expected


def test_self_check_detects_a_wrong_gradient(capsys, monkeypatch):
    from exodus import check
    exact = check._emulated

    def off_by_1e3(case, leaves, weights):
        outputs, grads = exact(case, leaves, weights)
        return outputs, {name: g * (1 + 1e-3) if name == "alpha" else g for name, g in grads.items()}

    monkeypatch.setattr(check, "_emulated", off_by_1e3)
    assert check.main(["--backend", "emulation"]) == 1
    out = capsys.readouterr().out
    assert "exodus self-check: FAIL" in out and "PASS" not in out.replace("self-check: FAIL", "")


def test_self_check_cases_are_not_trivial():
    """Every LIF case of the self-check spikes, but not everywhere; the multi-spike cases emit
    more than one spike per bin somewhere."""
    from exodus import check
    for case in check.CASES:
        if case.neuron != "lif":
            continue
        leaves, _ = check._problem(case, torch.float64, torch.device("cpu"))
        spikes = check._reference(case, leaves)[0]
        assert 0.02 < (spikes > 0).double().mean().item() < 0.9, case.name
        if case.options.get("max_spikes_per_bin", 1) != 1:
            assert spikes.max().item() > 1, case.name
