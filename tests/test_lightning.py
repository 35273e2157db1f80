"""SpikingClassifier against a hand-written reference network, exodus-train end to end,
exact resume from a mid-epoch checkpoint, and the messages of bad configs."""
import csv
import glob
import math
import os

import pytest
import torch
import yaml

pl = pytest.importorskip("pytorch_lightning")

from exodus import ExpLeak  # noqa: E402
from exodus.lightning.cli import build, main, run  # noqa: E402
from exodus.lightning.data import ConfigError, SpikeDataModule  # noqa: E402
from exodus.lightning.model import SpikingClassifier  # noqa: E402
from exodus.reference import leaky_ref, lif_ref  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
DEFAULT = os.path.join(CONFIGS, "default.yaml")


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    """Configs set num_threads; give the other test files their thread count back. (sys.argv is
    pytest's; LightningCLI warns when it sees both that and args.)"""
    monkeypatch.setattr("sys.argv", ["exodus-train"])
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- model vs reference

def reference_logits(model: SpikingClassifier, x: torch.Tensor) -> torch.Tensor:
    """The network written out step by step: synaptic maps applied per time step, neuron scans
    by the plain-PyTorch reference (exodus.reference), readout over the last readout_steps."""
    h = x
    for name, layer in model.layers.items():
        synapse, neuron = layer["synapse"], layer["neuron"]
        current = torch.stack([synapse(h[:, t] if name.startswith("conv") else h[:, t].flatten(1))
                               for t in range(h.shape[1])], 1)
        if isinstance(neuron, ExpLeak):
            h = leaky_ref(current, torch.exp(-1.0 / neuron.tau_mem))
            continue
        if neuron.tau_syn is not None:
            current = leaky_ref(current, torch.exp(-1.0 / neuron.tau_syn))
        h, _ = lif_ref(current, neuron.alpha(), neuron.threshold, reset=neuron.reset, v_min=neuron.v_min,
                       max_spikes_per_bin=neuron.max_spikes_per_bin, surrogate=neuron.surrogate,
                       gradient=neuron.gradient, grad_scale=neuron.grad_scale)
    window = h[:, -model.readout_steps:] if model.readout_steps else h
    if model.readout == "spike_count":
        return window.sum(1)
    return window.amax(1) if model.readout == "max_membrane" else window.mean(1)


CASES = {
    "lif_two_layers_tau_syn": dict(input_shape=(10,), hidden=[12, 8], tau_syn=4.0, readout="max_membrane",
                                   readout_steps=5),
    "iaf_spike_count_zero_reset": dict(input_shape=(10,), hidden=[16], neuron="iaf", reset="zero",
                                       readout="spike_count", threshold=0.5),
    "slayer_multispike": dict(input_shape=(10,), hidden=[12], gradient="slayer", grad_scale=0.5,
                              max_spikes_per_bin=3, surrogate="FastSigmoid", surrogate_args={"slope": 5.0},
                              readout="mean_membrane"),
    "conv_front_end": dict(input_shape=(2, 8, 8), conv_channels=[3], conv_pool=2, hidden=[6],
                           readout="mean_membrane", train_tau=True, train_threshold=True),
}


@pytest.mark.parametrize("case", CASES)
def test_model_equals_reference_network(case):
    torch.manual_seed(0)
    model = SpikingClassifier(num_classes=4, weight_gain=3.0, **CASES[case]).double()
    x = (torch.rand(3, 14, *model.input_shape, dtype=torch.float64) < 0.3).double()
    logits = model.logits(model(x))
    rates = dict(model.firing_rates)
    grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
    expected = reference_logits(model, x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    assert all(0.0 < float(r) < 1.0 for r in rates.values()), rates        # the network is active
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    for grad, ref in zip(grads, expected_grads):
        scale = max(float(ref.abs().max()), 1e-12)
        torch.testing.assert_close(grad / scale, ref / scale, rtol=0, atol=1e-9)


def test_gradient_mode_reaches_every_layer():
    torch.manual_seed(0)
    args = dict(input_shape=(2, 8, 8), num_classes=3, conv_channels=[2], hidden=[5, 5], readout="spike_count")
    for mode in ("exodus", "slayer", "bptt"):
        model = SpikingClassifier(gradient=mode, **args)
        neurons = [layer["neuron"] for layer in model.layers.values()]
        assert len(neurons) == 4 and all(n.gradient == mode for n in neurons)


def test_model_builds_from_its_hparams():
    model = SpikingClassifier(input_shape=(12,), num_classes=3, hidden=[7, 5], tau_syn=3.0)
    clone = SpikingClassifier(**dict(model.hparams))
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in clone.state_dict().items()}


# ----------------------------------------------------------------------------- exodus-train

def tiny_config(tmp_path, checkpoints="checkpoints", **model):
    """default.yaml shrunk to a few steps per epoch, logging into tmp_path."""
    with open(DEFAULT) as handle:
        config = yaml.safe_load(handle)
    config["trainer"].update(max_epochs=3, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"] = [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",       # mid-epoch checkpoints
         "init_args": {"dirpath": str(tmp_path / checkpoints), "every_n_train_steps": 6, "save_top_k": -1,
                       "filename": "{step}"}},
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",       # end-of-epoch ones, like the configs
         "init_args": {"dirpath": str(tmp_path / checkpoints), "save_top_k": -1, "filename": "end-{epoch}"}}]
    config["data"]["init_args"].update(train_samples=64, val_samples=32, test_samples=32, batch_size=16,
                                       num_classes=3, neurons=12, time_steps=20)
    config["model"].update({"hidden": [16], **model})
    path = tmp_path / f"tiny_{checkpoints}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def read_metrics(save_dir):
    (path,) = glob.glob(os.path.join(save_dir, "**", "metrics.csv"), recursive=True)
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_fit_then_test_logs_everything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path)
    cli = run(["fit", "--config", config])
    rows = read_metrics(tmp_path / "runs")
    columns = set(rows[0])
    for name in ("train_loss_step", "train_loss_epoch", "train_acc", "val_loss", "val_acc", "rate/hidden0",
                 "grad_norm/hidden0", "grad_norm/readout", "step_time"):
        assert name in columns, (name, sorted(columns))
    epochs = [row for row in rows if row["val_acc"]]
    assert len(epochs) == 3
    steps = [float(row["step_time"]) for row in rows if row["step_time"]]
    assert len(steps) == 12 and all(0 < s < 60 for s in steps)
    rates = [float(row["rate/hidden0"]) for row in rows if row["rate/hidden0"]]
    assert all(0 <= r <= 1 for r in rates)
    # the logged firing rate is the mean spike count of hidden0 per neuron and step
    x, _ = next(iter(cli.datamodule.val_dataloader()))
    cli.model.eval()
    with torch.no_grad():
        cli.model(x)
        hidden = cli.model.layers["hidden0"]
        hidden["neuron"].reset_states()
        spikes = hidden["neuron"](hidden["synapse"](x))
    assert float(cli.model.firing_rates["hidden0"]) == pytest.approx(float(spikes.mean()))
    # the test subcommand restores a checkpoint and logs test_acc
    checkpoint = str(tmp_path / "checkpoints" / "end-epoch=2.ckpt")
    tested = run(["test", "--config", config, "--ckpt_path", checkpoint])
    assert 0.0 <= tested.trainer.callback_metrics["test_acc"] <= 1.0
    # and load_from_checkpoint gives back the trained weights
    restored = SpikingClassifier.load_from_checkpoint(str(tmp_path / "checkpoints" / "step=12.ckpt"))
    for key, value in cli.model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_training_learns_the_default_task_quickly(tmp_path, monkeypatch):
    """A shortened default run (3 classes, 192 samples, 10 epochs) gets well above chance (1/3)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, lr=0.02, hidden=[32])
    cli = run(["fit", "--config", config, "--trainer.max_epochs", "10", "--data.train_samples", "192",
               "--data.val_samples", "64", "--data.neurons", "20", "--data.time_steps", "30"])
    assert float(cli.trainer.callback_metrics["val_acc"]) > 0.6


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_from_mid_epoch_checkpoint_gives_identical_weights(tmp_path, monkeypatch):
    """3 epochs of 4 batches, checkpoints every 6 steps (step 6 is inside epoch 2) and at every epoch
    end. Resuming from step 6 or from the end of epoch 1 ends with exactly the weights of the
    uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path)
    full = run(["fit", "--config", config])
    final = {k: v.clone() for k, v in full.model.state_dict().items()}
    for i, name in enumerate(("step=6.ckpt", "end-epoch=0.ckpt")):
        middle = str(tmp_path / "checkpoints" / name)
        resumed = run(["fit", "--config", tiny_config(tmp_path, checkpoints=f"resumed{i}"), "--ckpt_path", middle])
        assert resumed.trainer.global_step == full.trainer.global_step == 12
        changed = False
        for key, value in resumed.model.state_dict().items():
            assert torch.equal(value, final[key]), (name, key)
            changed |= not torch.equal(value, torch.load(middle, weights_only=True)["state_dict"][key])
        assert changed                                                   # training went on after the checkpoint


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("distributed", [False, True], ids=["own sampler", "distributed sampler"])
def test_restored_loader_skips_the_trained_batches(num_workers, distributed):
    """What Lightning does on a restore: load_state_dict, iter() (before the epoch is set), set_epoch,
    then draw. The loader yields the batches of the saved epoch after the ones already trained on,
    with worker processes too (they draw indices as soon as the loader is iterated)."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from exodus.lightning.data import EpochShuffleSampler, ResumableLoader

    dataset = TensorDataset(torch.arange(24))

    def sampler():
        if distributed:
            return DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
        return EpochShuffleSampler(len(dataset), seed=3)

    def epoch_batches(epoch):
        reference = sampler()
        reference.set_epoch(epoch)
        return [b[0].tolist() for b in DataLoader(dataset, batch_size=3, sampler=reference)]

    loader = ResumableLoader(dataset, batch_size=3, sampler=sampler(), num_workers=num_workers,
                             persistent_workers=num_workers > 0)
    loader.load_state_dict({"epoch": 2, "batches": 1})
    iterator = iter(loader)
    loader.sampler.set_epoch(2)
    assert [b[0].tolist() for b in iterator] == epoch_batches(2)[1:]
    assert epoch_batches(2) != epoch_batches(0)
    loader.sampler.set_epoch(3)                       # the next epoch is whole again
    assert [b[0].tolist() for b in loader] == epoch_batches(3)


def test_optimizer_and_scheduler_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--config", tiny_config(tmp_path), "--trainer.max_epochs", "1", "--optimizer", "SGD",
               "--optimizer.lr", "0.3", "--optimizer.momentum", "0.5", "--lr_scheduler", "StepLR",
               "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.1"])
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03)          # one epoch of StepLR(gamma 0.1)
    default = build(["--config", tiny_config(tmp_path)]).model.configure_optimizers()
    assert isinstance(default, torch.optim.Adam) and default.defaults["lr"] == 0.005


def test_seed_everything_makes_the_model_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path)
    first, second = build(["--config", config]).model, build(["--config", config]).model
    other = build(["--config", config, "--seed_everything", "1"]).model
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert not torch.equal(first.layers["hidden0"]["synapse"].weight, other.layers["hidden0"]["synapse"].weight)


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS) if not n.startswith("rls_")))  # rls_*: exodus-rls
def test_every_config_builds_with_linked_shapes(name, tmp_path, monkeypatch):
    """Each experiments/configs/*.yaml parses; data shapes are linked into the model (dataset
    files are only needed once training starts)."""
    monkeypatch.chdir(tmp_path)
    cli = build(["--config", os.path.join(CONFIGS, name)])
    assert cli.model.input_shape == tuple(cli.datamodule.input_shape)
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.trainer.logger is not None and cli.trainer.checkpoint_callback is not None


def test_default_config_is_the_spike_timing_config():
    with open(DEFAULT) as a, open(os.path.join(CONFIGS, "spike_timing.yaml")) as b:
        default, timing = yaml.safe_load(a), yaml.safe_load(b)
    for config in (default, timing):
        config["trainer"]["logger"]["init_args"].pop("name")
    assert default == timing


# ----------------------------------------------------------------------------- bad configs

def exit_message(args) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    return str(info.value.code)


def test_unknown_task_lists_the_choices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = exit_message(["fit", "--config", DEFAULT, "--data", "Randman"])
    assert "unknown task" in message and "Randman" in message and "SpikeTimingData" in message
    broken = tmp_path / "broken.yaml"
    broken.write_text(open(DEFAULT).read().replace("exodus.lightning.tasks.SpikeTimingData", "tasks.Nope"))
    message = exit_message(["fit", "--config", str(broken)])
    assert "tasks.Nope" in message and str(broken) in message and "TemporalOrderData" in message


def test_missing_dataset_files_name_the_files_and_data_root(tmp_path, monkeypatch):
    pytest.importorskip("exodus.lightning.datasets")
    monkeypatch.chdir(tmp_path)
    message = exit_message(["fit", "--config", os.path.join(CONFIGS, "shd.yaml"), "--data.root", str(tmp_path)])
    assert "missing" in message and "data.root" in message and str(tmp_path) in message


def test_recurrent_with_conv_front_end_says_which_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = exit_message(["fit", "--config", os.path.join(CONFIGS, "nmnist.yaml"), "--model.recurrent", "true"])
    assert "model.recurrent" in message and "model.conv_channels" in message


def test_conv_front_end_on_vector_data_says_which_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = exit_message(["fit", "--config", DEFAULT, "--model.conv_channels", "[4]"])
    assert "model.conv_channels" in message and "(40,)" in message


def test_bad_task_argument_names_the_data_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = exit_message(["fit", "--config", DEFAULT, "--data.spike_window", "500"])
    assert "data.init_args" in message and "spike_window" in message


class WrongShapeData(SpikeDataModule):
    """Declares 5 features per step but yields 6 (a DataModule bug the model must catch)."""

    input_shape = (5,)
    num_classes = 2
    time_steps = 4

    def setup(self, stage=None):
        self.train_set = self.val_set = self.test_set = torch.utils.data.TensorDataset(
            torch.zeros(8, 4, 6), torch.zeros(8, dtype=torch.long))


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_batches_that_do_not_fit_the_model_say_which_key(tmp_path):
    data = WrongShapeData(batch_size=4)
    model = SpikingClassifier(input_shape=data.input_shape, num_classes=data.num_classes, hidden=[3])
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.input_shape \(5,\)"):
        trainer.fit(model, data)
    other = SpikingClassifier(input_shape=(6,), num_classes=2, hidden=[3])
    with pytest.raises(ConfigError, match=r"data.input_shape is \(5,\) but model.input_shape is \(6,\)"):
        trainer.fit(other, data)


@pytest.mark.parametrize("args, message", [
    (dict(neuron="adex"), "model.neuron"),
    (dict(readout="last_spike"), "model.readout"),
    (dict(gradient="eprop"), "model.gradient"),
    (dict(surrogate="Sigmoid"), "model.surrogate.*FastSigmoid"),
    (dict(surrogate_args={"slope": 2.0}), "model.surrogate_args"),
    (dict(neuron="iaf", train_tau=True), "model.train_tau"),
    (dict(readout_steps=0), "model.readout_steps"),
    (dict(input_shape=(2, 4, 4), conv_channels=[2, 2, 2], conv_pool=2), "model.conv_pool"),
    (dict(input_shape=(2, 8, 8), conv_channels=[2], recurrent=True), "model.recurrent"),
    (dict(neuron="alif", tau_syn=4.0), "model.tau_syn"),
    (dict(neuron="lif", train_adaptation=True), "model.train_adaptation"),
    (dict(neuron="lif", adapt_b_range=[0, 2]), "model.adapt_b_range"),
])
def test_bad_model_arguments_say_what_to_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        SpikingClassifier(**{"input_shape": (8,), "num_classes": 3, **args})


def test_readout_window_longer_than_data_and_bad_labels():
    model = SpikingClassifier(input_shape=(4,), num_classes=3, hidden=[3], readout_steps=10)
    with pytest.raises(ConfigError, match="model.readout_steps"):
        model(torch.zeros(2, 6, 4))
    model = SpikingClassifier(input_shape=(4,), num_classes=3, hidden=[3])
    with pytest.raises(ConfigError, match="num_classes"):
        model.training_step((torch.zeros(2, 6, 4), torch.tensor([0, 3])), 0)
    with pytest.warns(UserWarning, match="self.log"):                   # no trainer attached: logging is skipped
        loss = model.training_step((torch.zeros(2, 6, 4), torch.tensor([0, 2])), 0)
    assert math.isfinite(float(loss.detach()))
