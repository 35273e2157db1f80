"""Stateful layers (exodus.LIF, IAF, ExpLeak) against the reference called with the
state chained by hand: v0 of each call = last membrane of the previous call (with gradient).
"""
from __future__ import annotations

from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import exodus
from conftest import SURROGATES, assert_equal, assert_grad_close, grad_rtol, randn, uniform
from exodus.reference import leaky_ref, lif_ref

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
LIF_OPTIONS = ("reset", "v_min", "max_spikes_per_bin", "surrogate", "norm_input", "gradient", "grad_scale")


def reference_chain(chunks, alpha, threshold, tau_syn: Optional[torch.Tensor] = None, **options):
    """lif_ref (after leaky_ref with a synaptic current) over consecutive chunks, the state
    carried with gradient. Returns per chunk (spikes, v, current)."""
    v, i, outputs = None, None, []
    for x in chunks:
        current = x
        if tau_syn is not None:
            current = leaky_ref(x, torch.exp(-1.0 / tau_syn), i)
            i = current[:, -1]
        spikes, trace = lif_ref(current, alpha, threshold, v, **options)
        v = trace[:, -1]
        outputs.append((spikes, trace, current))
    return outputs


def layer_chain(layer, chunks):
    """Per chunk (spikes, v, current): v and current are the recorded traces with
    record_states, else the carried final states layer.v and layer.i (batch, *features)."""
    outputs = []
    for x in chunks:
        spikes = layer(x)
        if layer.record_states:
            outputs.append((spikes, layer.recordings["v"], layer.recordings.get("i", x)))
        else:
            outputs.append((spikes, layer.v, layer.i if layer.tau_syn is not None else x[:, -1]))
    return outputs


def final_states(outputs):
    """Reference chain outputs reduced to what a layer without record_states exposes."""
    return [(s, v[:, -1], i[:, -1]) for s, v, i in outputs]


def chain_loss(outputs, weights):
    """sum over chunks of w_s * spikes + w_v * v (w_v[:, -1] for a final membrane)."""
    return sum((s * ws).sum() + (v * (wv if v.dim() == s.dim() else wv[:, -1])).sum()
               for (s, v, _), (ws, wv) in zip(outputs, weights))


def chunked(x, lengths):
    return list(torch.split(x, list(lengths), dim=1))


def compare_layer_to_reference(layer, x, lengths, alpha_fn, seed=0, expect_spikes=True):
    """Runs ``layer`` over chunks of x and the reference chain; compares forward exactly
    and the gradients of x and of every trainable parameter of the layer."""
    g = torch.Generator().manual_seed(seed)
    weights = [(randn(c.shape, x.dtype, g), randn(c.shape, x.dtype, g)) for c in chunked(x, lengths)]
    params = {name: p for name, p in layer.named_parameters() if not unused_iaf_tau(layer, name)}
    got = layer_chain(layer, chunked(x, lengths))
    grads = torch.autograd.grad(chain_loss(got, weights), [x, *params.values()])

    ref_leaves = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    tau_mem = ref_leaves.get("tau_mem", layer.tau_mem)
    tau_syn = ref_leaves.get("tau_syn", layer.tau_syn)
    threshold = ref_leaves.get("threshold", layer.threshold)
    expected = reference_chain(chunked(x, lengths), alpha_fn(tau_mem), threshold, tau_syn,
                               **{k: getattr(layer, k) for k in LIF_OPTIONS})
    if not layer.record_states:
        expected = final_states(expected)
    ref_grads = torch.autograd.grad(chain_loss(expected, weights), [x, *ref_leaves.values()])

    for k, ((s, v, i), (s_ref, v_ref, i_ref)) in enumerate(zip(got, expected)):
        assert_equal(s, s_ref, f"spikes chunk {k}")
        assert_equal(v, v_ref, f"v chunk {k}")
        if layer.tau_syn is not None:
            assert_equal(i, i_ref, f"synaptic current chunk {k}")
    final_v = expected[-1][1] if not layer.record_states else expected[-1][1][:, -1]
    assert_equal(layer.v, final_v, "final state v")
    rtol = grad_rtol(x.dtype)
    for name, got_grad, ref_grad in zip(["x", *params], grads, ref_grads):
        assert_grad_close(got_grad, ref_grad, rtol, f"d/d{name}")
    if expect_spikes:
        assert sum(float(s.detach().sum()) for s, _, _ in expected) > 0, "no spikes: comparison would be vacuous"
    return got, expected, dict(zip(["x", *params], grads))


def unused_iaf_tau(layer, name) -> bool:
    """IAF(train_tau=True) registers tau_mem (= inf) as a Parameter that alpha() never uses
    (reported bug, see test_iaf_has_no_unused_parameters)."""
    return isinstance(layer, exodus.IAF) and name == "tau_mem"


def lif_alpha(tau):
    return torch.exp(-1.0 / tau)


# ----------------------------------------------------------------------------- property test

def test_lif_layer_chained_calls_property():
    """Random layer options and chunkings; most examples must spike (no vacuous passes)."""
    spiking = []
    check_chained_calls(spiking)
    assert len(spiking) >= 40 and sum(spiking) >= 0.7 * len(spiking), spiking


@settings(max_examples=50)
@given(
    dtype=st.sampled_from([F64, torch.float32]),
    batch=st.integers(1, 3),
    features=st.sampled_from([(4,), (2, 3)]),
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    tau_syn=st.sampled_from([None, 3.0]),
    per_neuron=st.booleans(),
    train=st.sampled_from([(False, False), (True, False), (False, True), (True, True)]),
    reset=st.sampled_from(["subtract", "zero"]),
    v_min=st.sampled_from([None, -0.5]),
    max_spikes=st.sampled_from([1, 2, None]),
    surrogate=st.sampled_from(SURROGATES),
    norm_input=st.booleans(),
    gradient=st.sampled_from(["exodus", "slayer", "bptt"]),
    record_states=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def check_chained_calls(spiking, dtype, batch, features, lengths, tau_syn, per_neuron, train, reset, v_min,
                        max_spikes, surrogate, norm_input, gradient, record_states, seed):
    g = torch.Generator().manual_seed(seed)
    tau_mem = uniform(features, torch.float32, g, 3.0, 25.0) if per_neuron else 12.0
    threshold = uniform(features, torch.float32, g, 0.8, 1.2) if per_neuron else 1.0
    layer = exodus.LIF(tau_mem=tau_mem, tau_syn=tau_syn, threshold=threshold, reset=reset, v_min=v_min,
                       max_spikes_per_bin=max_spikes, surrogate=surrogate, norm_input=norm_input,
                       gradient=gradient, grad_scale=0.7, train_tau=train[0], train_threshold=train[1],
                       shape=features if per_neuron else None, record_states=record_states,
                       backend="cpu").to(dtype)
    gain = 4.0 if norm_input else 1.0
    x = randn((batch, sum(lengths), *features), dtype, g, 0.8 * gain, 0.3 * gain).requires_grad_()
    _, expected, _ = compare_layer_to_reference(layer, x, lengths, lif_alpha, seed=seed, expect_spikes=False)
    spiking.append(any(bool(s.any()) for s, _, _ in expected))


# ----------------------------------------------------------------------------- LIF

@pytest.mark.parametrize("record_states", [True, False])
@pytest.mark.parametrize("tau_syn", [None, 4.0])
def test_state_carried_equals_one_long_call(tau_syn, record_states):
    g = torch.Generator().manual_seed(1)
    x = randn((2, 30, 5), F64, g, 0.8, 0.3).requires_grad_()
    w = randn(x.shape, F64, g)
    results = []
    for lengths in ([30], [7, 1, 12, 10]):
        layer = exodus.LIF(tau_mem=10.0, tau_syn=tau_syn, backend="cpu", record_states=record_states).double()
        spikes, v = zip(*[(layer(c), layer.recordings.get("v")) for c in chunked(x, lengths)])
        spikes = torch.cat(spikes, 1)
        v = torch.cat(v, 1) if record_states else layer.v.unsqueeze(1)  # trace, or the final membrane
        loss = (spikes * w).sum() + (v * w.flip(1)[:, :v.shape[1]]).sum()
        results.append((spikes, v, layer.v, torch.autograd.grad(loss, x)[0]))
    (s1, v1, state1, g1), (s2, v2, state2, g2) = results
    assert s1.sum() > 10
    assert_equal(s2, s1, "spikes")
    assert_equal(v2, v1, "v")
    assert_equal(state2, state1, "final state")
    assert_grad_close(g2, g1, 1e-12, "d/dx")


@pytest.mark.parametrize("record_states", [True, False])
def test_trainable_parameters_receive_reference_gradients(record_states):
    g = torch.Generator().manual_seed(2)
    layer = exodus.LIF(tau_mem=uniform((2, 3), torch.float32, g, 4.0, 20.0), tau_syn=5.0,
                       threshold=uniform((2, 3), torch.float32, g, 0.8, 1.2), train_tau=True, train_threshold=True,
                       shape=(2, 3), v_min=-1.0, record_states=record_states, backend="cpu").double()
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == \
        {"tau_mem": (2, 3), "tau_syn": (2, 3), "threshold": (2, 3)}
    x = randn((3, 25, 2, 3), F64, g, 1.5, 0.5).requires_grad_()
    _, _, grads = compare_layer_to_reference(layer, x, [10, 15], lif_alpha, seed=2)
    for name in ("tau_mem", "tau_syn", "threshold"):
        assert bool((grads[name] != 0).all()), f"every neuron's {name} should get a gradient"


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_tau_syn_equals_leaky_then_lif(reset):
    g = torch.Generator().manual_seed(3)
    layer = exodus.LIF(tau_mem=8.0, tau_syn=3.0, reset=reset, norm_input=True, record_states=True,
                       train_tau=True, backend="cpu").double()
    x = randn((2, 20, 4), F64, g, 2.0, 1.0).requires_grad_()
    compare_layer_to_reference(layer, x, [20], lif_alpha, seed=3)
    assert set(layer.recordings) == {"v", "i"}
    assert layer.i.shape == (2, 4)


def test_record_states_trace():
    g = torch.Generator().manual_seed(4)
    layer = exodus.LIF(tau_mem=6.0, threshold=0.9, record_states=True, backend="cpu").double()
    x = randn((3, 17, 2, 2), F64, g, 0.8, 0.3)
    spikes = layer(x)
    # the layer stores tau and threshold in the default dtype (float32) before .double()
    expected_spikes, expected_v = lif_ref(x, torch.exp(-1.0 / torch.tensor(6.0).double()),
                                          torch.tensor(0.9).double())
    assert layer.recordings["v"].shape == x.shape
    assert_equal(layer.recordings["v"], expected_v, "recorded v")
    assert_equal(spikes, expected_spikes, "spikes")
    silent = exodus.LIF(tau_mem=6.0, backend="cpu")
    silent(x.float())
    assert silent.recordings == {}


def test_reset_states_and_new_batch_size():
    g = torch.Generator().manual_seed(5)
    layer = exodus.LIF(tau_mem=10.0, backend="cpu", record_states=True).double()
    x1, x2 = randn((3, 10, 4), F64, g, 0.8, 0.3), randn((3, 10, 4), F64, g, 0.8, 0.3)

    def fresh(x):
        return lif_ref(x, torch.exp(torch.tensor(-0.1, dtype=F64)), 1.0)

    layer(x1)
    carried = layer(x2)
    assert not torch.equal(layer.recordings["v"], fresh(x2)[1]), "state should carry between calls"
    layer.reset_states()
    assert layer.v is None
    assert_equal(layer(x2), fresh(x2)[0], "after reset_states")
    assert_equal(layer.recordings["v"], fresh(x2)[1], "v after reset_states")
    # a different batch size starts from zero instead of failing to broadcast the old state
    layer(x1)
    assert_equal(layer(x2[:2]), fresh(x2[:2])[0], "new batch size")
    assert_equal(layer.recordings["v"], fresh(x2[:2])[1], "v with new batch size")
    assert layer.v.shape == (2, 4)
    assert carried.shape == x2.shape


def test_detach_states_cuts_the_graph():
    g = torch.Generator().manual_seed(6)
    x1 = randn((2, 10, 4), F64, g, 0.8, 0.3).requires_grad_()
    x2 = randn((2, 10, 4), F64, g, 0.8, 0.3).requires_grad_()
    for detach in (False, True):
        layer = exodus.LIF(tau_mem=10.0, backend="cpu", record_states=True).double()
        layer(x1)
        if detach:
            layer.detach_states()
        layer(x2)
        grad = torch.autograd.grad(layer.recordings["v"].sum(), x1, allow_unused=True)[0]
        if detach:
            assert grad is None or not bool(grad.any())
        else:
            assert grad is not None and bool(grad.any())


def test_iaf_equals_lif_with_alpha_one():
    g = torch.Generator().manual_seed(7)
    layer = exodus.IAF(threshold=uniform((5,), torch.float32, g, 0.8, 1.2), train_threshold=True, v_min=-0.7,
                       reset="zero", record_states=True, backend="cpu").double()
    x = randn((2, 24, 5), F64, g, 0.5, 0.05).requires_grad_()
    compare_layer_to_reference(layer, x, [9, 15], lambda tau: torch.tensor(1.0, dtype=F64), seed=7)
    with pytest.raises(TypeError):
        exodus.IAF(tau_mem=5.0)


def test_iaf_with_synaptic_current():
    g = torch.Generator().manual_seed(8)
    layer = exodus.IAF(tau_syn=4.0, train_tau=True, record_states=True, backend="cpu").double()
    x = randn((2, 20, 3), F64, g, 0.3, 0.05).requires_grad_()
    compare_layer_to_reference(layer, x, [8, 12], lambda tau: torch.tensor(1.0, dtype=F64), seed=8)


def test_iaf_has_no_unused_parameters():
    layer = exodus.IAF(tau_syn=4.0, train_tau=True, train_threshold=True, backend="cpu")
    x = torch.randn(2, 10, 3) + 0.5
    layer(x).sum().backward()
    unused = [name for name, p in layer.named_parameters() if p.grad is None]
    assert not unused, f"parameters that never receive a gradient: {unused}"


@pytest.mark.parametrize("record_states", [True, False])
@pytest.mark.parametrize("shape", [(2, 0, 4), (0, 6, 4)], ids=["T0", "B0"])
@pytest.mark.parametrize("tau_syn", [None, 3.0])
def test_lif_layer_empty_inputs(shape, tau_syn, record_states):
    layer = exodus.LIF(tau_syn=tau_syn, record_states=record_states, backend="cpu")
    x = torch.randn(shape, requires_grad=True)
    spikes = layer(x)
    assert spikes.shape == x.shape
    spikes.sum().backward()
    leak = exodus.ExpLeak(backend="cpu")
    assert leak(x).shape == x.shape


@pytest.mark.parametrize("record_states", [
    True,
    False,
])
def test_empty_call_keeps_state(record_states):
    """A call with time = 0 leaves the state (value and graph) as it was."""
    g = torch.Generator().manual_seed(9)
    x = randn((2, 12, 3), F64, g, 0.8, 0.3).requires_grad_()
    runs = []
    for empty_call in (False, True):
        layer = exodus.LIF(tau_mem=5.0, tau_syn=2.0, record_states=record_states, backend="cpu").double()
        layer(x[:, :6])
        if empty_call:
            assert layer(x[:, :0]).shape == (2, 0, 3)
        spikes = layer(x[:, 6:])
        loss = (spikes * torch.arange(6.0, dtype=F64)[:, None]).sum() + layer.v.sum()
        runs.append((spikes, layer.v, torch.autograd.grad(loss, x)[0]))
    (s, v, grad), (s_empty, v_empty, grad_empty) = runs
    assert s.sum() > 0
    assert_equal(s_empty, s, "spikes after an empty call")
    assert_equal(v_empty, v, "state after an empty call")
    assert_grad_close(grad_empty[:, :6], grad[:, :6], 1e-12, "gradient through the empty call")


# ----------------------------------------------------------------------------- ExpLeak

@pytest.mark.parametrize("norm_input", [False, True])
def test_expleak_equals_leaky_ref(norm_input):
    g = torch.Generator().manual_seed(10)
    layer = exodus.ExpLeak(tau_mem=uniform((2, 3), torch.float32, g, 2.0, 20.0), norm_input=norm_input,
                           train_tau=True, shape=(2, 3), record_states=True, backend="cpu").double()
    x = randn((2, 21, 2, 3), F64, g).requires_grad_()
    w = randn(x.shape, F64, g)
    out = torch.cat([layer(c) for c in chunked(x, [5, 16])], 1)
    assert_equal(layer.recordings["v"], out[:, 5:], "recordings")
    grads = torch.autograd.grad((out * w).sum(), (x, layer.tau_mem))
    tau = layer.tau_mem.detach().clone().requires_grad_()
    first = leaky_ref(x[:, :5], torch.exp(-1.0 / tau), norm_input=norm_input)
    second = leaky_ref(x[:, 5:], torch.exp(-1.0 / tau), first[:, -1], norm_input=norm_input)
    expected = torch.cat([first, second], 1)
    ref_grads = torch.autograd.grad((expected * w).sum(), (x, tau))
    assert_equal(out, expected, "ExpLeak v")
    assert_equal(layer.v, expected[:, -1], "ExpLeak state")
    for name, got, exp in zip(("x", "tau_mem"), grads, ref_grads):
        assert_grad_close(got, exp, 1e-10, f"d/d{name}")
    layer.reset_states()
    assert_equal(layer(x[:, 5:]), leaky_ref(x[:, 5:], torch.exp(-1.0 / tau.detach()), norm_input=norm_input), "reset")


# ----------------------------------------------------------------------------- saved memory

def saved_elements(fn):
    """Number of elements autograd saves for backward while fn() runs."""
    count = [0]

    def pack(tensor):
        count[0] += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return count[0]


@pytest.mark.parametrize("tau_syn", [None, 5.0])
def test_saved_memory_per_neuron_step(tau_syn):
    B, T, N = 4, 64, 32
    x = torch.randn(B, T, N, requires_grad=True)
    counts = {}
    for gradient in ("exodus", "bptt"):
        layer = exodus.LIF(tau_mem=10.0, tau_syn=tau_syn, gradient=gradient, train_tau=True, train_threshold=True,
                           shape=(N,), backend="cpu")
        layer(x[:, :3])  # carry a state in, so v0 is a real tensor with a graph
        counts[gradient] = saved_elements(lambda: layer(x))
    neuron_steps = B * T * N
    per_step = 1 if tau_syn is None else 2  # h of the LIF scan (+ the synaptic trace of the leaky scan)
    small = 8 * (B * N + N)
    assert counts["exodus"] <= per_step * neuron_steps + small, counts
    assert counts["bptt"] >= 3 * neuron_steps, counts  # the reference loop keeps ~4.5 per step
