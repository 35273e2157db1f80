"""exodus.rls (DESIGN.md §9): RLS / FORCE training of the E/I LIF network.

The compiled simulation loop (cuda/cpu_rls.cpp) and the torch loop (the CUDA path, run here on
the CPU) are compared with the plain per-step reference bit for bit (same expressions, same
order, spikes delivered in ascending presynaptic order). The batched RLS updates (native
block-packed, torch bmm) are compared with the per-neuron reference loop (float64, 1e-10).
TrainSpikingNet.jl's small test config (N = 1024, K = 51, L = 14, float64, seed 1) checks the
rates (0-15 Hz) and that the correlation with the target rises with training.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import exodus.rls as rls
from conftest import needs_cuda
from exodus.rls import _native
from exodus.rls.network import new_state
from exodus.rls.reference import initial_P_reference, rls_update_reference, simulate_reference
from exodus.rls.train import (BlockedP, NativeSimulation, Recording, TorchSimulation, block_size, pack_blocked,
                              pack_symmetric, rls_update_native, rls_update_torch, smoothing_matrix,
                              unpack_blocked, unpack_symmetric)

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
NATIVE = _native.available(torch.float32) and _native.available(torch.float64)
needs_native = pytest.mark.skipif(not NATIVE, reason="no C++ compiler: exodus.rls native kernels not built")
STATE_FIELDS = ("v", "u_exc", "u_inh", "u_plastic", "r", "in_exc", "in_inh", "in_plastic", "u_static", "spiked",
                "refractory", "spike_count")


def small_params(**kw) -> rls.NetworkParams:
    """A network small enough for the per-step reference (K = 20, L = 9)."""
    base = dict(n_cells=300, k=20, dtype="float64", seed=3)
    base.update(kw)
    return rls.NetworkParams(**base)


def run_simulation(kind: str, net, state, w, steps, record_every=7):
    """Simulate ``steps`` = list of [begin, end) chunks with one implementation; returns the
    recorded u_total (rows, N)."""
    p = net.params
    rows = (steps[-1][1] - 1) // record_every + 1
    record = torch.zeros(rows, p.n_cells, dtype=p.torch_dtype)
    if kind == "reference":
        for begin, end in steps:
            simulate_reference(net, state, begin, end, w, 0, True, record, 1, record_every)
        return record
    cls = NativeSimulation if kind == "native" else TorchSimulation
    sim = cls(net, state, w, 0, True, Recording(record, 1, record_every))
    for begin, end in steps:
        sim.run(begin, end)
    return record


def assert_states_equal(got, expected):
    for name in STATE_FIELDS:
        a, b = getattr(got, name), getattr(expected, name)
        assert torch.equal(a, b), f"{name}: max diff {(a.double() - b.double()).abs().max().item():.3e}"


# ----------------------------------------------------------------------------- simulation

_WARM: dict = {}


def warm_start(dtype: str, plastic: bool):
    """(net, w, state after 2899 reference steps), computed once per (dtype, plastic)."""
    if (dtype, plastic) not in _WARM:
        p = small_params(dtype=dtype, stim_on=300.0)
        net = rls.build_network(p)
        gen = torch.Generator().manual_seed(11)
        w = (net.w0 * (1 + 0.3 * torch.randn(net.w0.shape, generator=gen, dtype=F64)).to(net.w0.dtype)).contiguous()
        w = w if plastic else None
        start = new_state(p, gen)
        simulate_reference(net, start, 1, 2900, w)  # activity in flight: filters, refractory cells
        _WARM[(dtype, plastic)] = (net, w, start)
    net, w, start = _WARM[(dtype, plastic)]
    return net, w, start.clone()


@pytest.mark.parametrize("kind", [pytest.param("native", marks=needs_native), "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("plastic", [True, False])
def test_simulation_matches_reference(kind, dtype, plastic):
    """Steps 2900-3300 span the stimulus onset (step 3001); chunked calls continue exactly."""
    net, w, start = warm_start(dtype, plastic)
    assert int(start.spike_count.sum()) > 20, "the test network should be active"
    ref, fast = start.clone(), start.clone()
    steps = [(2900, 3003), (3003, 3004), (3004, 3300)]
    rec_ref = run_simulation("reference", net, ref, w, steps)
    rec_fast = run_simulation(kind, net, fast, w, steps)
    assert_states_equal(fast, ref)
    assert torch.equal(rec_fast, rec_ref)
    assert int(ref.spike_count.sum()) > int(start.spike_count.sum())


@needs_native
@settings(max_examples=8)
@given(n_cells=st.integers(20, 120), k=st.integers(1, 8), L=st.integers(1, 6), refractory=st.sampled_from([0.0, 0.1, 0.5]),
       seed=st.integers(0, 2**20), dtype=st.sampled_from(["float64", "float32"]))
def test_native_simulation_property(n_cells, k, L, refractory, seed, dtype):
    """Random small networks (strong input so they spike): native == reference bit for bit."""
    p = rls.NetworkParams(n_cells=n_cells, k=k, n_plastic=L, refractory=refractory, seed=seed, dtype=dtype,
                          x_coefficient=0.5, train_time=1100.0, stim_on=300.0, stim_off=400.0)
    net = rls.build_network(p)
    gen = torch.Generator().manual_seed(seed)
    ref = new_state(p, gen)
    fast = ref.clone()
    steps = [(2950, 3020), (3020, 3100)]
    rec_ref = run_simulation("reference", net, ref, net.w0, steps, record_every=3)
    rec_fast = run_simulation("native", net, fast, net.w0, steps, record_every=3)
    assert_states_equal(fast, ref)
    assert torch.equal(rec_fast, rec_ref)


# ----------------------------------------------------------------------------- RLS step

def random_rls_problem(n_cells, n, n_pre, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n_cells, n, n, generator=g, dtype=F64)
    P = A @ A.transpose(1, 2) / n + 0.5 * torch.eye(n, dtype=F64)
    P = ((P + P.transpose(1, 2)) / 2).to(dtype)  # exactly symmetric (a BLAS product need not be, bit for bit)
    w = torch.randn(n_cells, n, generator=g, dtype=F64).to(dtype)
    inputs = torch.randint(0, n_pre, (n_cells, n), generator=g)
    r = (torch.rand(n_pre, generator=g, dtype=F64) * 0.3).to(dtype)
    u_static = torch.randn(n_cells, generator=g, dtype=F64).to(dtype)
    u_target = torch.randn(n_cells, generator=g, dtype=F64).to(dtype)
    return P, w, inputs, r, u_static, u_target


def assert_close(got, expected, rtol, name):
    scale = expected.abs().max().item()
    err = (got.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{name}: {err:.3e} > {rtol:.0e} x {scale:.3e}"


@settings(max_examples=20)
@given(n_cells=st.integers(1, 9), n=st.integers(1, 40), seed=st.integers(0, 2**20), normalized=st.booleans(),
       threads=st.sampled_from([1, 2]))
def test_rls_update_matches_per_neuron_reference(n_cells, n, seed, normalized, threads):
    P, w, inputs, r, u_static, u_target = random_rls_problem(n_cells, n, 50, F64, seed)
    P_ref, w_ref = P.clone(), w.clone()
    rls_update_reference(P_ref, w_ref, inputs, r, u_static, u_target, normalized)
    assert not torch.equal(w_ref, w)
    P_t, w_t = P.clone(), w.clone()
    rls_update_torch(P_t, w_t, inputs, r, u_static, u_target, normalized)
    assert_close(P_t, P_ref, 1e-10, "torch P")
    assert_close(w_t, w_ref, 1e-10, "torch w")
    assert torch.equal(P_t, P_t.transpose(1, 2)), "torch P lost exact symmetry"
    if NATIVE:
        blocked, w_n = pack_blocked(P), w.clone()
        xk = rls_update_native(blocked, w_n, inputs, r, u_static, u_target, normalized, threads)
        P_n = unpack_blocked(blocked, n)
        assert_close(P_n, P_ref, 1e-10, "native P")
        assert_close(w_n, w_ref, 1e-10, "native w")
        x = r[inputs]
        assert_close(xk, torch.einsum("ni,nij,nj->n", x, P, x), 1e-10, "native xᵀPx")
        # the padding of the block layout (rows and columns n .. nb B - 1) stays zero
        padded = unpack_blocked(blocked, -(-n // block_size(F64)) * block_size(F64))
        assert not bool(padded[:, n:, :].any()) and not bool(padded[:, :, n:].any())


@needs_native
@settings(max_examples=10)
@given(capacity=st.integers(1, 6), updates=st.integers(1, 9), n=st.integers(1, 35), seed=st.integers(0, 2**20))
def test_deferred_downdates_equal_sequential_updates(capacity, updates, n, seed):
    """BlockedP keeps up to ``capacity`` downdates as factors: any sequence of updates equals the
    per-neuron reference applied one by one (and P reads back exactly symmetric)."""
    P, w, inputs, r, u_static, u_target = random_rls_problem(5, n, 40, F64, seed)
    g = torch.Generator().manual_seed(seed + 1)
    P_ref, w_ref = P.clone(), w.clone()
    blocked, w_n = BlockedP.from_full(P, capacity), w.clone()
    for _ in range(updates):
        r = torch.rand(40, generator=g, dtype=F64) * 0.3
        u_target = torch.randn(5, generator=g, dtype=F64)
        rls_update_reference(P_ref, w_ref, inputs, r, u_static, u_target)
        blocked.update(w_n, inputs, r, u_static, u_target, True, 1)
    assert blocked.pending == updates % capacity
    assert_close(w_n, w_ref, 1e-10, "w")
    full = blocked.full()
    assert blocked.pending == 0
    assert_close(full, P_ref, 1e-10, "P")
    assert torch.equal(full, full.transpose(1, 2))


@needs_native
def test_rls_update_float32_close_to_float64():
    P, w, inputs, r, u_static, u_target = random_rls_problem(64, 58, 200, F64, 5)
    P_ref, w_ref = P.clone(), w.clone()
    rls_update_reference(P_ref, w_ref, inputs, r, u_static, u_target)
    blocked, w32 = pack_blocked(P.float()), w.float()
    rls_update_native(blocked, w32, inputs, r.float(), u_static.float(), u_target.float(), True, 2)
    assert_close(unpack_blocked(blocked, 58), P_ref, 1e-5, "float32 P")
    assert_close(w32, w_ref, 1e-5, "float32 w")


@settings(max_examples=20)
@given(n=st.integers(1, 70), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_symmetric_layouts_round_trip(n, dtype):
    A = torch.randn(3, n, n, dtype=F64)
    P = (A + A.transpose(1, 2)).to(dtype)
    assert torch.equal(unpack_blocked(pack_blocked(P), n), P)
    assert torch.equal(unpack_symmetric(pack_symmetric(P), n), P)
    assert pack_symmetric(P).shape[-1] == n * (n + 1) // 2


def test_thread_chooser_follows_the_faster_count():
    from exodus.rls.train import ThreadChooser

    chooser = ThreadChooser(2, probe_every=5)
    times = {1: 3.0, 2: 1.0}
    picks = []
    for _ in range(40):
        t = chooser.choose()
        picks.append(t)
        chooser.record(t, times[t])
    assert picks[:2] == [1, 2] and picks[10:].count(2) >= 24 and 1 in picks[10:]  # best, with probes
    times = {1: 1.0, 2: 5.0}  # the machine got busy: one thread wins now
    for _ in range(40):
        t = chooser.choose()
        chooser.record(t, times[t])
    assert chooser.choose() == 1 or chooser.calls % 5 == 0
    assert ThreadChooser(1).options == [1]


def test_initial_P_equals_reference():
    p = small_params()
    net = rls.build_network(p)
    ref = initial_P_reference(net.w0.double(), p.penalty_lambda, p.penalty_mu)
    P0 = rls.initial_P(p)
    assert torch.allclose(ref, P0.expand_as(ref), rtol=1e-13, atol=1e-15)
    assert float(torch.linalg.eigvalsh(P0).min()) > 0


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def small_config_run():
    """TrainSpikingNet.jl's test config (N = 1024, K = 51, L = 14, float64, seed 1): spontaneous
    run + 12 training loops."""
    p = rls.NetworkParams(n_cells=1024, dtype="float64", seed=1)
    trainer, spont = rls.setup(p)
    stats = trainer.train(12)
    return p, trainer, spont, stats


def test_small_config_rates(small_config_run):
    p, trainer, spont, stats = small_config_run
    assert (p.K, p.L) == (51, 14)
    assert 0 < spont.rate_exc < 15 and 0 < spont.rate_inh < 15
    for s in stats:
        assert 0 < s.rate_hz < 15, s


def test_small_config_correlation_rises(small_config_run):
    _, _, _, stats = small_config_run
    corr = [s.correlation for s in stats]
    assert all(math.isfinite(c) for c in corr)
    assert sum(corr[-3:]) / 3 > sum(corr[:2]) / 2 + 0.1, corr
    assert corr[-1] > 0.15, corr


def test_small_config_P_stays_spd(small_config_run):
    _, trainer, _, _ = small_config_run
    P = trainer.P_full()
    assert torch.equal(P, P.transpose(1, 2)), "P must stay exactly symmetric"
    eig = torch.linalg.eigvalsh(P)
    assert float(eig.min()) > 0, f"P lost positive definiteness: min eigenvalue {float(eig.min()):.3e}"
    P0 = rls.initial_P(trainer.params)
    assert float(eig.max()) <= float(torch.linalg.eigvalsh(P0).max()) * (1 + 1e-9), "RLS only shrinks P"


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native), "torch"])
def test_trainer_backends_agree(backend):
    """One training loop of the trainer on each backend vs the per-step, per-neuron reference."""
    p = small_params(train_time=450.0, stim_on=100.0, stim_off=200.0)
    trainer, _ = rls.setup(p, backend=backend)
    generator_state = trainer.generator.get_state()
    result = trainer.train_loop()
    # the same trial with the reference implementations
    net = trainer.net
    gen = torch.Generator()
    gen.set_state(generator_state)
    state = new_state(p, gen)
    w = net.w0.clone()
    P = rls.initial_P(p).unsqueeze(0).repeat(p.n_cells, 1, 1)
    step = 1
    for j in range(p.n_learn):
        update = p.stim_off_steps + (j + 1) * p.learn_steps
        simulate_reference(net, state, step, update, w)
        rls_update_reference(P, w, net.plastic_inputs, state.r, state.u_static, trainer.targets[0, j])
        step = update
    simulate_reference(net, state, step, p.n_steps + 1, w)
    assert_close(trainer.w, w, 1e-10, "w")
    assert_close(trainer.P_full(), P, 1e-10, "P")
    assert result.stats.rate_hz == pytest.approx(float(state.spike_count.double().mean()) / (p.train_time / 1000))


def test_determinism_and_checkpoint(tmp_path):
    p = small_params(train_time=1200.0)
    a, spont_a = rls.setup(p)
    b, spont_b = rls.setup(p)
    assert torch.equal(spont_a.u_mean, spont_b.u_mean)
    assert torch.equal(a.targets, b.targets)
    ra, rb = a.train_loop(), b.train_loop()
    assert torch.equal(a.w, b.w) and ra.stats.correlation == rb.stats.correlation
    c, _ = rls.setup(rls.NetworkParams(**{**p.to_dict(), "seed": p.seed + 1}))
    assert not torch.equal(c.targets, a.targets)
    a.save(tmp_path / "ckpt.pt")
    loaded = rls.RLSTrainer.load(tmp_path / "ckpt.pt")
    assert loaded.loop == 1 and len(loaded.history) == 1
    assert torch.equal(loaded.w, a.w) and torch.equal(loaded.P_full(), a.P_full())
    ra2, rl2 = a.train_loop(), loaded.train_loop()
    assert torch.equal(loaded.w, a.w) and ra2.stats.correlation == rl2.stats.correlation
    # a checkpoint of one backend loads into the other
    a.save(tmp_path / "ckpt2.pt")
    torch_loaded = rls.RLSTrainer.load(tmp_path / "ckpt2.pt", backend="torch")
    assert torch_loaded.backend == "torch"
    assert torch.equal(torch_loaded.P_full(), a.P_full()) and torch.equal(torch_loaded.w, a.w)


# ----------------------------------------------------------------------------- targets and metrics

def test_sinusoid_targets_shape_and_mean():
    p = small_params()
    u_mean = torch.linspace(-1, 1, p.n_cells, dtype=F64)
    t = rls.sinusoid_targets(p, u_mean, torch.Generator().manual_seed(0), n_tasks=2, amplitude=0.5)
    assert t.shape == (2, p.n_learn, p.n_cells) and t.dtype == F64
    # n_learn = 100 samples over exactly one period: the mean of a sinusoid is the offset
    assert torch.allclose(t.mean(1), u_mean.expand(2, -1), atol=1e-12)
    assert torch.allclose(t.amax(1) - t.amin(1), torch.full((2, p.n_cells), 1.0, dtype=F64), atol=2e-3)


def test_ricciardi_targets_follow_rates():
    """TrainSpikingNet.jl's Ricciardi test: increasing / decreasing / peaked rates give currents
    with the same monotonicity; and the rate of the solved current is the target rate."""
    p = rls.NetworkParams(n_cells=4, dtype="float64")
    m = p.n_learn
    up = torch.arange(1, m + 1, dtype=F64)
    down = torch.flip(up, [0])
    peak = torch.cat([torch.arange(1, m // 2 + 1), torch.arange(m // 2, 0, -1)]).to(F64)
    wave = 25 + 25 * torch.sin(torch.linspace(0, 2 * math.pi, m, dtype=F64))
    rates = torch.stack([up, down, peak, wave], 1)
    sigma = 0.3
    u = rls.rates_to_currents(rates, sigma, p)[0]
    d = torch.diff(u, dim=0)
    assert bool((d[:, 0] > 0).all()) and bool((d[:, 1] < 0).all())
    assert bool((d[: m // 2 - 1, 2] > 0).all()) and bool((d[m // 2:, 2] < 0).all())
    back = rls.ricciardi_rate(u, sigma, p.tau_mem, p.threshold, p.v_reset)
    expect = torch.where(rates == 0, 0.1, rates)
    assert torch.allclose(back, expect, rtol=1e-9)


def test_setup_with_rate_targets():
    p = small_params(train_time=1200.0)
    rates = 1 + 9 * torch.rand(p.n_learn, p.n_cells, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(ValueError, match="nearly silent"):  # this small network is silent without plastic input
        rls.setup(p, targets="rates", rates=rates)
    trainer, _ = rls.setup(p, targets="rates", rates=rates, sigma=0.3)
    back = rls.ricciardi_rate(trainer.targets[0], 0.3, p.tau_mem, p.threshold, p.v_reset)
    assert torch.allclose(back, rates, rtol=1e-8)
    with pytest.raises(ValueError, match="cannot produce"):
        rls.rates_to_currents(rates, 1e-200, p)


def test_ricciardi_regimes_continuous_and_deterministic_limit():
    mu = torch.linspace(-2, 3, 2001, dtype=F64)
    rate = rls.ricciardi_rate(mu, 0.2)
    assert bool(torch.isfinite(rate).all()) and bool((torch.diff(rate) >= 0).all())
    # the three branches meet at mu = reset (0) and mu = threshold (1)
    for edge in (0.0, 1.0):
        left = rls.ricciardi_rate(torch.tensor([edge - 1e-7], dtype=F64), 0.2)
        right = rls.ricciardi_rate(torch.tensor([edge + 1e-7], dtype=F64), 0.2)
        assert float(left) == pytest.approx(float(right), rel=1e-4)
    # sigma = 0: 1 / (tau log((mu - reset) / (mu - threshold)))
    assert float(rls.ricciardi_rate(torch.tensor([2.0], dtype=F64), 0.0)) == pytest.approx(1000 / (10 * math.log(2)))


def test_correlation_and_smoothing():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(50, 30, generator=g, dtype=F64)
    mean, per = rls.correlation(2 * target + 1, target)
    assert mean == pytest.approx(1.0) and torch.allclose(per, torch.ones(30, dtype=F64))
    produced = target.clone()
    produced[:, 0] = 3.0  # a constant trace: NaN, left out
    mean, per = rls.correlation(-produced, target)
    assert math.isnan(float(per[0])) and mean == pytest.approx(-1.0)
    p = small_params()
    S = smoothing_matrix(p)
    assert S.shape == (p.n_learn, 1000)
    assert torch.allclose(S.sum(1), torch.ones(p.n_learn, dtype=F64))
    assert int((S[50] > 0).sum()) == 100  # a full ±50 ms window in the middle


# ----------------------------------------------------------------------------- bad input

def test_bad_params():
    with pytest.raises(ValueError, match="exceeds the number of candidates"):
        rls.NetworkParams(n_cells=40, k=5, n_plastic=21).validate()
    with pytest.raises(ValueError, match="penalty_lambda"):
        rls.NetworkParams(penalty_lambda=0.0).validate()
    with pytest.raises(ValueError, match="penalty_lambda"):
        rls.NetworkParams(penalty_lambda=-1.0).validate()
    with pytest.raises(ValueError, match="out-degree"):
        rls.NetworkParams(n_cells=100, k=60).validate()
    with pytest.raises(ValueError, match="whole number"):
        rls.NetworkParams(learn_every=10.05).validate()
    with pytest.raises(ValueError, match="dtype"):
        rls.NetworkParams(dtype="float16").validate()
    with pytest.raises(TypeError, match="n_cells"):
        rls.NetworkParams(n_cells=100.0).validate()
    with pytest.raises(ValueError, match="unknown"):
        rls.NetworkParams.from_dict({"n_cell": 3})


def test_bad_targets_and_backend():
    p = small_params()
    net = rls.build_network(p)
    with pytest.raises(ValueError, match="targets must have shape"):
        rls.RLSTrainer(net, torch.zeros(1, p.n_learn + 1, p.n_cells, dtype=F64))
    with pytest.raises(ValueError, match="targets must have shape"):
        rls.RLSTrainer(net, torch.zeros(1, p.n_learn, p.n_cells - 1, dtype=F64))
    with pytest.raises(ValueError, match="tasks"):
        rls.RLSTrainer(net, torch.zeros(2, p.n_learn, p.n_cells, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        rls.RLSTrainer(net, torch.full((1, p.n_learn, p.n_cells), float("nan"), dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rls.RLSTrainer(net, [[0.0]])
    with pytest.raises(ValueError, match="backend"):
        rls.RLSTrainer(net, torch.zeros(1, p.n_learn, p.n_cells, dtype=F64), backend="gpu")
    with pytest.raises(ValueError, match="rates must have shape"):
        rls.rates_to_currents(torch.ones(3, 3), 0.3, p)
    with pytest.raises(ValueError, match="u_mean"):
        rls.sinusoid_targets(p, torch.zeros(3), torch.Generator())


@needs_native
def test_bad_native_arguments():
    P, w, inputs, r, u_static, u_target = random_rls_problem(4, 10, 20, F64, 0)
    blocked = pack_blocked(P)
    with pytest.raises(ValueError, match="P must have shape"):
        rls_update_native(pack_symmetric(P), w, inputs, r, u_static, u_target)
    with pytest.raises(TypeError, match="dtype"):
        rls_update_native(blocked, w, inputs, r.float(), u_static, u_target)
    with pytest.raises(ValueError, match="inputs index"):
        rls_update_native(blocked, w, inputs + 100, r, u_static, u_target)
    with pytest.raises(ValueError, match="u_target"):
        rls_update_native(blocked, w, inputs, r, u_static, u_target[:2])
    with pytest.raises(ValueError, match="contiguous"):
        rls_update_native(blocked, w.t().contiguous().t(), inputs, r, u_static, u_target)
    p = small_params()
    net = rls.build_network(p)
    state = new_state(p, torch.Generator())
    with pytest.raises(ValueError, match="w must be"):
        NativeSimulation(net, state, net.w0[:, :3].contiguous())
    state.v = state.v.float()
    with pytest.raises(ValueError, match="state.v"):
        NativeSimulation(net, state, net.w0)
    # a network whose index arrays would make the compiled loop write out of bounds or race
    state = new_state(p, torch.Generator())
    for change, message in ((lambda t: t.__setitem__(5, p.n_cells), "outside"),
                            (lambda t: t.__setitem__(1, t[0].item()), "twice")):
        post = net.static_post.clone()
        change(post)
        bad = rls.Network(**{**{k: v for k, v in vars(net).items() if k != "extra"}, "static_post": post})
        with pytest.raises(ValueError, match=message):
            NativeSimulation(bad, state, net.w0)


@needs_cuda
def test_cuda_torch_backend_matches_cpu():
    p = small_params(train_time=1200.0)
    cpu, _ = rls.setup(p, backend="torch")
    gpu, _ = rls.setup(p, backend="torch", device="cuda")
    cpu.train_loop()
    gpu.train_loop()
    assert_close(gpu.w.cpu(), cpu.w, 1e-10, "w")


def test_cli_tutorial_config_small(tmp_path):
    """exodus-rls with the tutorial config, shrunk: learning curve, checkpoint, plots; then resume."""
    from exodus.rls import cli

    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "rls_tutorial.yaml"
    args = ["--config", str(config), "--n-cells", "200", "--loops", "2",
            "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    import json

    curve = json.loads((out / "learning_curve.json").read_text())
    assert [row["loop"] for row in curve] == [1, 2]
    for name in ("checkpoint.pt", "correlation.png", "currents.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert cli.main(["--resume", str(out / "checkpoint.pt"), "--loops", "1", "--out", str(out),
                     "--no-plots", "--no-progress"]) == 0
    assert [row["loop"] for row in json.loads((out / "learning_curve.json").read_text())] == [1, 2, 3]
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": {"loop": 3}}')
    with pytest.raises(ValueError, match="unknown keys"):
        cli.main(["--config", str(bad)])
