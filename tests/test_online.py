"""Online (forward-mode) gradients of LinearLIF(gradient="online") (issue 9; DESIGN.md §7).

One block fed in chunks, per-step loss on spikes and on v, backward per chunk: the accumulated
gradients of W, b, tau_mem and threshold equal autograd BPTT through the reference over the whole
sequence (float64 <= 1e-10 relative); detach_reset equals SLAYER-mode BPTT; the lazily updated
sparse weight trace equals the dense Jacobian dv_t/dW of the reference.
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exodus
from exodus import surrogate as S
from exodus.functional.linear import linear_lif_ref
from exodus.online import fit_sequence


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _block(n_in, n_out, dtype, seed, **options):
    torch.manual_seed(seed)
    block = exodus.LinearLIF(n_in, n_out, tau_mem=8.0, gradient="online", train_tau=True, train_threshold=True,
                             record_states=True, **options).to(dtype)
    with torch.no_grad():
        block.weight.mul_(4.0 if options.get("norm_input") else 1.8)
    return block


OPTIONS = st.fixed_dictionaries({
    "reset": st.sampled_from(["subtract", "zero"]),
    "v_min": st.sampled_from([None, -0.3]),
    "max_spikes_per_bin": st.sampled_from([1, 2, None]),
    "norm_input": st.booleans(),
    "detach_reset": st.booleans(),
    "surrogate": st.sampled_from([S.SingleExponential(), S.Truncated(S.FastSigmoid(8.0), 0.3), S.ATan()]),
})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=OPTIONS, B=st.integers(1, 3), T=st.integers(1, 50), n_in=st.integers(1, 8), n_out=st.integers(1, 6),
       chunk=st.integers(1, 20), v_loss=st.booleans(), seed=st.integers(0, 1000))
def test_chunked_online_gradients_equal_full_sequence_bptt(options, B, T, n_in, n_out, chunk, v_loss, seed):
    dtype = torch.float64
    block = _block(n_in, n_out, dtype, seed, **options)
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(B, T, n_in, generator=g) < 0.3).to(dtype)
    g_spikes = torch.randn(B, T, n_out, generator=g, dtype=dtype)
    g_v = torch.randn(B, T, n_out, generator=g, dtype=dtype)
    params = [p.detach().clone().requires_grad_() for p in (block.weight, block.bias, block.tau_mem, block.threshold)]
    detach = options.pop("detach_reset")
    spikes, v = linear_lif_ref(s, params[0], params[1], torch.exp(-1 / params[2]), params[3],
                               gradient="slayer" if detach else "exodus", **options)
    ((spikes * g_spikes).sum() + ((v * g_v).sum() if v_loss else 0)).backward()

    def loss(out, window):
        return (out * g_spikes[:, window]).sum() + ((block.recordings["v"] * g_v[:, window]).sum() if v_loss else 0)

    fit_sequence(block, s, loss, chunk)
    for name, mine, ref in zip(("weight", "bias", "tau_mem", "threshold"),
                               (block.weight, block.bias, block.tau_mem, block.threshold), params):
        if ref.grad.abs().max() == 0:
            assert mine.grad is None or mine.grad.abs().max() == 0, name
        else:
            assert _rel(mine.grad, ref.grad) < 1e-10, (name, _rel(mine.grad, ref.grad))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=OPTIONS, B=st.integers(1, 3), T=st.integers(1, 45), n_in=st.integers(1, 7), n_out=st.integers(1, 5),
       chunk=st.integers(1, 20), seed=st.integers(0, 1000))
def test_lazy_sparse_weight_trace_equals_the_dense_jacobian(options, B, T, n_in, n_out, chunk, seed):
    """G_T = dv_T/dW of the reference (autograd), row by row, from the lazily updated s_hat + D (the trace rows
    change only at active points), over shapes, chunkings, resets, clamps, multi-spike bins, surrogates
    (dense ones update every row at every step, truncated ones sparsely) and the detached reset."""
    dtype = torch.float64
    detach = options.pop("detach_reset")
    block = _block(n_in, n_out, dtype, seed, detach_reset=detach, **options)
    s = (torch.rand(B, T, n_in, generator=torch.Generator().manual_seed(seed + 1)) < 0.4).to(dtype)
    for part in s.split(chunk, 1):
        block(part)
    G = block.traces.weight_trace(block.alpha().detach())
    W = block.weight.detach().clone().requires_grad_()
    _, v = linear_lif_ref(s, W, block.bias.detach(), block.alpha().detach(), block.threshold.detach(),
                          gradient="slayer" if detach else "exodus", **options)
    for b in range(B):
        for n in range(n_out):
            (row,) = torch.autograd.grad(v[b, -1, n], W, retain_graph=True)
            assert torch.allclose(G[b, n], row[n], rtol=1e-10, atol=1e-12), (b, n)
            assert (row[torch.arange(n_out) != n] == 0).all()  # one layer: v_n depends on W's row n only
    assert block.traces.step == T


def test_float32_online_within_1e4_of_float64_bptt():
    block = _block(10, 8, torch.float32, 0)
    s = (torch.rand(4, 120, 10, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    g = torch.randn(4, 120, 8, generator=torch.Generator().manual_seed(2))
    params = [p.detach().double().clone().requires_grad_() for p in (block.weight, block.bias)]
    spikes, _ = linear_lif_ref(s.double(), params[0], params[1], block.alpha().detach().double(),
                               block.threshold.detach().double())
    (spikes * g.double()).sum().backward()
    fit_sequence(block, s, lambda out, w: (out * g[:, w]).sum(), 25)
    for mine, ref in zip((block.weight, block.bias), params):
        assert _rel(mine.grad.double(), ref.grad) < 1e-4


def test_memory_of_the_state_does_not_grow_with_the_sequence():
    block = _block(5, 3, torch.float32, 0)
    sizes = []
    for T in (20, 200):
        block.reset_states()
        s = (torch.rand(2, T, 5) < 0.3).float()
        fit_sequence(block, s, lambda out, w: out.sum(), 10)
        tr = block.traces
        sizes.append(sum(t.numel() for t in (tr.s_hat, tr.dev, tr.stamp, tr.e_alpha, tr.e_bias, tr.e_theta)))
        assert tr.step == T
    assert sizes[0] == sizes[1]


def test_bad_input_and_limits():
    with pytest.raises(ValueError, match="one tau_mem"):
        exodus.LinearLIF(4, 3, tau_mem=torch.tensor([5.0, 6.0, 7.0]), gradient="online")
    with pytest.raises(ValueError, match="chunk"):
        fit_sequence(exodus.LinearLIF(4, 3, gradient="online"), torch.rand(1, 5, 4), lambda o, w: o.sum(), 0)
    if torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="CPU"):
            exodus.LinearLIF(4, 3, gradient="online").cuda()(torch.rand(1, 5, 4, device="cuda"))


def test_lightning_online_mode_trains_in_chunks(tmp_path, monkeypatch):
    """experiments/configs/spike_timing_online.yaml: manual optimisation, a backward per chunk, one
    optimizer step per batch; the weights move and the logged loss is finite."""
    cli_module = pytest.importorskip("exodus.lightning.cli")
    import os
    monkeypatch.chdir(tmp_path)
    config = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "spike_timing_online.yaml")
    cli = cli_module.build(["--config", config, "--trainer.fast_dev_run", "2", "--trainer.enable_progress_bar",
                            "false", "--data.train_samples", "128", "--data.val_samples", "64"])
    model = cli.model
    assert isinstance(model.layers["hidden0"]["neuron"], exodus.LinearLIF) and not model.automatic_optimization
    before = model.layers["hidden0"]["neuron"].weight.detach().clone()
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    assert not torch.equal(before, model.layers["hidden0"]["neuron"].weight.detach())


@pytest.mark.parametrize("readout_steps", [None, 7])
def test_lightning_online_gradient_equals_exodus_per_step_loss_in_one_chunk(readout_steps):
    """model.loss per_step: with one chunk over the whole sequence the online gradient (online_backward)
    equals the exodus twin's gradient of the same per-step loss, for every layer; with shorter chunks
    the hidden block is still exact only for the readout's own chunk (the readout's state is detached
    across chunks), so the gradients differ but stay close in direction."""
    model_module = pytest.importorskip("exodus.lightning.model")
    torch.manual_seed(0)
    common = dict(input_shape=(6,), num_classes=3, hidden=[5], readout="mean_membrane", readout_tau=10.0,
                  readout_steps=readout_steps, loss="per_step", linear_blocks=True, surrogate_band=0.5,
                  weight_gain=3.0)
    exodus_model = model_module.SpikingClassifier(gradient="exodus", **common)
    x, y = (torch.rand(4, 24, 6) < 0.3).float(), torch.tensor([0, 1, 2, 1])

    def grads(model):
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    exodus_model.loss((x, y)).backward()
    reference = grads(exodus_model)
    for chunk, exact in ((24, True), (8, False)):
        online = model_module.SpikingClassifier(gradient="online", online_chunk=chunk, **common)
        online.load_state_dict(exodus_model.state_dict())
        total, logits = online.online_backward((x, y))
        with torch.no_grad():
            assert torch.allclose(logits, exodus_model.logits(exodus_model(x)), rtol=1e-5, atol=1e-6)
        got = grads(online)
        if exact:
            assert torch.allclose(total, exodus_model.loss((x, y)).detach(), rtol=1e-6)
            assert torch.allclose(got, reference, rtol=1e-4, atol=1e-7), (got - reference).abs().max()
        else:
            assert not torch.allclose(got, reference, rtol=1e-4, atol=1e-7)
            assert torch.nn.functional.cosine_similarity(got, reference, 0) > 0.5


def test_lightning_online_needs_the_per_step_loss():
    model_module = pytest.importorskip("exodus.lightning.model")
    from exodus.lightning.data import ConfigError
    with pytest.raises(ConfigError, match="model.loss"):
        model_module.SpikingClassifier(input_shape=(4,), num_classes=2, gradient="online", loss="logits")
    model = model_module.SpikingClassifier(input_shape=(4,), num_classes=2, gradient="online")
    assert model.hparams.loss == "per_step"
    assert model_module.SpikingClassifier(input_shape=(4,), num_classes=2).hparams.loss == "logits"


@pytest.mark.parametrize("neuron", ["lif", "iaf"])
def test_to_online_converts_linear_lif_pairs_and_keeps_the_parameters(neuron):
    """An nn.Sequential of Linear -> LIF layers trained online after to_online: same parameter objects,
    same outputs, and for one layer with a per-step loss the chunked gradient equals full-sequence BPTT."""
    torch.manual_seed(3)
    make = (lambda: exodus.LIF(tau_mem=6.0, train_tau=True, train_threshold=True,
                               surrogate=exodus.surrogate.Truncated(exodus.surrogate.FastSigmoid(4.0), 0.8))) \
        if neuron == "lif" else (lambda: exodus.IAF(threshold=2.0))
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), make(), torch.nn.Linear(4, 3)).double()
    reference = copy.deepcopy(model)
    for layer in reference:
        if isinstance(layer, exodus.LIF):
            layer.gradient = "bptt"
    params = list(model.parameters())
    x = (torch.rand(2, 30, 5, generator=torch.Generator().manual_seed(0)) < 0.4).double() * 1.5
    target = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference(x)
    exodus.online.to_online(model)
    assert isinstance(model[0], exodus.LinearLIF) and model[0].gradient == "online"
    assert isinstance(model[1], torch.nn.Identity)
    assert all(any(p is q for q in model.parameters()) for p in params)       # an old optimizer still works
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)
    model[0].reset_states()
    exodus.online.fit_sequence(model, x, lambda out, window: ((out - target[:, window]) ** 2).sum(), chunk=7)
    reference[1].reset_states()                                                # the no_grad call above left v
    ((reference(x) - target) ** 2).sum().backward()
    for (name, p), q in zip(reference.named_parameters(), [dict(model.named_parameters())[k] for k in
                                                           _converted_names(reference, model)]):
        assert p.grad is not None and torch.allclose(q.grad, p.grad, rtol=1e-10, atol=1e-12), name


def _converted_names(reference, model):
    """Names in ``model`` (after to_online) of the parameters of ``reference``, in reference's order."""
    mapping = {"0.weight": "0.weight", "0.bias": "0.bias", "1.tau_mem": "0.tau_mem", "1.threshold": "0.threshold",
               "2.weight": "2.weight", "2.bias": "2.bias"}
    return [mapping[name] for name, _ in reference.named_parameters()]


def test_to_online_refuses_what_it_cannot_convert():
    with pytest.raises(ValueError, match="no nn.Linear directly followed"):
        exodus.online.to_online(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU()))
    with pytest.raises(ValueError, match=r"0 \(Linear\) -> 1 .*recurrent"):
        exodus.online.to_online(torch.nn.Sequential(torch.nn.Linear(3, 3), exodus.LIF(recurrent=True, shape=(3,))))
    with pytest.raises(ValueError, match="tau_syn"):
        exodus.online.to_online(torch.nn.Sequential(torch.nn.Linear(3, 3), exodus.LIF(tau_syn=5.0)))
    with pytest.raises(ValueError, match="one tau_mem"):
        exodus.online.to_online(torch.nn.Sequential(torch.nn.Linear(3, 3),
                                                    exodus.LIF(train_tau=True, shape=(3,))))
    nested = torch.nn.Module()
    nested.body = torch.nn.Sequential(torch.nn.Linear(3, 2), exodus.LIF())
    assert isinstance(exodus.online.to_online(nested).body[0], exodus.LinearLIF)
