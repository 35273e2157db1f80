"""The exodus-train configs run on Lightning's DDP: 2 CPU processes (gloo), a few steps.

A script builds the run from ``experiments/configs/default.yaml`` plus
``--trainer.strategy ddp --trainer.devices 2`` (exactly what ``exodus-train fit`` parses), trains
3 steps and every rank writes its final weights and the sample indices it trained on. Both ranks
must end with identical weights, although they saw different samples (so the equality comes from
DDP's gradient all-reduce, not from identical inputs), and the weights must have moved.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("pytorch_lightning")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "default.yaml")
STEPS = 3

SCRIPT = textwrap.dedent('''
    import os, sys
    import torch
    import pytorch_lightning as pl
    from torch.utils.data import TensorDataset
    from exodus.lightning.cli import build

    out = sys.argv[1]
    cli = build(sys.argv[2:])


    class IndexedSamples(TensorDataset):
        """The DataModule's samples, each labelled with its index (to record what a rank trained on)."""
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x, y, torch.tensor(i)


    class Record(pl.Callback):
        def __init__(self):
            self.seen = []
        def on_fit_start(self, trainer, module):
            torch.save(module.state_dict(), os.path.join(out, f"init{trainer.global_rank}.pt"))
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen += batch[2].tolist()
        def on_fit_end(self, trainer, module):
            torch.save({"state": module.state_dict(), "seen": self.seen, "world_size": trainer.world_size,
                        "strategy": type(trainer.strategy).__name__,
                        "backend": torch.distributed.get_backend()},
                       os.path.join(out, f"rank{trainer.global_rank}.pt"))


    data, model = cli.datamodule, cli.model
    setup = data.setup
    def setup_with_indices(stage=None):
        setup(stage)
        data.train_set = IndexedSamples(*data.train_set.tensors)
    data.setup = setup_with_indices
    step = model.training_step
    model.training_step = lambda batch, batch_idx: step(batch[:2], batch_idx)
    cli.trainer.callbacks.append(Record())
    cli.trainer.fit(model, datamodule=data)
''')


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    args = ["--config", CONFIG, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
            "--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            "--data.init_args.train_samples", "256", "--data.init_args.batch_size", "16", "--model.hidden", "[32]"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)        # Lightning picks a free port
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    initial = [torch.load(tmp_path / f"init{r}.pt") for r in (0, 1)]
    for r, saved in enumerate(ranks):
        assert saved["world_size"] == 2 and saved["strategy"] == "DDPStrategy" and saved["backend"] == "gloo", r
        assert len(saved["seen"]) == STEPS * 16, r
    # the ranks trained on different samples ...
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    # ... from the same start (DDP broadcasts rank 0's weights) ...
    for name, value in initial[0].items():
        assert torch.equal(value, initial[1][name]), name
    # ... and end with bitwise identical weights, which have moved.
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    assert state0.keys() == state1.keys()
    for name in state0:
        assert torch.equal(state0[name], state1[name]), f"{name} differs between the ranks"
    moved = [name for name in state0 if name.endswith("weight") and not torch.equal(state0[name], initial[0][name])]
    assert moved == ["layers.hidden0.synapse.weight", "layers.readout.synapse.weight"], moved


def test_ddp_resume_from_mid_epoch_checkpoint_gives_identical_weights(tmp_path):
    """exodus-train fit on 2 DDP processes, 3 epochs of 2 steps per rank, checkpoints every 3 steps
    (step 3 lies inside epoch 2). Resuming from step 3 ends with the weights of the uninterrupted run:
    the per-rank batches already trained on are skipped, not replayed."""
    import yaml

    with open(CONFIG) as handle:
        config = yaml.safe_load(handle)
    config["trainer"].update(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 3,
                                                       "save_top_k": -1, "filename": "{step}"}}])
    config["data"]["init_args"].update(train_samples=64, val_samples=16, test_samples=16, batch_size=16,
                                       num_classes=3, neurons=12, time_steps=20)
    config["model"].update(hidden=[16])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)

    def fit(*extra):
        command = [sys.executable, "-m", "exodus.lightning.cli", "fit", "--config", str(path), "--trainer.strategy",
                   "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", *extra]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def weights(name):
        return torch.load(tmp_path / "ckpt" / name, weights_only=False)["state_dict"]

    fit()
    full, middle = weights("step=6.ckpt"), weights("step=3.ckpt")
    (tmp_path / "ckpt" / "step=6.ckpt").unlink()
    fit("--ckpt_path", str(tmp_path / "ckpt" / "step=3.ckpt"))
    resumed = weights("step=6.ckpt")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), f"{name} differs after resuming"
    assert any(not torch.equal(full[name], middle[name]) for name in full)  # training went on after step 3
