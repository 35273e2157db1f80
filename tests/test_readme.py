"""README.md stays true: its quickstart runs, and its two commands are the ones CI and users run."""
from __future__ import annotations

import os
import re

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def block_after(marker: str, language: str = "bash") -> str:
    match = re.search(re.escape(marker) + r"\s*```" + language + r"\n(.*?)```", README, re.S)
    assert match, f"README.md has no ```{language} block after {marker!r}"
    return match.group(1).strip()


def test_quickstart_runs():
    code = block_after("## Quickstart", "python")
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    out, spikes, v = namespace["out"], namespace["spikes"], namespace["v"]
    assert out.shape == (32, 500, 10) and spikes.shape == v.shape == (32, 500, 100)
    lif = namespace["net"][1]
    assert lif.tau_mem.grad is not None and torch.isfinite(lif.tau_mem.grad).all()  # train_tau=True reached


def test_two_commands():
    train = block_after("<!-- train-command -->")
    tests = block_after("<!-- test-command -->")
    assert "pip install torch==2.13.0" in train and "exodus-train fit --config experiments/configs/default.yaml" in train
    assert "pip install torch==2.13.0" in tests and tests.rstrip().endswith("pytest -q")
    assert os.path.exists(os.path.join(ROOT, "experiments", "configs", "default.yaml"))
