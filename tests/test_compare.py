"""exodus-compare: a tiny comparison run (exodus vs bptt, one seed, one short epoch).

Checks the output files, the summary.json structure, that both modes start from the same
weights and see the same data (so EXODUS, being BPTT's gradient, trains to the same curve up to
rounding), and that EXODUS' gradient cosine vs BPTT is >= 0.9999 on every layer.
"""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

pytest.importorskip("pytorch_lightning")

from exodus.lightning import compare as C  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "default.yaml")

# Small but non-trivial: 4 training steps of batch 32, hidden layer of 32 LIF neurons, 60 steps.
TINY = ["--trainer.max_epochs", "1", "--data.init_args.train_samples", "128", "--data.init_args.val_samples", "64",
        "--data.init_args.batch_size", "32", "--model.hidden", "[32]", "--num_threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The configs set num_threads (torch.set_num_threads): give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = tmp_path_factory.mktemp("compare")
    C.main(["--config", CONFIG, "--gradients", "exodus", "bptt", "--seeds", "1", "--output", str(output),
            "--no-progress", *TINY])
    with open(output / "summary.json") as handle:
        return output, json.load(handle)


def test_output_files(run):
    output, _ = run
    for name in ("summary.json", "summary.md", "curves.csv", "val_accuracy.png", "val_loss.png", "epoch_time.png",
                 "grad_cosine.png"):
        path = output / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in ("val_accuracy.png", "val_loss.png", "epoch_time.png", "grad_cosine.png"):
        with open(output / name, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_summary_structure(run):
    _, summary = run
    assert summary["gradients"] == ["exodus", "bptt"] and summary["seeds"] == [0]
    assert [(r["gradient"], r["seed"]) for r in summary["runs"]] == [("exodus", 0), ("bptt", 0)]
    for r in summary["runs"]:
        assert r["epochs"] == 1
        assert 0.0 <= r["best_val_acc"] <= 1.0 and r["final_val_acc"] <= r["best_val_acc"]
        assert r["epoch_time_s"] > 0 and r["step_time_s"] > 0 and r["peak_memory_mb"] > 0
        for field in ("grad_cosine_vs_bptt", "grad_norm_ratio_vs_bptt", "grad_rel_error_vs_bptt"):
            assert set(r[field]) == {"init", "final"}
            for when in ("init", "final"):
                assert set(r[field][when]) == {"hidden0", "readout"}, (field, when)
                assert all(math.isfinite(v) for v in r[field][when].values())
    assert summary["exodus_matches_bptt"] is True


def test_exodus_gradient_is_bptt(run):
    _, summary = run
    exodus = next(r for r in summary["runs"] if r["gradient"] == "exodus")
    for when in ("init", "final"):
        for layer, cosine in exodus["grad_cosine_vs_bptt"][when].items():
            assert cosine >= 0.9999, (when, layer, cosine)
            assert abs(exodus["grad_norm_ratio_vs_bptt"][when][layer] - 1) < 1e-4, (when, layer)
            assert exodus["grad_rel_error_vs_bptt"][when][layer] < 1e-4, (when, layer)


def test_identical_start_and_data(run):
    """Same initial weights and batches: the exodus and bptt runs follow the same curve (up to float32
    rounding of the gradient), and their initial gradient agreement is measured from the same point."""
    output, summary = run
    with open(output / "curves.csv") as handle:
        rows = {row["gradient"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"exodus", "bptt"}
    for key in ("train_loss", "val_loss"):
        assert float(rows["exodus"][key]) == pytest.approx(float(rows["bptt"][key]), rel=1e-4), key
    by_mode = {r["gradient"]: r for r in summary["runs"]}
    assert by_mode["exodus"]["final_val_acc"] == pytest.approx(by_mode["bptt"]["final_val_acc"], abs=1 / 64 + 1e-9)
    # bptt against itself, same weights and batches: bitwise the same gradient
    assert all(v == 0 for v in by_mode["bptt"]["grad_rel_error_vs_bptt"]["init"].values())


def test_markdown_table(run):
    output, summary = run
    text = (output / "summary.md").read_text()
    assert "| exodus |" in text and "| bptt |" in text and "hidden0" in text
    assert text == C.summary_markdown(summary)


def test_gradient_agreement_detects_differences():
    """The agreement measure itself: identical, scaled, orthogonal and zero gradients."""
    g = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = C.gradient_agreement({"a": g, "b": 2 * g, "c": torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64),
                                   "d": torch.zeros(3, dtype=torch.float64)},
                                  {"a": g, "b": g, "c": g, "d": torch.zeros(3, dtype=torch.float64)})
    assert result["cosine"]["a"] == pytest.approx(1.0) and result["rel_error"]["a"] == 0
    assert result["cosine"]["b"] == pytest.approx(1.0) and result["norm_ratio"]["b"] == pytest.approx(2.0)
    assert result["rel_error"]["b"] == pytest.approx(1.0)
    assert result["cosine"]["c"] == pytest.approx(0.0, abs=1e-12)
    assert result["cosine"]["d"] == 1.0 and result["norm_ratio"]["d"] == 1.0


def test_slayer_gradient_differs_from_bptt():
    """SLAYER drops the reset path: its hidden-layer gradient must not pass as BPTT's
    (otherwise the cosine measurement could not tell the modes apart)."""
    from exodus.lightning.cli import build

    cli = build(["--config", CONFIG, *TINY, "--model.gradient", "slayer"])
    cli.datamodule.setup("fit")
    batches = [batch for _, batch in zip(range(1), cli.datamodule.val_dataloader())]
    device = torch.device("cpu")
    agreement = C.gradient_agreement(C.layer_gradients(cli.model, batches, device),
                                     C.layer_gradients(C._bptt_twin(cli.model), batches, device))
    assert agreement["rel_error"]["hidden0"] > 1e-2
    assert agreement["rel_error"]["readout"] == 0       # readout is an ExpLeak: no spiking gradient involved


def test_memory_tracker_sees_saved_activations():
    """The CPU peak-memory measure grows with what autograd keeps: a longer sequence keeps more."""
    from exodus.lightning.model import SpikingClassifier

    model = SpikingClassifier(input_shape=(8,), num_classes=3, hidden=(16,), gradient="bptt")
    y = torch.tensor([0, 1])
    short, _ = C.peak_step_memory(model, (torch.rand(2, 20, 8), y), torch.device("cpu"))
    long, _ = C.peak_step_memory(model, (torch.rand(2, 200, 8), y), torch.device("cpu"))
    assert short > 0 and long > 5 * short


def test_memory_tracker_does_not_count_views_of_existing_storage():
    """A slice of the input or a transposed weight allocates nothing; a new result does."""
    x, weight = torch.rand(4, 1000, 8), torch.rand(3, 8)
    tracker = C._AllocationTracker()
    with tracker:
        window = x[:, 10:20]
        weight.t()
        x.view(4, 8000)
        out = window + 1.0
    assert tracker.peak == out.untyped_storage().nbytes()


def test_online_step_memory_is_flat_in_sequence_length():
    """gradient online: the measured training step (chunk by chunk) keeps nothing per chunk; the exodus
    step of the same network grows with T."""
    from exodus.lightning.model import SpikingClassifier

    common = dict(input_shape=(8,), num_classes=3, hidden=[16], loss="per_step", linear_blocks=True,
                  surrogate_band=0.5, readout="mean_membrane")
    y = torch.tensor([0, 1])
    peaks = {}
    for gradient in ("online", "exodus"):
        model = SpikingClassifier(gradient=gradient, online_chunk=20, **common)
        for steps in (100, 800):
            x = (torch.rand(2, steps, 8) < 0.2).float()
            peaks[gradient, steps] = C.peak_step_memory(model, (x, y), torch.device("cpu"))[0]
    assert peaks["online", 800] == pytest.approx(peaks["online", 100], rel=0.01)
    assert peaks["exodus", 800] > 5 * peaks["exodus", 100]


def test_recurrent_adaptive_config_exodus_matches_bptt(tmp_path):
    """The store-recall config (recurrent ALIF, weight_rec among hidden0's parameters): EXODUS'
    gradient is BPTT's on every layer, at the initial and the final weights."""
    config = os.path.join(ROOT, "experiments", "configs", "store_recall.yaml")
    tiny = ["--trainer.max_epochs", "1", "--data.init_args.train_samples", "64", "--data.init_args.val_samples", "64",
            "--data.init_args.batch_size", "32", "--model.hidden", "[16]", "--num_threads", "1"]
    C.main(["--config", config, "--gradients", "exodus", "bptt", "--seeds", "1", "--output", str(tmp_path),
            "--no-progress", *tiny])
    with open(tmp_path / "summary.json") as handle:
        summary = json.load(handle)
    assert summary["exodus_matches_bptt"] is True
    exodus = next(r for r in summary["runs"] if r["gradient"] == "exodus")
    for when in ("init", "final"):
        assert set(exodus["grad_rel_error_vs_bptt"][when]) == {"hidden0", "readout"}
        assert all(e < 1e-4 for e in exodus["grad_rel_error_vs_bptt"][when].values()), when
