"""SpikingClassifier with adaptive (ALIF / adLIF) and recurrent hidden layers: building, training,
range initialisation and clamping, BatchNorm, the adaptive configs, and bad settings."""
import math
import os

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

from exodus import ALIF, IAF, LIF, AdLIF  # noqa: E402
from exodus.lightning.cli import build  # noqa: E402
from exodus.lightning.compare import gradient_agreement, layer_gradients  # noqa: E402
from exodus.lightning.data import ConfigError  # noqa: E402
from exodus.lightning.model import BITTAR_GARNER_RANGES, NEURONS, NormalizedLinear, SpikingClassifier  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
CLASSES = {"lif": LIF, "iaf": IAF, "alif": ALIF, "adlif": AdLIF}


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    monkeypatch.setattr("sys.argv", ["exodus-train"])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def batch(features=10, steps=30, size=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(size, steps, features, generator=g) < 0.3).float()
    return x, torch.arange(size) % classes


def model_for(neuron, recurrent, **kwargs):
    args = dict(input_shape=(10,), num_classes=3, hidden=[16, 12], neuron=neuron, recurrent=recurrent,
                weight_gain=1.5)
    if neuron == "adlif":      # normalised input ((1 - alpha) x) and a strong adaptation (b = 1): drive it harder
        args.update(weight_gain=20.0, threshold=0.3)
    return SpikingClassifier(**{**args, **kwargs})


# ----------------------------------------------------------------------------- building

@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
@pytest.mark.parametrize("neuron", NEURONS)
def test_model_builds_and_runs_for_every_neuron(neuron, recurrent):
    torch.manual_seed(0)
    model = model_for(neuron, recurrent)
    for name in ("hidden0", "hidden1"):
        layer = model.layers[name]["neuron"]
        assert type(layer) is CLASSES[neuron], name
        assert layer.recurrent is recurrent
        assert (layer.weight_rec is not None) is recurrent
        if recurrent:
            assert layer.weight_rec.shape == (layer.weight_rec.shape[0],) * 2
    assert not getattr(model.layers["readout"]["neuron"], "recurrent", False)   # the readout never recurs
    x, y = batch()
    loss = model.loss((x, y))
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(0.0 < float(r) < 1.0 for r in model.firing_rates.values()), model.firing_rates
    names = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert ("layers.hidden0.neuron.weight_rec" in names) is recurrent
    assert "layers.hidden0.synapse.weight" in names
    # the hparams rebuild the same architecture
    clone = SpikingClassifier(**dict(model.hparams))
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_spike_count_readout_is_lif_for_adaptive_neurons():
    model = model_for("alif", True, readout="spike_count", hidden=[8])
    readout = model.layers["readout"]["neuron"]
    assert type(readout) is LIF and not readout.recurrent


def test_defaults_build_the_previous_model():
    """Without the new arguments the model is the feed-forward LIF one: same modules, same state."""
    torch.manual_seed(0)
    model = SpikingClassifier(input_shape=(12,), num_classes=3, hidden=[7, 5])
    assert sorted(model.state_dict()) == sorted(
        f"layers.{layer}.{key}" for layer in ("hidden0", "hidden1", "readout")
        for key in ("synapse.weight", "synapse.bias", "neuron.tau_mem") + (("neuron.threshold",) if layer != "readout"
                                                                          else ()))
    for name in ("hidden0", "hidden1"):
        neuron = model.layers[name]["neuron"]
        assert type(neuron) is LIF and not neuron.recurrent and neuron.tau_mem.dim() == 0
        assert type(model.layers[name]["synapse"]) is torch.nn.Linear
    torch.manual_seed(0)
    again = SpikingClassifier(input_shape=(12,), num_classes=3, hidden=[7, 5], neuron="lif", recurrent=False,
                              batch_norm=False)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_adaptive_presets_train_only_their_free_couplings():
    alif = model_for("alif", False, train_adaptation=True, train_tau=True).layers["hidden0"]["neuron"]
    adlif = model_for("adlif", True, train_adaptation=True).layers["hidden0"]["neuron"]
    assert sorted(n for n, _ in alif.named_parameters()) == ["adapt_threshold", "tau_adapt", "tau_mem"]
    assert sorted(n for n, _ in adlif.named_parameters()) == ["adapt_membrane", "adapt_spike", "tau_adapt",
                                                              "weight_rec"]
    beta, gamma, zeta, _ = alif.couplings()
    assert gamma == 0.0 and zeta == 0.0 and beta.shape == (16,)
    beta, gamma, _, _ = adlif.couplings()
    assert beta == 0.0 and gamma == 1.0


def test_recurrent_options_reach_the_layers():
    model = model_for("adlif", True, weight_rec_init="normal", weight_rec_gain=0.5, zero_diagonal=True,
                      tau_adapt=150.0, adapt_a=-0.5, adapt_b=1.5)
    neuron = model.layers["hidden0"]["neuron"]
    assert neuron.zero_diagonal and torch.all(neuron.weight_rec.diagonal() == 0)
    assert torch.allclose(neuron.tau_adapt, torch.full((16,), 150.0))
    _, _, zeta, eta = neuron.couplings()
    assert torch.all(torch.as_tensor(zeta) == -0.5) and torch.all(torch.as_tensor(eta) == 1.5)
    alif = model_for("alif", False, adapt_threshold=2.5).layers["hidden0"]["neuron"]
    assert alif.couplings()[0] == 2.5 and alif.tied_spike


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("neuron, recurrent, extra", [
    ("alif", True, {}),
    ("adlif", True, dict(batch_norm=True, train_tau=True, train_adaptation=True, **BITTAR_GARNER_RANGES)),
    ("lif", True, dict(zero_diagonal=True)),
    ("adlif", False, {}),
], ids=["alif-recurrent", "adlif-recurrent-bittar", "lif-recurrent", "adlif-feedforward"])
def test_a_few_training_steps_decrease_the_loss(neuron, recurrent, extra):
    torch.manual_seed(0)
    model = model_for(neuron, recurrent, **extra)
    x, y = batch(size=16, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.loss((x, y))
        loss.backward()
        optimizer.step()
        model.clamp_neuron_parameters()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_exodus_gradient_equals_bptt_through_the_whole_model():
    """Recurrent adLIF with BatchNorm and trained per-neuron parameters: EXODUS' gradient of every
    parameter is BPTT's (autograd through the reference loop), from the same weights."""
    torch.manual_seed(0)
    args = dict(batch_norm=True, train_tau=True, train_adaptation=True, zero_diagonal=True, **BITTAR_GARNER_RANGES)
    model = model_for("adlif", True, **args)
    twin = SpikingClassifier(**{**dict(model.hparams), "gradient": "bptt"})
    twin.load_state_dict(model.state_dict())
    batches = [batch(size=6, seed=2)]
    reference = layer_gradients(twin, batches, torch.device("cpu"))
    agreement = gradient_agreement(layer_gradients(model, batches, torch.device("cpu")), reference)
    assert set(reference) == {"hidden0", "hidden1", "readout"}
    assert all(float(g.norm()) > 0 for g in reference.values())
    for layer, error in agreement["rel_error"].items():
        assert error < 1e-4, (layer, error)


# ----------------------------------------------------------------------------- ranges and clamping

def test_range_initialisation_is_uniform_in_the_decay():
    torch.manual_seed(0)
    model = SpikingClassifier(input_shape=(10,), num_classes=3, hidden=[4000], neuron="adlif",
                              **BITTAR_GARNER_RANGES)
    neuron = model.layers["hidden0"]["neuron"]
    alpha, rho = neuron.alpha(), neuron.rho()
    _, _, a, b = neuron.couplings()
    for value, (low, high) in ((alpha, (math.exp(-1 / 5), math.exp(-1 / 25))),
                               (rho, (math.exp(-1 / 30), math.exp(-1 / 120))), (a, (-1.0, 1.0)), (b, (0.0, 2.0))):
        assert value.shape == (4000,)
        assert float(value.min()) >= low - 1e-6 and float(value.max()) <= high + 1e-6
        # uniform: mean in the middle, all four quarters populated about equally
        assert float(value.mean()) == pytest.approx((low + high) / 2, abs=0.02 * (high - low))
        quarters = torch.histc(value.double(), bins=4, min=low, max=high)
        assert float(quarters.min()) > 900
    assert not any(isinstance(p, torch.nn.Parameter) for p in (neuron.tau_mem, neuron.tau_adapt))  # not trained


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_clamping_after_each_optimizer_step(tmp_path):
    """A huge SGD step throws every trained parameter out of its range; Lightning's optimizer_step
    clamps them back: tau_mem to [5, 25], tau_adapt to [30, 120] steps, a to [-1, 1], b to [0, 2].
    Parameters without a range (weights) are not touched."""
    torch.manual_seed(0)
    model = model_for("adlif", True, train_tau=True, train_adaptation=True, **BITTAR_GARNER_RANGES)
    model.configure_optimizers = lambda: torch.optim.SGD(model.parameters(), lr=1e4)
    x, y = batch(size=16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    ranges = {"tau_mem": (5, 25), "tau_adapt": (30, 120), "adapt_membrane": (-1, 1), "adapt_spike": (0, 2)}
    for layer in ("hidden0", "hidden1"):
        neuron = model.layers[layer]["neuron"]
        hits = 0
        for name, (low, high) in ranges.items():
            value = getattr(neuron, name)
            assert isinstance(value, torch.nn.Parameter)
            assert float(value.min()) >= low and float(value.max()) <= high, (layer, name)
            hits += int(((value == low) | (value == high)).sum())
        assert hits > 0                                        # the step did leave the ranges
    moved = model.layers["hidden0"]["synapse"].weight - before["layers.hidden0.synapse.weight"]
    assert float(moved.abs().max()) > 10                       # weights are not clamped


def test_untrained_or_rangeless_parameters_are_not_clamped():
    model = model_for("alif", False, train_adaptation=True, tau_adapt=500.0, tau_mem_range=[5.0, 25.0])
    neuron = model.layers["hidden0"]["neuron"]
    with torch.no_grad():
        neuron.tau_adapt.fill_(1000.0)             # trained, but no tau_adapt_range
    model.clamp_neuron_parameters()
    assert torch.all(neuron.tau_adapt == 1000.0)
    assert not isinstance(neuron.tau_mem, torch.nn.Parameter)   # in range by construction, not trained


# ----------------------------------------------------------------------------- BatchNorm

def test_batch_norm_normalises_over_batch_and_time():
    torch.manual_seed(0)
    model = model_for("adlif", True, batch_norm=True)
    synapse = model.layers["hidden0"]["synapse"]
    assert isinstance(synapse, NormalizedLinear) and synapse.linear.bias is None
    assert synapse.norm.momentum == 0.05
    x, _ = batch(size=32)
    current = synapse(x)
    assert current.shape == (32, 30, 16)
    rows = current.reshape(-1, 16)
    torch.testing.assert_close(rows.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(rows.std(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert type(model.layers["readout"]["synapse"]) is torch.nn.Linear    # not on the readout
    model.eval()                                   # eval: running statistics, per step the same map
    with torch.no_grad():
        assert torch.allclose(synapse(x)[:, :1], synapse(x[:, :1]))


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name, width", [("shd_adlif.yaml", 128), ("ssc_adlif.yaml", 512)])
def test_adlif_dataset_configs_build_bittar_garner_networks(name, width, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build(["--config", os.path.join(CONFIGS, name)])
    model = cli.model
    assert model.input_shape == (700,) and model.ranges == BITTAR_GARNER_RANGES
    for layer in ("hidden0", "hidden1"):
        neuron = model.layers[layer]["neuron"]
        assert type(neuron) is AdLIF and neuron.recurrent and neuron.zero_diagonal
        assert neuron.weight_rec.shape == (width, width) and torch.all(neuron.weight_rec.diagonal() == 0)
        assert isinstance(model.layers[layer]["synapse"], NormalizedLinear)
        assert all(isinstance(getattr(neuron, n), torch.nn.Parameter)
                   for n in ("tau_mem", "tau_adapt", "adapt_membrane", "adapt_spike"))
    assert "hidden2" not in model.layers
    assert cli.datamodule.time_steps == 100 and cli.datamodule.dt_ms == 14.0
    assert cli.config["optimizer"]["init_args"]["lr"] == 0.01
    assert cli.config["lr_scheduler"]["init_args"]["factor"] == 0.7


def test_store_recall_config_builds_a_recurrent_alif_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build(["--config", os.path.join(CONFIGS, "store_recall.yaml")])
    neuron = cli.model.layers["hidden0"]["neuron"]
    assert type(neuron) is ALIF and neuron.recurrent
    assert cli.model.readout_steps == cli.datamodule.recall_steps
    assert cli.model.input_shape == cli.datamodule.input_shape


# ----------------------------------------------------------------------------- bad settings

@pytest.mark.parametrize("args, message", [
    (dict(input_shape=(2, 8, 8), conv_channels=[2], recurrent=True), "model.recurrent.*model.conv_channels"),
    (dict(hidden=[], recurrent=True), "model.recurrent.*model.hidden"),
    (dict(neuron="lif", recurrent=True, tau_syn=5.0), "model.tau_syn"),
    (dict(neuron="alif", tau_syn=5.0), "model.tau_syn"),
    (dict(neuron="lif", train_adaptation=True), "model.train_adaptation"),
    (dict(neuron="lif", tau_adapt_range=[30, 120]), "model.tau_adapt_range"),
    (dict(neuron="alif", adapt_a_range=[-1, 1]), "model.adapt_a_range"),
    (dict(neuron="iaf", tau_mem_range=[5, 25]), "model.tau_mem_range"),
    (dict(neuron="adlif", tau_mem_range=[25, 5]), "model.tau_mem_range.*low <= high"),
    (dict(neuron="adlif", tau_adapt_range=[0, 120]), "model.tau_adapt_range.*> 0"),
    (dict(neuron="adlif", adapt_b_range=[1.0]), "model.adapt_b_range"),
    (dict(neuron="alif", tau_adapt=-3.0), "model.tau_adapt"),
    (dict(neuron="alif", adapt_threshold="high"), "model.adapt_threshold"),
    (dict(recurrent=True, weight_rec_init="eye"), "model.weight_rec_init"),
    (dict(recurrent="yes"), "model.recurrent"),
    (dict(neuron="iaf", train_tau=True), "model.train_tau"),
])
def test_bad_adaptive_settings_say_what_to_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        SpikingClassifier(**{"input_shape": (8,), "num_classes": 3, **args})
