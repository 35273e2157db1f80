"""torch.compile: the custom ops trace without graph breaks (fullgraph=True raises on a
break) and compiled models give the eager outputs and gradients; torch.library.opcheck
validates the op registrations (schema, fake tensors, autograd)."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch._dynamo
from torch import nn

import exodus
from conftest import SURROGATES, assert_grad_close, randn, uniform
from exodus import functional as F

F64 = torch.float64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Net(nn.Module):
    """Linear -> LIF (trainable per-neuron tau and threshold) -> Linear -> ExpLeak."""

    def __init__(self, n_in=4, n_hidden=6, n_out=3, tau_syn=None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.lif = exodus.LIF(tau_mem=uniform((n_hidden,), torch.float32, g, 4.0, 20.0), tau_syn=tau_syn,
                              train_tau=True, train_threshold=True, shape=(n_hidden,), v_min=-1.0,
                              record_states=True)
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.leak = exodus.ExpLeak(tau_mem=8.0, train_tau=True)

    def forward(self, x):
        return self.leak(self.fc2(self.lif(self.fc1(x))))


def run_twice(model, inputs, weights):
    """Two consecutive calls (state carried with gradient); loss on outputs and LIF membrane."""
    loss = 0
    outputs = []
    for x, w in zip(inputs, weights):
        out = model(x)
        loss = loss + (out * w).sum() + model.lif.recordings["v"].sum() * 0.1
        outputs.append(out.detach())
    grads = torch.autograd.grad(loss, [x for x in inputs] + list(model.parameters()))
    return outputs, grads


def make_problem(seed, dtype=F64, batch=3, times=(12, 9), tau_syn=None):
    torch.manual_seed(seed)
    model = Net(tau_syn=tau_syn).to(dtype)
    g = torch.Generator().manual_seed(seed)
    inputs = [randn((batch, t, 4), dtype, g, 1.5, 0.5).requires_grad_() for t in times]
    weights = [randn((batch, t, 3), dtype, g) for t in times]
    return model, inputs, weights


def assert_same_run(eager, compiled, rtol):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    for k, (a, b) in enumerate(zip(out_c, out_e)):
        assert_grad_close(a, b, rtol, f"output {k}")
    for k, (a, b) in enumerate(zip(grads_c, grads_e)):
        assert_grad_close(a, b, rtol, f"gradient {k}")


@pytest.mark.parametrize("tau_syn", [None, 3.0])
def test_compiled_model_matches_eager_aot_eager(tau_syn):
    model, inputs, weights = make_problem(1, tau_syn=tau_syn)
    compiled_model = copy.deepcopy(model)
    spike_counts = []
    hook = model.lif.register_forward_hook(lambda module, args, out: spike_counts.append(float(out.detach().sum())))
    eager = run_twice(model, inputs, weights)
    hook.remove()
    assert min(spike_counts) > 5, "the hidden layer should spike in both calls"
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    result = run_twice(compiled, inputs, weights)
    assert compiled_model.lif.recordings["v"].shape == (3, 9, 6)
    assert_same_run(eager, result, 1e-12)
    # the state is carried inside the compiled module exactly as in eager mode
    assert_grad_close(compiled_model.lif.v, model.lif.v, 1e-12, "carried state")


def test_compiled_graph_contains_the_fused_ops():
    """Under torch.compile the "auto" backend still resolves to the fused ops (not the reference loop)."""
    seen = []

    def recording_backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    model, inputs, _ = make_problem(5, tau_syn=2.0)
    torch.compile(model, fullgraph=True, backend=recording_backend)(inputs[0])
    assert "exodus.lif_scan.default" in seen, seen
    assert seen.count("exodus.leaky_scan.default") == 2, seen  # synaptic current and ExpLeak


def test_compiled_functional_dynamic_time():
    """The fake implementations give correct shapes for varying time lengths (dynamic shapes)."""

    def fn(x, alpha, theta):
        spikes, v = F.lif(x, alpha, theta, reset="zero", max_spikes_per_bin=None)
        return spikes * 2 + v + F.leaky(x, alpha, norm_input=True)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    g = torch.Generator().manual_seed(2)
    alpha = uniform((5,), F64, g, 0.5, 0.95).requires_grad_()
    theta = uniform((5,), F64, g, 0.8, 1.2).requires_grad_()
    for time in (7, 13, 1):
        x = randn((2, time, 5), F64, g, 1.5, 0.5).requires_grad_()
        eager_out = fn(x, alpha, theta)
        out = compiled(x, alpha, theta)
        assert out.shape == x.shape
        assert_grad_close(out, eager_out, 1e-12, f"output T={time}")
        grads_e = torch.autograd.grad(eager_out.sum(), (x, alpha, theta))
        grads_c = torch.autograd.grad(out.sum(), (x, alpha, theta))
        for name, a, b in zip(("x", "alpha", "theta"), grads_c, grads_e):
            assert_grad_close(a, b, 1e-12, f"d/d{name} T={time}")


def test_compiled_model_matches_eager_inductor():
    """One run through the default (inductor) backend; it builds C++ and takes ~30 s."""
    model, inputs, weights = make_problem(3)
    compiled_model = copy.deepcopy(model)
    eager = run_twice(model, inputs, weights)
    result = run_twice(torch.compile(compiled_model, fullgraph=True), inputs, weights)
    assert_same_run(eager, result, 1e-9)


def recorded_op_calls(monkeypatch, op_name, call):
    """The exact arguments the public API passes to the custom op (robust to schema changes)."""
    calls = []
    module = sys.modules["exodus.functional.lif"]  # defines and calls the op (the package re-exports it)
    original = getattr(module, op_name)

    def recorder(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(module, op_name, recorder)
    call()
    monkeypatch.undo()
    assert calls, f"{op_name} was not called"
    return calls


def _inputs(seed=4):
    g = torch.Generator().manual_seed(seed)
    x = randn((2, 6, 3), F64, g, 1.0, 0.4).requires_grad_()
    alpha = uniform((3,), F64, g, 0.6, 0.95).requires_grad_()
    theta = uniform((3,), F64, g, 0.8, 1.2).requires_grad_()
    v0 = randn((2, 3), F64, g, 0.3).requires_grad_()
    return x, alpha, theta, v0


@pytest.mark.parametrize("options", [
    dict(),
    dict(reset="zero", v_min=-0.5, norm_input=True, gradient="slayer", grad_scale=0.5, max_spikes_per_bin=None,
         surrogate=SURROGATES[5], v_trace=False),
], ids=["defaults", "zero-slayer-vmin-norm-final"])
def test_opcheck_lif_scan(monkeypatch, options):
    x, alpha, theta, v0 = _inputs()
    calls = recorded_op_calls(monkeypatch, "lif_scan",
                              lambda: F.lif(x, alpha, theta, v0, backend="cpu", **options))
    lif_module = sys.modules["exodus.functional.lif"]
    lif_module.GRAD_X_IN_H = False  # opcheck compares the outputs, h among them, after its own backward
    try:
        for args in calls:
            torch.library.opcheck(torch.ops.exodus.lif_scan.default, args)
    finally:
        lif_module.GRAD_X_IN_H = True


def test_opcheck_leaky_scan(monkeypatch):
    x, alpha, _, v0 = _inputs()
    calls = recorded_op_calls(monkeypatch, "leaky_scan", lambda: F.leaky(x, alpha, v0, norm_input=True, backend="cpu"))
    for args in calls:
        torch.library.opcheck(torch.ops.exodus.leaky_scan.default, args)


@pytest.mark.parametrize("trained", ["all", "none", "alpha", "theta"])
@pytest.mark.parametrize("outputs", ["both", "spikes", "v"])
def test_opcheck_backward_ops(monkeypatch, outputs, trained):
    """The backward custom ops, with the arguments autograd really passes (incl. None gradients and
    parameters without requires_grad), detached: the backward ops are deliberately not
    differentiable (see test_gradcheck.py)."""
    x, alpha, theta, v0 = _inputs()
    alpha = alpha if trained in ("all", "alpha") else alpha.detach()
    theta = theta if trained in ("all", "theta") else theta.detach()

    def detached(args):
        return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

    def lif_backward():
        spikes, v = F.lif(x, alpha, theta, v0, backend="cpu")
        loss = {"both": spikes.sum() + v.sum(), "spikes": spikes.sum(), "v": v.sum()}[outputs]
        torch.autograd.grad(loss, [t for t in (x, alpha, theta, v0) if t.requires_grad])

    # The eager CPU backward writes dL/dx over the saved h (the _into_h op, checked after it); opcheck
    # compares the forward's outputs, h among them, after a backward: keep h intact for that check.
    lif_module = sys.modules["exodus.functional.lif"]
    lif_module.GRAD_X_IN_H = False
    try:
        for args in recorded_op_calls(monkeypatch, "lif_scan_backward", lif_backward):
            torch.library.opcheck(torch.ops.exodus.lif_scan_backward.default, detached(args))
    finally:
        lif_module.GRAD_X_IN_H = True
    for args in recorded_op_calls(monkeypatch, "lif_scan_backward_into_h", lif_backward):
        assert args[8] is True  # into_h
        torch.library.opcheck(torch.ops.exodus.lif_scan_backward_into_h.default, detached(args))

    def leaky_backward():
        torch.autograd.grad(F.leaky(x, alpha, v0, backend="cpu").sum(), [t for t in (x, alpha, v0) if t.requires_grad])

    for args in recorded_op_calls(monkeypatch, "leaky_scan_backward", leaky_backward):
        torch.library.opcheck(torch.ops.exodus.leaky_scan_backward.default, detached(args))
