"""Layers built on exodus.functional.adaptive_lif: AdaptiveLIF, its presets ALIF (Bellec et al. 2018)
and AdLIF (Bittar & Garner 2022), and LIF / IAF with recurrent=True — state carried between calls,
trainable adaptation, the recurrent weight, dtypes, empty inputs and bad input.

The presets are checked against the published recursions written out by hand below (not against
exodus.reference), bit for bit. Recurrent layers match single-call / reference results to rounding
only where the recurrent sum M a_{t-1} is formed differently (see tests/test_adaptive.py).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import exodus
from conftest import assert_equal, assert_grad_close, randn, uniform
from exodus import functional as F
from exodus.reference import adaptive_lif_ref

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
COUPLING_NAMES = ("adapt_threshold", "adapt_current", "adapt_membrane", "adapt_spike")


def adaptive_layer(**overrides):
    """An AdaptiveLIF with every coupling non-zero, per-neuron, everything trainable, float64."""
    seed = overrides.pop("seed", 0)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight_rec's initialisation draws from the global generator
    N = overrides.pop("N", 6)
    options = dict(tau_mem=uniform((N,), torch.float32, g, 4.0, 20.0),
                   tau_adapt=uniform((N,), torch.float32, g, 5.0, 30.0),
                   threshold=uniform((N,), torch.float32, g, 0.8, 1.2), adapt_threshold=0.3, adapt_current=0.2,
                   adapt_membrane=0.05, adapt_spike=0.2, train_tau=True, train_threshold=True, train_adaptation=True,
                   shape=(N,), v_min=-1.0, backend="cpu")
    options.update(overrides)
    return exodus.AdaptiveLIF(**options).double()


def run_chunks(layer, x, lengths, weights):
    """Spikes over consecutive chunks (state carried with gradient) and a loss on spikes and the
    recorded traces (or the final states)."""
    spikes, v, w, loss, start = [], [], [], 0, 0
    for chunk in torch.split(x, lengths, dim=1):
        out = layer(chunk)
        stop = start + chunk.shape[1]
        loss = loss + (out * weights[:, start:stop]).sum()
        if layer.record_states:
            v.append(layer.recordings["v"])
            w.append(layer.recordings.get("w", torch.zeros_like(out)))
            loss = loss + (layer.recordings["v"] * weights.flip(1)[:, start:stop]).sum()
            if "w" in layer.recordings:
                loss = loss + (layer.recordings["w"] * weights.flip(2)[:, start:stop]).sum()
        spikes.append(out)
        start = stop
    final = [getattr(layer, name) for name in ("v", "w", "a") if getattr(layer, name, None) is not None]
    loss = loss + sum((s * (k + 1)).sum() for k, s in enumerate(final))
    spikes = torch.cat(spikes, 1)
    traces = (torch.cat(v, 1), torch.cat(w, 1)) if layer.record_states else ()
    return spikes, traces, final, loss


# ----------------------------------------------------------------------------- chained calls

LAYERS = {
    "AdaptiveLIF-rec": lambda rec: adaptive_layer(recurrent=True, weight_rec_gain=0.6, record_states=rec),
    "AdaptiveLIF-rec-zero-reset": lambda rec: adaptive_layer(recurrent=True, reset="zero", max_spikes_per_bin=2,
                                                             weight_rec_init="normal", record_states=rec, seed=3),
    "ALIF-rec": lambda rec: exodus.ALIF(tau_mem=10.0, tau_adapt=20.0, adapt_threshold=0.5, train_adaptation=True,
                                        train_tau=True, recurrent=True, zero_diagonal=True, shape=(6,),
                                        record_states=rec, backend="cpu").double(),
    "LIF-rec": lambda rec: exodus.LIF(tau_mem=uniform((6,), torch.float32, torch.Generator().manual_seed(1), 4.0, 20.0),
                                      train_tau=True, train_threshold=True, shape=(6,), recurrent=True,
                                      weight_rec_gain=0.6, record_states=rec, backend="cpu").double(),
    "IAF-rec": lambda rec: exodus.IAF(threshold=1.5, train_threshold=True, shape=(6,), recurrent=True,
                                      weight_rec_init="kaiming_uniform", v_min=-1.0, record_states=rec,
                                      backend="cpu").double(),
}


@pytest.mark.parametrize("record_states", [True, False], ids=["record", "final"])
@pytest.mark.parametrize("name", LAYERS)
def test_chunks_equal_one_long_call(name, record_states):
    """Consecutive calls (v, w and the last spikes a carried, with gradient) compute what one call on
    the whole sequence computes: forward bit for bit, gradients of x and every parameter to rounding."""
    layer = LAYERS[name](record_states)
    g = torch.Generator().manual_seed(11)
    x = randn((3, 36, 6), F64, g, 1.0, 0.5).requires_grad_()
    weights = randn(x.shape, F64, g)
    results = []
    for lengths in ([36], [11, 1, 16, 8]):
        model = copy.deepcopy(layer)
        params = dict(model.named_parameters())
        spikes, traces, final, loss = run_chunks(model, x, lengths, weights)
        grads = torch.autograd.grad(loss, [x, *params.values()])
        results.append((spikes, traces, final, dict(zip(["x", *params], grads))))
    (s1, tr1, fin1, g1), (s2, tr2, fin2, g2) = results
    assert 0.05 < s1.mean() < 0.9, "the layer should spike"
    assert_equal(s2, s1, "spikes")
    for k, (a, b) in enumerate(zip(tr2, tr1)):
        assert_equal(a, b, f"trace {k}")
    for k, (a, b) in enumerate(zip(fin2, fin1)):
        assert_equal(a.detach(), b.detach(), f"final state {k}")
    assert "weight_rec" in g1
    for key, e in g1.items():
        assert_grad_close(g2[key], e, 1e-10, f"d/d{key}")
        assert bool(e.any()), f"d/d{key} should not vanish"


def test_empty_call_keeps_all_states():
    """A call with time = 0 leaves v, w and a (value and graph) as they were."""
    g = torch.Generator().manual_seed(12)
    x = randn((2, 14, 6), F64, g, 1.0, 0.5).requires_grad_()
    runs = []
    for empty_call in (False, True):
        layer = adaptive_layer(recurrent=True)
        layer(x[:, :7])
        if empty_call:
            assert layer(x[:, :0]).shape == (2, 0, 6)
        spikes = layer(x[:, 7:])
        loss = (spikes * torch.arange(7.0, dtype=F64)[:, None]).sum() + layer.v.sum() + layer.w.sum()
        runs.append((spikes, layer.v, layer.w, layer.a, torch.autograd.grad(loss, x)[0]))
    (s, v, w, a, grad), (s_e, v_e, w_e, a_e, grad_e) = runs
    assert s.sum() > 0
    for name, got, exp in (("spikes", s_e, s), ("v", v_e, v), ("w", w_e, w), ("a", a_e, a)):
        assert_equal(got.detach(), exp.detach(), f"{name} after an empty call")
    assert_grad_close(grad_e[:, :7], grad[:, :7], 1e-12, "gradient through the empty call")


# ----------------------------------------------------------------------------- equivalence with LIF

@pytest.mark.parametrize("options", [dict(), dict(reset="zero", v_min=-0.5, max_spikes_per_bin=None, norm_input=True)],
                         ids=["defaults", "zero-vmin-unlimited-norm"])
@pytest.mark.parametrize("shape", [None, (2, 3)], ids=["scalar", "per-neuron"])
def test_adaptive_lif_without_couplings_is_lif(shape, options):
    """AdaptiveLIF with all four couplings 0 equals exodus.LIF bit for bit, over chained calls;
    the trainable tau_mem / threshold get the same gradients."""
    g = torch.Generator().manual_seed(13)
    tau = uniform(shape or (), torch.float32, g, 4.0, 20.0)
    common = dict(tau_mem=tau, threshold=1.1, train_tau=True, train_threshold=True, shape=shape, record_states=True,
                  backend="cpu", **options)
    lif = exodus.LIF(**common).double()
    alif = exodus.AdaptiveLIF(tau_adapt=7.0, **common).double()
    amplitude = (2.5, 2.0) if options else (1.0, 0.4)
    x = randn((3, 30, 2, 3), F64, g, *amplitude).requires_grad_()
    w = randn(x.shape, F64, g)
    results = []
    for layer in (lif, alif):
        spikes = torch.cat([layer(c) for c in torch.split(x, [13, 17], 1)], 1)
        loss = (spikes * w).sum() + (layer.recordings["v"] * w[:, 13:]).sum() + layer.v.sum()
        results.append((spikes, layer.recordings["v"], layer.v,
                        torch.autograd.grad(loss, [x, layer.tau_mem, layer.threshold])))
    (s_lif, v_lif, last_lif, g_lif), (s, v, last, grads) = results
    assert s_lif.sum() > 10
    assert_equal(s, s_lif, "spikes")
    assert_equal(v, v_lif, "recorded v")
    assert_equal(last, last_lif, "state v")
    assert not bool(alif.recordings["w"].any())
    for name, got, exp in zip(("x", "tau_mem", "threshold"), grads, g_lif):
        assert_grad_close(got, exp, 1e-10, f"d/d{name}")


def test_recurrent_lif_equals_reference():
    """LIF(recurrent=True) is the adaptive neuron without adaptation plus M a_{t-1}: spikes equal the
    reference's, v to rounding (summation order of M a), gradients close; without the recurrent
    weight (zeros) it is exodus.LIF exactly."""
    g = torch.Generator().manual_seed(14)
    layer = exodus.LIF(tau_mem=8.0, shape=(7,), recurrent=True, train_tau=True, record_states=True,
                       backend="cpu").double()
    x = randn((2, 25, 7), F64, g, 1.0, 0.5).requires_grad_()
    w = randn(x.shape, F64, g)
    spikes = layer(x)
    grads = torch.autograd.grad((spikes * w).sum() + (layer.recordings["v"] * w).sum(),
                                [x, layer.tau_mem, layer.weight_rec])
    leaves = [t.detach().clone().requires_grad_() for t in (x, layer.tau_mem, layer.weight_rec)]
    s_ref, v_ref, _ = adaptive_lif_ref(leaves[0], torch.exp(-1.0 / leaves[1]), 1.0, weight_rec=leaves[2])
    expected = torch.autograd.grad((s_ref * w).sum() + (v_ref * w).sum(), leaves)
    assert 0.05 < spikes.mean() < 0.9
    assert_equal(spikes, s_ref, "spikes")
    torch.testing.assert_close(layer.recordings["v"], v_ref, rtol=1e-12, atol=1e-12)
    for name, got, exp in zip(("x", "tau_mem", "weight_rec"), grads, expected):
        assert_grad_close(got, exp, 1e-10, f"d/d{name}")

    silent = exodus.LIF(tau_mem=8.0, shape=(7,), recurrent=True, weight_rec_init="zeros", backend="cpu").double()
    assert_equal(silent(x), exodus.LIF(tau_mem=8.0, backend="cpu").double()(x), "zero recurrent weight")


# ----------------------------------------------------------------------------- presets

def test_adlif_is_bittar_and_garner():
    """AdLIF = Bittar & Garner (2022), eqs. written out here, with their u our pre-reset h and their
    w[t] our w_{t-1}:
        w[t] = beta_w w[t-1] + a u[t-1] + b s[t-1]
        u[t] = alpha (u[t-1] - s[t-1]) + (1 - alpha) (I[t] - w[t])
        s[t] = 1[u[t] >= 1]                                  (u, w, s = 0 before the first step)"""
    g = torch.Generator().manual_seed(15)
    N = 8
    a = uniform((N,), torch.float32, g, -1.0, 1.0)
    b = uniform((N,), torch.float32, g, 0.0, 2.0)
    layer = exodus.AdLIF(tau_mem=uniform((N,), torch.float32, g, 3.0, 25.0),
                         tau_adapt=uniform((N,), torch.float32, g, 30.0, 300.0), a=a, b=b, shape=(N,),
                         record_states=True, backend="cpu").double()
    assert layer.norm_input and layer.reset == "subtract" and float(layer.threshold.max()) == 1.0
    x = randn((3, 60, N), F64, g, 2.0, 1.5)
    chunks = [(layer(c), layer.recordings["v"], layer.recordings["w"]) for c in torch.split(x, [25, 35], 1)]
    spikes, v, w = (torch.cat(z, 1) for z in zip(*chunks))
    alpha, beta_w = layer.alpha().detach(), layer.rho().detach()
    a, b = a.double(), b.double()
    u_prev = w_prev = s_prev = torch.zeros(3, N, dtype=F64)
    us, ws, ss = [], [], []
    for t in range(x.shape[1]):
        w_t = beta_w * w_prev + a * u_prev + b * s_prev
        u_t = alpha * (u_prev - s_prev) + (1 - alpha) * (x[:, t] - w_t)
        s_t = (u_t >= 1.0).to(F64)
        us.append(u_t), ws.append(w_t), ss.append(s_t)
        u_prev, w_prev, s_prev = u_t, w_t, s_t
    u, w_theirs, s = (torch.stack(z, 1) for z in (us, ws, ss))
    assert 0.05 < s.mean() < 0.9 and bool((w_theirs != 0).any())
    assert_equal(spikes, s, "spikes s[t]")
    assert_equal(v, u - s, "post-reset membrane u[t] - s[t]")
    # our w_t is their w[t + 1] = beta_w w[t] + a u[t] + b s[t]
    assert_equal(w, beta_w * w_theirs + a * u + b * s, "adaptation w")


@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_alif_is_bellec(recurrent):
    """ALIF = Bellec et al. (2018, LSNN), written out here:
        A_t = b0 + beta b_{t-1},  h_t = alpha v_{t-1} + I_t (+ W_rec z_{t-1}),  z_t = 1[h_t >= A_t],
        v_t = h_t - A_t z_t,      b_t = rho b_{t-1} + (1 - rho) z_t."""
    g = torch.Generator().manual_seed(16)
    N = 6
    layer = exodus.ALIF(tau_mem=uniform((N,), torch.float32, g, 5.0, 20.0),
                        tau_adapt=uniform((N,), torch.float32, g, 50.0, 200.0), adapt_threshold=1.8,
                        threshold=uniform((N,), torch.float32, g, 0.4, 0.7), shape=(N,), recurrent=recurrent,
                        weight_rec_gain=0.5, record_states=True, backend="cpu").double()
    assert layer.tied_spike and layer.adapt_spike is None
    x = randn((2, 50, N), F64, g, 0.8, 0.4)
    spikes = layer(x)
    alpha, rho, b0 = layer.alpha().detach(), layer.rho().detach(), layer.threshold.detach()
    beta = layer.adapt_threshold  # 1.8 as stored by the layer (rounded to float32 like every parameter)
    assert beta == pytest.approx(1.8, rel=1e-7)
    v = b = z = torch.zeros(2, N, dtype=F64)
    zs, vs, bs = [], [], []
    for t in range(x.shape[1]):
        A = b0 + beta * b
        current = x[:, t] + (z @ layer.weight_rec.detach().t() if recurrent else 0)
        h = alpha * v + current
        z = (h >= A).to(F64)
        v = h - A * z
        b = rho * b + (1 - rho) * z
        zs.append(z), vs.append(v), bs.append(b)
    z, v, b = (torch.stack(q, 1) for q in (zs, vs, bs))
    assert 0.05 < z.mean() < 0.9 and bool((b > 0).any())
    assert_equal(spikes, z, "spikes")
    if recurrent:  # the kernel sums W_rec z_{t-1} in its own order: to rounding
        torch.testing.assert_close(layer.recordings["v"], v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.recordings["w"], b, rtol=1e-12, atol=1e-12)
    else:
        assert_equal(layer.recordings["v"], v, "membrane")
        assert_equal(layer.recordings["w"], b, "threshold adaptation b")


def test_presets_fix_their_couplings():
    with pytest.raises(TypeError, match="ALIF fixes adapt_current"):
        exodus.ALIF(adapt_current=0.1)
    with pytest.raises(TypeError, match="AdLIF fixes norm_input"):
        exodus.AdLIF(norm_input=False)
    with pytest.raises(TypeError, match="AdLIF fixes adapt_threshold"):
        exodus.AdLIF(adapt_threshold=0.1)


# ----------------------------------------------------------------------------- trainable parameters

@pytest.mark.parametrize("tied", [False, True], ids=["free-eta", "tied-eta"])
def test_train_adaptation_parameters_get_reference_gradients(tied):
    """train_adaptation: tau_adapt and the couplings are nn.Parameters (per neuron with shape); their
    gradients (and those of tau_mem, threshold, weight_rec) equal the torch backend's (autograd
    through exodus.reference) and are non-zero for every neuron."""
    layer = adaptive_layer(recurrent=True, adapt_spike=None if tied else 0.2)
    expected_names = {"tau_mem", "threshold", "tau_adapt", "weight_rec", *COUPLING_NAMES[:3],
                      *(() if tied else ("adapt_spike",))}
    assert set(dict(layer.named_parameters())) == expected_names
    for name in ("tau_adapt", *COUPLING_NAMES[:3]):
        assert isinstance(getattr(layer, name), nn.Parameter) and getattr(layer, name).shape == (6,)
    reference = copy.deepcopy(layer)
    reference.backend = "torch"
    g = torch.Generator().manual_seed(17)
    x = randn((4, 40, 6), F64, g, 1.0, 0.5)
    weights = randn(x.shape, F64, g)
    grads = []
    for model in (layer, reference):
        _, _, _, loss = run_chunks(model, x, [25, 15], weights)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name in expected_names:
        assert_grad_close(grads[0][name], grads[1][name], 1e-10, f"d/d{name}")
        assert bool((grads[0][name] != 0).all()), f"every neuron's {name} should get a gradient"


def test_untrained_couplings_are_buffers_or_numbers():
    layer = exodus.AdaptiveLIF(adapt_threshold=0.2, adapt_spike=torch.full((4,), 0.1), shape=None)
    assert dict(layer.named_parameters()) == {}
    assert layer.adapt_threshold == pytest.approx(0.2, rel=1e-7) and isinstance(layer.adapt_threshold, float)
    assert "adapt_spike" in dict(layer.named_buffers())
    # A number stays a number with shape too (so zero couplings run the plain LIF kernels); a tensor is a buffer.
    with_shape = exodus.AdaptiveLIF(adapt_threshold=0.2, shape=(4,))
    assert isinstance(with_shape.adapt_threshold, float)
    per_neuron = exodus.AdaptiveLIF(adapt_threshold=torch.full((4,), 0.2), shape=(4,))
    assert per_neuron.adapt_threshold.shape == (4,) and "adapt_threshold" in dict(per_neuron.named_buffers())
    zero = exodus.AdaptiveLIF(shape=(4,), recurrent=True)
    zero(torch.rand(2, 5, 4))
    assert zero.w is None, "zero couplings given as numbers: no adaptation state, the LIF kernels ran"


@pytest.mark.parametrize("cls", ["AdaptiveLIF", "LIF"])
def test_zero_diagonal_keeps_self_connections_out(cls):
    """zero_diagonal: weight_rec starts with a zero diagonal, the diagonal never gets a gradient and
    is not used even if set (the layer masks it)."""
    kwargs = dict(shape=(5,), recurrent=True, zero_diagonal=True, weight_rec_init="normal", weight_rec_gain=1.5,
                  backend="cpu")
    layer = getattr(exodus, cls)(tau_mem=6.0, **kwargs).double()
    assert not bool(layer.weight_rec.diagonal().any())
    x = randn((3, 30, 5), F64, torch.Generator().manual_seed(18), 1.0, 0.5)
    spikes = layer(x)
    (spikes * torch.linspace(-1, 1, 30, dtype=F64)[:, None]).sum().backward()
    grad = layer.weight_rec.grad
    assert not bool(grad.diagonal().any()), "the diagonal must get no gradient"
    off = grad[~torch.eye(5, dtype=torch.bool)]
    assert bool((off != 0).any()), "off-diagonal weights should get gradient"
    # a diagonal set by hand is masked
    with torch.no_grad():
        layer.weight_rec.fill_diagonal_(5.0)
    layer.reset_states()
    masked = layer(x)
    with torch.no_grad():
        layer.weight_rec.fill_diagonal_(0.0)
    layer.reset_states()
    assert_equal(masked, layer(x), "output with a non-zero stored diagonal")


@pytest.mark.parametrize("gain", [1.0, 0.5])
@pytest.mark.parametrize("init", ["orthogonal", "normal", "kaiming_uniform", "zeros"])
def test_weight_rec_init(init, gain):
    N = 64
    torch.manual_seed(0)
    layer = exodus.AdaptiveLIF(shape=(N,), recurrent=True, weight_rec_init=init, weight_rec_gain=gain)
    weight = layer.weight_rec.detach().double()
    assert isinstance(layer.weight_rec, nn.Parameter) and weight.shape == (N, N)
    assert layer.weight_rec.dtype == torch.get_default_dtype()
    if init == "orthogonal":
        torch.testing.assert_close(weight @ weight.t(), gain ** 2 * torch.eye(N, dtype=F64), atol=1e-5, rtol=0)
    elif init == "normal":
        assert abs(weight.std().item() - gain / math.sqrt(N)) < 0.1 * gain / math.sqrt(N)
        assert abs(weight.mean().item()) < 0.1 * gain / math.sqrt(N)  # the mean of N^2 draws: ~ std / N
    elif init == "kaiming_uniform":  # nn.Linear's: U(-1/sqrt(N), 1/sqrt(N)), times the gain
        bound = gain / math.sqrt(N)
        assert weight.abs().max() <= bound * (1 + 1e-6) and weight.abs().max() > 0.9 * bound
    else:
        assert not bool(weight.any())
    masked = exodus.LIF(shape=(N,), recurrent=True, weight_rec_init=init, weight_rec_gain=gain, zero_diagonal=True)
    assert not bool(masked.weight_rec.diagonal().any())
    assert exodus.LIF(shape=(N,)).weight_rec is None


# ----------------------------------------------------------------------------- states

@pytest.mark.parametrize("recurrent", [False, True], ids=["ff", "rec"])
def test_record_states_v_and_w(recurrent):
    """recordings["v"], ["w"] are the traces the reference computes; the states are their last step."""
    layer = adaptive_layer(recurrent=recurrent, record_states=True, N=5)
    g = torch.Generator().manual_seed(19)
    x = randn((2, 20, 5), F64, g, 1.0, 0.5)
    spikes = layer(x)
    rec = layer.recordings
    assert set(rec) == {"v", "w"} and rec["v"].shape == rec["w"].shape == x.shape
    assert_equal(layer.v, rec["v"][:, -1], "state v")
    assert_equal(layer.w, rec["w"][:, -1], "state w")
    if recurrent:
        assert_equal(layer.a, spikes[:, -1], "state a")
    couplings = [c.detach() if isinstance(c, torch.Tensor) else c for c in layer.couplings()]
    expected = adaptive_lif_ref(x, layer.alpha().detach(), layer.threshold.detach(), layer.rho().detach(),
                                *couplings, weight_rec=layer.weight_rec.detach() if recurrent else None, v_min=-1.0)
    assert_equal(spikes, expected[0], "spikes")
    for name, got, exp in (("v", rec["v"], expected[1]), ("w", rec["w"], expected[2])):
        if recurrent:
            torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
        else:
            assert_equal(got, exp, f"recorded {name}")
    quiet = adaptive_layer(recurrent=recurrent, N=5)
    quiet(x)
    assert quiet.recordings == {} and quiet.v.shape == quiet.w.shape == (2, 5)


def test_reset_states():
    layer = adaptive_layer(recurrent=True, record_states=True)
    g = torch.Generator().manual_seed(20)
    x1, x2 = randn((3, 15, 6), F64, g, 1.0, 0.5), randn((3, 15, 6), F64, g, 1.0, 0.5)
    fresh = copy.deepcopy(layer)
    expected = fresh(x2).detach()
    layer(x1)
    carried = layer(x2).detach()
    assert not torch.equal(layer.recordings["v"].detach(), fresh.recordings["v"].detach()), "state should carry"
    assert carried.shape == expected.shape
    layer.reset_states()
    assert layer.v is None and layer.w is None and layer.a is None
    assert_equal(layer(x2).detach(), expected, "spikes after reset_states")
    assert_equal(layer.recordings["w"].detach(), fresh.recordings["w"].detach(), "w after reset_states")
    # a new batch size starts from zero instead of failing to broadcast the old state
    assert layer(x2[:2]).shape == (2, 15, 6) and layer.w.shape == (2, 6) and layer.a.shape == (2, 6)
    layer.detach_states()
    assert not layer.v.requires_grad and not layer.w.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", ["AdaptiveLIF", "LIF", "ALIF"])
def test_half_input_runs_in_float32(cls, dtype):
    """Half / bfloat16 input on the CPU: computed in float32 (same result as a float32 input of the
    same values), returned in the input dtype; the backward runs too."""
    kwargs = dict(shape=(5,), recurrent=True, record_states=True, backend="cpu")
    if cls == "AdaptiveLIF":
        kwargs.update(adapt_threshold=0.3, adapt_current=0.2, adapt_membrane=0.05, adapt_spike=0.2,
                      train_adaptation=True)
    torch.manual_seed(1)
    layer = getattr(exodus, cls)(tau_mem=8.0, **kwargs)
    reference = copy.deepcopy(layer)
    x = randn((2, 20, 5), torch.float32, torch.Generator().manual_seed(21), 1.0, 0.5).to(dtype).requires_grad_()
    spikes = layer(x)
    expected = reference(x.detach().float())
    assert spikes.dtype == dtype and layer.recordings["v"].dtype == dtype
    assert spikes.sum() > 5
    assert_equal(spikes, expected.to(dtype), "spikes")
    assert_equal(layer.recordings["v"], reference.recordings["v"].to(dtype), "v")
    (grad,) = torch.autograd.grad((spikes.float() * torch.linspace(0, 1, 5)).sum(), x)
    assert grad.dtype == dtype and bool(torch.isfinite(grad).all())
    assert layer.weight_rec.dtype == torch.float32


# ----------------------------------------------------------------------------- empty inputs

@pytest.mark.parametrize("record_states", [True, False], ids=["record", "final"])
@pytest.mark.parametrize("name", ["AdaptiveLIF", "AdaptiveLIF-rec", "LIF-rec"])
@pytest.mark.parametrize("shape", [(2, 0, 4), (0, 6, 4), (2, 6, 0)], ids=["T0", "B0", "N0"])
def test_layer_empty_inputs(shape, name, record_states):
    N = shape[2]
    kwargs = dict(shape=(N,), record_states=record_states, backend="cpu")
    if name == "LIF-rec":
        layer = exodus.LIF(recurrent=True, **kwargs)
    else:
        layer = exodus.AdaptiveLIF(adapt_threshold=0.2, adapt_spike=0.1, train_adaptation=True,
                                   recurrent=name.endswith("rec"), **kwargs)
    x = torch.randn(shape, requires_grad=True)
    spikes = layer(x)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    assert layer.v.shape == (shape[0], N)
    if name != "LIF-rec":
        assert layer.w.shape == (shape[0], N)
    if layer.recurrent:
        assert layer.a.shape == (shape[0], N)
    if record_states:
        assert all(r.shape == x.shape for r in layer.recordings.values())
    loss = spikes.sum() + layer.v.sum()
    if loss.requires_grad:
        loss.backward()
    for p in layer.parameters():
        assert p.grad is None or not bool(p.grad.any())


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def no_native_code(monkeypatch):
    """Any native kernel launch fails loudly: validation must happen first."""
    from exodus import backends

    def refuse(*args, **kwargs):
        raise AssertionError("native code ran before the input was rejected")

    for module in (backends.cpu, backends.cupy):
        monkeypatch.setattr(module, "run", refuse)
        monkeypatch.setattr(module, "bind", refuse)
    monkeypatch.setattr(backends, "bind", refuse)
    monkeypatch.setattr(backends.emulation, "bind", refuse)


def x_(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0))


def adaptive(x, **kwargs):
    return F.adaptive_lif(x, kwargs.pop("alpha", 0.9), backend=kwargs.pop("backend", "cpu"), **kwargs)


BAD_FUNCTIONAL = [
    # (id, call, exception, message)
    ("rec-multidim", lambda: adaptive(x_(2, 3, 2, 2), weight_rec=torch.zeros(4, 4)), ValueError,
     r"a recurrent layer needs input of shape \(batch, time, neurons\)"),
    ("weight_rec-shape", lambda: adaptive(x_(2, 3, 4), weight_rec=torch.zeros(4, 3)), ValueError,
     r"weight_rec must have shape \(N, N\) = \(4, 4\)"),
    ("weight_rec-1d", lambda: adaptive(x_(2, 3, 4), weight_rec=torch.zeros(4)), ValueError,
     r"weight_rec must have shape \(N, N\)"),
    ("weight_rec-int", lambda: adaptive(x_(2, 3, 4), weight_rec=torch.zeros(4, 4, dtype=torch.int64)), TypeError,
     r"weight_rec must be a floating-point tensor"),
    ("weight_rec-bool", lambda: adaptive(x_(2, 3, 4), weight_rec=torch.zeros(4, 4, dtype=torch.bool)), TypeError,
     r"weight_rec must be a floating-point tensor"),
    ("weight_rec-list", lambda: adaptive(x_(2, 3, 2), weight_rec=[[0.0, 0.0], [0.0, 0.0]]), TypeError,
     r"weight_rec must be a \(N, N\) tensor or None"),
    ("weight_rec-nan", lambda: adaptive(x_(2, 3, 2), weight_rec=torch.tensor([[0.0, math.nan], [0.0, 0.0]])),
     ValueError, r"weight_rec must be finite"),
    ("a0-without-weight_rec", lambda: adaptive(x_(2, 3, 4), a0=torch.zeros(2, 4)), ValueError,
     r"a0 \(the previous spikes\) is only used by a recurrent layer: pass weight_rec too"),
    ("a0-shape", lambda: adaptive(x_(2, 3, 4), weight_rec=torch.zeros(4, 4), a0=torch.zeros(3, 4)), ValueError,
     r"a0 of shape \(3, 4\) does not broadcast to \(batch, \*features\) = \(2, 4\)"),
    ("w0-shape", lambda: adaptive(x_(2, 3, 4), w0=torch.zeros(2, 5)), ValueError,
     r"w0 of shape \(2, 5\) does not broadcast"),
    ("rho-negative", lambda: adaptive(x_(2, 3, 4), rho=-0.1), ValueError, r"rho must lie in \[0.0, 1.0\]"),
    ("rho-above-one", lambda: adaptive(x_(2, 3, 4), rho=torch.tensor([0.9, 1.2, 0.9, 0.9])), ValueError,
     r"rho must lie in \[0.0, 1.0\]"),
    ("rho-nan", lambda: adaptive(x_(2, 3, 4), rho=math.nan), ValueError, r"rho must lie in \[0.0, 1.0\]"),
    ("threshold-zero", lambda: adaptive(x_(2, 3, 4), threshold=0.0), ValueError,
     r"threshold must lie in \(0.0, inf\]"),
    ("threshold-negative", lambda: adaptive(x_(2, 3, 4), threshold=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError,
     r"threshold must lie in \(0.0, inf\]"),
    ("alpha-one-norm", lambda: adaptive(x_(2, 3, 4), alpha=1.0, norm_input=True), ValueError,
     r"alpha \(with norm_input\) must lie in \[0.0, 1.0\)"),
    ("coupling-type", lambda: adaptive(x_(2, 3, 4), gamma="0.1"), TypeError, r"gamma must be a number or a tensor"),
    ("coupling-shape", lambda: adaptive(x_(2, 3, 4), zeta=torch.zeros(5)), ValueError,
     r"zeta of shape \(5,\) does not broadcast to the feature shape \(4,\)"),
]
for _name in ("beta", "gamma", "zeta", "eta"):
    BAD_FUNCTIONAL += [
        (f"{_name}-nan", lambda n=_name: adaptive(x_(2, 3, 4), **{n: math.nan}), ValueError,
         rf"{_name} must be finite"),
        (f"{_name}-inf-tensor", lambda n=_name: adaptive(x_(2, 3, 4), **{n: torch.tensor([0.0, math.inf, 0.0, 0.0])}),
         ValueError, rf"{_name} must be finite"),
        (f"{_name}--inf", lambda n=_name: adaptive(x_(2, 3, 4), **{n: -math.inf}), ValueError,
         rf"{_name} must be finite"),
    ]


@pytest.mark.usefixtures("no_native_code")
@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_FUNCTIONAL], ids=[c[0] for c in BAD_FUNCTIONAL])
def test_functional_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


BAD_LAYERS = [
    ("rec-no-shape-LIF", lambda: exodus.LIF(recurrent=True), ValueError, r"recurrent=True needs shape=\(N,\)"),
    ("rec-no-shape-IAF", lambda: exodus.IAF(recurrent=True), ValueError, r"recurrent=True needs shape=\(N,\)"),
    ("rec-no-shape-AdaptiveLIF", lambda: exodus.AdaptiveLIF(recurrent=True), ValueError,
     r"recurrent=True needs shape=\(N,\)"),
    ("rec-no-shape-ALIF", lambda: exodus.ALIF(recurrent=True), ValueError, r"recurrent=True needs shape=\(N,\)"),
    ("rec-multidim-shape", lambda: exodus.AdaptiveLIF(recurrent=True, shape=(2, 2)), ValueError,
     r"recurrent=True needs shape=\(N,\).*got shape=\(2, 2\)"),
    ("rec-tau_syn-LIF", lambda: exodus.LIF(recurrent=True, shape=(4,), tau_syn=5.0), ValueError,
     r"recurrent=True with tau_syn is not supported"),
    ("rec-tau_syn-IAF", lambda: exodus.IAF(recurrent=True, shape=(4,), tau_syn=5.0), ValueError,
     r"recurrent=True with tau_syn is not supported"),
    ("rec-not-bool", lambda: exodus.AdaptiveLIF(recurrent=1, shape=(4,)), TypeError, r"recurrent must be a bool"),
    ("weight_rec_init", lambda: exodus.LIF(recurrent=True, shape=(4,), weight_rec_init="xavier"), ValueError,
     r"unknown weight_rec_init 'xavier'"),
    ("weight_rec_gain", lambda: exodus.LIF(recurrent=True, shape=(4,), weight_rec_gain=math.nan), TypeError,
     r"weight_rec_gain must be a finite number"),
    ("tau_adapt-zero", lambda: exodus.AdaptiveLIF(tau_adapt=0.0), ValueError, r"tau_adapt must be > 0"),
    ("tau_adapt-negative", lambda: exodus.ALIF(tau_adapt=-5.0), ValueError, r"tau_adapt must be > 0"),
    ("tau_adapt-nan", lambda: exodus.AdLIF(tau_adapt=math.nan), ValueError, r"tau_adapt must be > 0"),
    ("tau_adapt-tensor", lambda: exodus.AdaptiveLIF(tau_adapt=torch.tensor([5.0, 0.0]), shape=(2,),
                                                    train_adaptation=True), ValueError, r"tau_adapt must be > 0"),
    ("threshold-zero", lambda: exodus.AdaptiveLIF(threshold=0.0), ValueError, r"threshold must be > 0"),
    ("threshold-negative", lambda: exodus.ALIF(threshold=torch.tensor([1.0, -0.5]), shape=(2,)), ValueError,
     r"threshold must be > 0"),
    ("train_adaptation-not-bool", lambda: exodus.AdaptiveLIF(train_adaptation="yes"), TypeError,
     r"train_adaptation must be a bool"),
    ("coupling-type", lambda: exodus.AdaptiveLIF(adapt_current="0.1"), TypeError,
     r"adapt_current must be a number or a tensor"),
    ("coupling-shape", lambda: exodus.AdaptiveLIF(adapt_membrane=torch.zeros(3), shape=(4,)), ValueError,
     r"adapt_membrane of shape \(3,\) does not broadcast to shape=\(4,\)"),
    ("AdLIF-a-nan", lambda: exodus.AdLIF(a=math.nan), ValueError, r"adapt_membrane must be finite"),
    ("AdLIF-b-inf", lambda: exodus.AdLIF(b=torch.tensor([0.1, math.inf]), shape=(2,)), ValueError,
     r"adapt_spike must be finite"),
]
for _name in COUPLING_NAMES:
    BAD_LAYERS += [
        (f"{_name}-nan", lambda n=_name: exodus.AdaptiveLIF(**{n: math.nan}), ValueError, rf"{_name} must be finite"),
        (f"{_name}-inf-trained", lambda n=_name: exodus.AdaptiveLIF(**{n: -math.inf}, train_adaptation=True),
         ValueError, rf"{_name} must be finite"),
    ]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_LAYERS], ids=[c[0] for c in BAD_LAYERS])
def test_layer_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.usefixtures("no_native_code")
@pytest.mark.parametrize("cls", ["AdaptiveLIF", "LIF", "IAF"])
def test_recurrent_layer_bad_input_shape(cls):
    """A recurrent layer for N neurons refuses input with other or more feature dims before any kernel."""
    layer = getattr(exodus, cls)(shape=(4,), recurrent=True, backend="cpu")
    with pytest.raises(ValueError, match=r"a recurrent layer needs input of shape \(batch, time, neurons\)|"
                                         r"does not broadcast to the feature shape"):
        layer(x_(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"does not broadcast to the feature shape \(5,\)|"
                                         r"weight_rec must have shape \(N, N\) = \(5, 5\)"):
        layer(x_(2, 3, 5))
    with pytest.raises(TypeError, match="input dtype must be float16, bfloat16, float32 or float64"):
        layer(torch.zeros(2, 3, 4, dtype=torch.int64))
