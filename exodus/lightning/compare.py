"""``exodus-compare``: train one config under several gradient modes from identical starts.

    exodus-compare --config experiments/configs/default.yaml --gradients exodus slayer bptt --seeds 3 \\
                   --output experiments/results/spike_timing [--trainer.max_epochs 10 ...]

Any argument exodus-compare does not know (``--trainer.*``, ``--model.*``, ``--data.*``,
``--optimizer ...``) is passed on to the ``exodus-train`` parser, so a run is the config plus
those overrides, exactly as ``exodus-train fit`` would build it.

For every seed s (``seed_everything`` = first seed + i):

* the model is built once and its initial ``state_dict`` is loaded into the model of every
  gradient mode (identical initial weights; the mode is only ``model.gradient``);
* the training order is the DataModule's (``data.seed``, epoch) shuffle, the same for every mode
  (``--reseed-data`` also sets ``data.seed`` = s, which for the generated tasks changes the data);
* gradients w.r.t. every layer's parameters are measured on the same fixed validation batches,
  at the initial weights and at each mode's final weights, with the mode's own gradient and with
  ``bptt`` on the same weights: cosine, norm ratio and relative error per layer.

Outputs in ``--output``: ``summary.json`` (one entry per (gradient, seed)), ``summary.md``
(mean ± std over seeds), ``curves.csv`` (per epoch), and ``val_accuracy.png``, ``val_loss.png``,
``epoch_time.png``, ``grad_cosine.png``. What each field measures: ``MEASUREMENTS`` below and
docs/comparison.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
import weakref
from typing import Iterable, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..functional import LINEAR_GRADIENTS
from ..backends import memory
from .cli import build

GRADIENTS = (*LINEAR_GRADIENTS, "online")

__all__ = ["main", "compare", "layer_gradients", "gradient_agreement", "peak_step_memory", "fastest_step_time",
           "MEASUREMENTS"]

EXODUS_MIN_COSINE = 0.9999

MEASUREMENTS = {
    "best_val_acc": "highest validation accuracy over the epochs",
    "final_val_acc": "validation accuracy after the last epoch",
    "epoch_time_s": "median over epochs of the wall time of one training epoch (data loading, forward, backward, "
                    "optimizer step; validation excluded)",
    "step_time_s": "fastest of 5 forward + backward passes of the loss on the first training batch, from the "
                   "initial weights (no optimizer step; the minimum is robust to other load on the machine); "
                   "gradient online: the chunked forward + backward passes of a training step",
    "peak_memory_mb": "peak bytes of the tensors allocated during one training step (forward + backward of the "
                      "loss on the first training batch, from the initial weights; gradient online: chunk by "
                      "chunk, as in training), parameters and input excluded. "
                      "CPU: tracked per tensor storage through a TorchDispatchMode (every allocation made by a "
                      "torch op, custom exodus ops included; memory a kernel allocates internally outside torch is "
                      "not seen). CUDA: torch.cuda.max_memory_allocated minus the allocation before the step.",
    "grad_cosine_vs_bptt": "per layer (all parameters of the layer, flattened): cosine between the gradient of the "
                           "loss summed over the fixed validation batches under this mode (gradient online: the "
                           "chunked one it trains with) and under bptt (whole sequence), from the same weights; "
                           "'init' = the shared initial weights, 'final' = this run's final weights",
    "grad_norm_ratio_vs_bptt": "per layer: |g_mode| / |g_bptt| on the same batches and weights",
    "grad_rel_error_vs_bptt": "per layer: |g_mode - g_bptt| / |g_bptt|",
}

# Trainer settings exodus-compare owns (the rest comes from the config).
_TRAINER_OWNED = ("logger", "callbacks", "enable_checkpointing", "enable_progress_bar", "enable_model_summary",
                  "num_sanity_val_steps", "default_root_dir")


# ----------------------------------------------------------------------------- measurements

def _layer_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by layer (``model.layers`` entries, e.g. hidden0, readout)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return {name: [p] for name, p in model.named_parameters() if p.requires_grad}
    grouped = {name: [p for p in layer.parameters() if p.requires_grad] for name, layer in layers.items()}
    return {name: params for name, params in grouped.items() if params}


def training_backward(model: nn.Module, batch) -> None:
    """The backward a training step of ``model`` runs on ``batch`` (no optimizer step): the loss's backward,
    or for gradient "online" the chunked backwards of ``online_backward``. Accumulates into .grad."""
    if getattr(model, "hparams", {}).get("gradient") == "online":
        model.online_backward(batch)
    else:
        model.loss(batch).backward()


def layer_gradients(model: nn.Module, batches: Sequence, device: torch.device) -> dict[str, Tensor]:
    """Gradient of the loss summed over ``batches`` w.r.t. each layer's parameters, flattened (float64):
    the gradient the model trains with (gradient "online": the chunked one of ``online_backward``).
    Leaves the model's .grad fields zeroed."""
    model.to(device)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            training_backward(model, (x.to(device), y.to(device)))
    grads = {}
    for name, params in _layer_parameters(model).items():
        grads[name] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten()
                                 for p in params]).double().cpu()
    model.zero_grad(set_to_none=True)
    return grads


def gradient_agreement(grads: dict[str, Tensor], reference: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per layer: cosine, norm ratio and relative error of ``grads`` against ``reference``.
    Two zero gradients count as identical (cosine 1, ratio 1, error 0)."""
    result = {"cosine": {}, "norm_ratio": {}, "rel_error": {}}
    for name, ref in reference.items():
        g = grads[name]
        g_norm, ref_norm = float(g.norm()), float(ref.norm())
        if ref_norm == 0.0:
            same = g_norm == 0.0
            cosine, ratio, error = (1.0, 1.0, 0.0) if same else (0.0, math.inf, math.inf)
        else:
            cosine = float(g @ ref) / (g_norm * ref_norm) if g_norm > 0 else 0.0
            ratio, error = g_norm / ref_norm, float((g - ref).norm()) / ref_norm
        result["cosine"][name], result["norm_ratio"][name], result["rel_error"][name] = cosine, ratio, error
    return result


class _AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created by torch ops inside the context."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.current -= size
        self._live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # An output on an argument's storage (a view, an in-place or out= result) allocated nothing: without
        # this, a slice of the input or a transposed weight would count the whole pre-existing storage.
        given = {id(a.untyped_storage()) for a in tree_flatten((args, kwargs))[0]
                 if isinstance(a, Tensor) and a.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = id(storage)
                if key in self._live or key in given:
                    continue
                size = storage.nbytes()
                self._live.add(key)
                self.current += size
                weakref.finalize(storage, self._freed, key, size)
                self.peak = max(self.peak, self.current)
        return out


def peak_step_memory(model: nn.Module, batch, device: torch.device) -> tuple[float, str]:
    """Peak MB of the tensors allocated by one forward + backward (``training_backward``) on ``batch``
    (see MEASUREMENTS["peak_memory_mb"]) and the name of the method."""
    model.to(device)
    model.zero_grad(set_to_none=True)
    x, y = batch[0].to(device), batch[1].to(device)
    with torch.enable_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            training_backward(model, (x, y))
            torch.cuda.synchronize(device)
            peak, method = torch.cuda.max_memory_allocated(device) - before, "cuda_max_memory_allocated"
        else:
            tracker = _AllocationTracker()
            with tracker:
                training_backward(model, (x, y))
            peak, method = tracker.peak, "dispatch_allocation_tracker"
    model.zero_grad(set_to_none=True)
    return peak / 2**20, method


def fastest_step_time(model: nn.Module, batch, device: torch.device, repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` forward + backward passes (``training_backward``) on ``batch``
    (no optimizer step; the minimum is robust to other load on the machine)."""
    model.to(device)
    x, y = batch[0].to(device), batch[1].to(device)
    best = math.inf
    with torch.enable_grad():
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            training_backward(model, (x, y))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return best


class _EpochRecorder(pl.Callback):
    """Per training epoch: train loss, val loss / accuracy, training-loop wall time; drives the progress bar."""

    def __init__(self, progress=None, label: str = ""):
        self.rows: list[dict] = []
        self.progress = progress
        self.label = label
        self._start: Optional[float] = None
        self._train_time: Optional[float] = None
        self._validated = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._validated = False
        self._train_time = None
        self._start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._start is not None and self._train_time is None:
            self._train_time = time.perf_counter() - self._start
            self._validated = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._train_time is None:
            self._train_time = time.perf_counter() - self._start
        metrics = trainer.callback_metrics

        def value(key: str) -> float:
            return float(metrics[key]) if key in metrics else math.nan

        row = {"epoch": trainer.current_epoch + 1, "train_loss": value("train_loss_epoch"),
               "val_loss": value("val_loss") if self._validated else math.nan,
               "val_acc": value("val_acc") if self._validated else math.nan,
               "train_time_s": self._train_time}
        self.rows.append(row)
        if self.progress is not None:
            self.progress.set_postfix_str(f"{self.label} epoch {row['epoch']} val_acc {row['val_acc']:.3f}")
            self.progress.update(1)


# ----------------------------------------------------------------------------- one comparison

@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's per-run info messages and known harmless warnings (restored on exit)."""
    loggers = [logging.getLogger(name) for name in
               ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        for pattern in (r".*does not have many workers.*", r".*number of training batches.*",
                        r".*configure_optimizers` will be overridden.*", r".*litlogger.*", r".*LitLogger.*",
                        r".*LightningCLI's args parameter is intended.*"):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _check_single_device(cli):
    """The trainer's ``devices`` setting; SystemExit if the config asks for several processes."""
    settings = cli.config_init["trainer"]
    strategy, devices, nodes = settings.get("strategy"), settings.get("devices"), settings.get("num_nodes")
    if (isinstance(strategy, str) and strategy.startswith("ddp")) or devices not in (1, "1", [0], "auto", None) \
            or (nodes or 1) != 1:
        raise SystemExit(f"exodus-compare runs every training in this one process (one device): got "
                         f"trainer.strategy={strategy}, devices={devices}, num_nodes={nodes}. "
                         f"Use exodus-train for distributed runs.")
    return devices


def _trainer(cli, recorder: _EpochRecorder) -> pl.Trainer:
    """The config's Trainer settings, with exodus-compare's logging / callbacks / progress choices."""
    settings = dict(cli.config_init["trainer"].items())
    devices = _check_single_device(cli)
    for key in (*_TRAINER_OWNED, "devices"):
        settings.pop(key, None)
    return pl.Trainer(**settings, devices=1 if devices in ("auto", None) else devices, logger=False,
                      callbacks=[recorder], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)


def _measurement_device(cli) -> torch.device:
    accelerator = str(cli.config["trainer"].get("accelerator", "cpu"))
    if torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto"):
        return torch.device("cuda")
    return torch.device("cpu")


def _bptt_twin(model: nn.Module) -> nn.Module:
    """The same architecture with gradient="bptt", holding a copy of ``model``'s weights."""
    twin = type(model)(**{**dict(model.hparams), "gradient": "bptt"})
    twin.load_state_dict(model.state_dict())
    return twin


def compare(config: str, gradients: Sequence[str], seeds: Sequence[int], output: str,
            overrides: Sequence[str] = (), grad_batches: int = 2, reseed_data: bool = False,
            progress: bool = True) -> dict:
    """Run the comparison and write the outputs (see the module docstring). Returns the summary dict."""
    unknown = [g for g in gradients if g not in GRADIENTS]
    if unknown or not gradients:
        raise SystemExit(f"--gradients: unknown {unknown}; choose from {GRADIENTS}")
    if len(set(gradients)) != len(gradients):
        raise SystemExit(f"--gradients lists a mode twice: {list(gradients)}")
    if grad_batches < 1:
        raise SystemExit(f"--grad-batches must be >= 1, got {grad_batches}")
    os.makedirs(output, exist_ok=True)
    with _quiet_lightning():
        summary, curves = _run_all(config, gradients, seeds, overrides, grad_batches, reseed_data, progress)
    _write_outputs(output, summary, curves)
    return summary


def _run_all(config, gradients, seeds, overrides, grad_batches, reseed_data, progress) -> tuple[dict, list[dict]]:
    """Train every (seed, gradient) and measure; returns the summary dict and the per-epoch rows."""
    from tqdm.auto import tqdm

    def cli_for(gradient: str, seed: int):
        args = ["--config", config, *overrides, "--seed_everything", str(seed), "--model.gradient", gradient]
        if {"sparse", "online"} & set(gradients):  # one architecture for all modes (LinearLIF blocks): same starts
            args += ["--model.linear_blocks", "true"]
        if reseed_data:
            args += ["--data.init_args.seed", str(seed)]
        return build(args)

    probe = cli_for(gradients[0], seeds[0])
    _check_single_device(probe)
    max_epochs = probe.config["trainer"].get("max_epochs")
    total = len(seeds) * len(gradients) * (max_epochs if max_epochs and max_epochs > 0 else 1)
    bar = tqdm(total=total, desc="exodus-compare", unit="epoch", disable=not progress, dynamic_ncols=True)
    device = _measurement_device(probe)
    runs, curves = [], []
    try:
        for seed in seeds:
            base = cli_for(gradients[0], seed)
            initial = copy.deepcopy(base.model.state_dict())
            base.datamodule.setup("fit")
            fixed = [batch for _, batch in zip(range(grad_batches), base.datamodule.val_dataloader())]
            first_train = next(iter(base.datamodule.train_dataloader()))
            bptt_init = layer_gradients(_bptt_twin(base.model), fixed, device)
            for gradient in gradients:
                cli = cli_for(gradient, seed)
                model = cli.model
                model.load_state_dict(initial)
                init_agreement = gradient_agreement(layer_gradients(model, fixed, device), bptt_init)
                memory_mb, memory_method = peak_step_memory(model, first_train, device)
                step_time = fastest_step_time(model, first_train, device)
                model.load_state_dict(initial)      # nothing above changes weights; make it explicit
                model.cpu()
                recorder = _EpochRecorder(bar, f"{gradient} seed {seed}")
                trainer = _trainer(cli, recorder)
                trainer.fit(model, datamodule=cli.datamodule)
                final_agreement = gradient_agreement(layer_gradients(model, fixed, device),
                                                     layer_gradients(_bptt_twin(model), fixed, device))
                accuracies = [r["val_acc"] for r in recorder.rows if not math.isnan(r["val_acc"])]
                times = [r["train_time_s"] for r in recorder.rows]
                runs.append({
                    "gradient": gradient, "seed": seed, "epochs": len(recorder.rows),
                    "best_val_acc": max(accuracies) if accuracies else None,
                    "final_val_acc": accuracies[-1] if accuracies else None,
                    "epoch_time_s": statistics.median(times) if times else None,
                    "step_time_s": step_time,
                    "peak_memory_mb": memory_mb,
                    "grad_cosine_vs_bptt": {"init": init_agreement["cosine"], "final": final_agreement["cosine"]},
                    "grad_norm_ratio_vs_bptt": {"init": init_agreement["norm_ratio"],
                                                "final": final_agreement["norm_ratio"]},
                    "grad_rel_error_vs_bptt": {"init": init_agreement["rel_error"],
                                               "final": final_agreement["rel_error"]},
                })
                curves += [{"gradient": gradient, "seed": seed, **row} for row in recorder.rows]
    finally:
        bar.close()

    summary = {
        "config": config, "overrides": list(overrides), "gradients": list(gradients), "seeds": list(seeds),
        "reseed_data": reseed_data, "grad_batches": grad_batches, "batch_size": getattr(probe.datamodule, "batch_size", None),
        "max_epochs": max_epochs, "device": str(device), "peak_memory_method": memory_method,
        "environment": {"torch": torch.__version__, "pytorch_lightning": pl.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "measurements": MEASUREMENTS,
        "runs": runs,
    }
    summary["exodus_matches_bptt"] = exodus_matches_bptt(runs)
    return summary, curves


def exodus_matches_bptt(runs: Iterable[dict]) -> Optional[bool]:
    """True if every EXODUS run's per-layer cosine vs BPTT (init and final) is >= EXODUS_MIN_COSINE;
    None if no EXODUS run was made."""
    values = [c for run in runs if run["gradient"] == "exodus"
              for when in run["grad_cosine_vs_bptt"].values() for c in when.values()]
    return None if not values else all(c >= EXODUS_MIN_COSINE for c in values)


# ----------------------------------------------------------------------------- outputs

def _mean_std(values: Sequence[Optional[float]], digits: int, scale: float = 1.0) -> str:
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if abs(mean) >= 1e4 or std >= 1e4:     # e.g. an exploding gradient's norm ratio: no 20-digit fixed point
        return f"{mean:.2e} ± {std:.1e}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cosine_text(values: Sequence[float]) -> str:
    """Mean ± std of cosines, with enough digits to show how far from 1 they are."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 4 if mean < 0.999 else 7
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _scientific(values: Sequence[float]) -> str:
    """Largest value over seeds, e.g. "max 3.1e-08" (0 printed as 0)."""
    largest = max(values)
    return "0" if largest == 0 else f"max {largest:.1e}"


def summary_markdown(summary: dict) -> str:
    runs = summary["runs"]
    modes = summary["gradients"]
    seeds = summary["seeds"]
    lines = [f"Config `{summary['config']}`" + (f" with `{' '.join(summary['overrides'])}`" if summary["overrides"]
                                                else ""),
             f"; {len(seeds)} seed(s) {seeds}, {summary['max_epochs']} epochs, device {summary['device']}. "
             f"Mean ± std over seeds.", ""]
    lines[0] += lines.pop(1)
    lines += ["| gradient | best val acc (%) | final val acc (%) | epoch time (s) | step time (ms) "
              "| peak step memory (MB) |",
              "|---|---|---|---|---|---|"]
    for mode in modes:
        r = [run for run in runs if run["gradient"] == mode]
        lines.append(f"| {mode} | {_mean_std([x['best_val_acc'] for x in r], 1, 100)} | "
                     f"{_mean_std([x['final_val_acc'] for x in r], 1, 100)} | "
                     f"{_mean_std([x['epoch_time_s'] for x in r], 2)} | "
                     f"{_mean_std([x['step_time_s'] for x in r], 1, 1000)} | "
                     f"{_mean_std([x['peak_memory_mb'] for x in r], 2)} |")
    layers = list(runs[0]["grad_cosine_vs_bptt"]["init"]) if runs else []
    lines += ["", f"Gradient vs BPTT per layer, on {summary['grad_batches']} fixed validation batch(es), from the same "
                  f"weights (init: shared initial weights; final: each run's final weights). Cosine and norm ratio "
                  f"|g|/|g_bptt|: mean ± std over seeds; rel. error |g - g_bptt|/|g_bptt|: largest over seeds.", "",
              "| gradient | layer | cosine (init) | cosine (final) | norm ratio (init) | norm ratio (final) "
              "| rel. error (init) | rel. error (final) |",
              "|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        r = [run for run in runs if run["gradient"] == mode]
        for layer in layers:
            def values(field: str, when: str) -> list[float]:
                return [x[field][when][layer] for x in r]
            lines.append(f"| {mode} | {layer} | {_cosine_text(values('grad_cosine_vs_bptt', 'init'))} | "
                         f"{_cosine_text(values('grad_cosine_vs_bptt', 'final'))} | "
                         f"{_mean_std(values('grad_norm_ratio_vs_bptt', 'init'), 4)} | "
                         f"{_mean_std(values('grad_norm_ratio_vs_bptt', 'final'), 4)} | "
                         f"{_scientific(values('grad_rel_error_vs_bptt', 'init'))} | "
                         f"{_scientific(values('grad_rel_error_vs_bptt', 'final'))} |")
    match = summary.get("exodus_matches_bptt")
    if match is not None:
        lines += ["", f"EXODUS cosine vs BPTT >= {EXODUS_MIN_COSINE} on every layer: **{'yes' if match else 'NO'}**"]
    return "\n".join(lines) + "\n"


def _write_outputs(output: str, summary: dict, curves: list[dict]) -> None:
    with open(os.path.join(output, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1, allow_nan=False, default=_json_default)
        handle.write("\n")
    with open(os.path.join(output, "summary.md"), "w") as handle:
        handle.write(summary_markdown(summary))
    fields = ["gradient", "seed", "epoch", "train_loss", "val_loss", "val_acc", "train_time_s"]
    with open(os.path.join(output, "curves.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in curves:
            writer.writerow({k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k]) for k in fields})
    _plot(output, summary, curves)


def _json_default(value):
    raise TypeError(f"not JSON serialisable: {value!r}")


def _plot(output: str, summary: dict, curves: list[dict]) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = summary["gradients"]
    colors = {"exodus": "tab:blue", "slayer": "tab:orange", "bptt": "tab:green"}
    # exodus and bptt curves coincide when the gradients agree: draw bptt dashed on top of a wide exodus line
    styles = {"exodus": dict(linewidth=3.0, alpha=0.8), "bptt": dict(linestyle="--", linewidth=1.5)}

    def per_epoch(mode: str, key: str):
        epochs = sorted({r["epoch"] for r in curves if r["gradient"] == mode})
        means, stds = [], []
        for epoch in epochs:
            values = [r[key] for r in curves if r["gradient"] == mode and r["epoch"] == epoch
                      and not math.isnan(r[key])]
            means.append(statistics.fmean(values) if values else math.nan)
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        return epochs, torch.tensor(means), torch.tensor(stds)

    for key, label, filename in (("val_acc", "validation accuracy", "val_accuracy.png"),
                                 ("val_loss", "validation loss", "val_loss.png"),
                                 ("train_time_s", "training time per epoch (s)", "epoch_time.png")):
        figure, axis = plt.subplots(figsize=(5, 3.4))
        for mode in modes:
            epochs, mean, std = per_epoch(mode, key)
            axis.plot(epochs, mean, marker="o", markersize=3, label=mode, color=colors.get(mode),
                      **styles.get(mode, {}))
            axis.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=colors.get(mode))
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.set_title(f"{label} (mean ± std, {len(summary['seeds'])} seeds)", fontsize=9)
        if key == "train_time_s":
            axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(os.path.join(output, filename), dpi=80)
        plt.close(figure)

    runs = summary["runs"]
    layers = list(runs[0]["grad_cosine_vs_bptt"]["init"]) if runs else []
    figure, axes = plt.subplots(1, 2, figsize=(7, 3.4), sharey=True)
    width = 0.8 / max(len(modes), 1)
    lowest = 1.0
    for axis, when in zip(axes, ("init", "final")):
        for i, mode in enumerate(modes):
            values = [[run["grad_cosine_vs_bptt"][when][layer] for run in runs if run["gradient"] == mode]
                      for layer in layers]
            means = [statistics.fmean(v) for v in values]
            lowest = min([lowest, *means])
            positions = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(layers))]
            axis.bar(positions, means, width, label=mode, color=colors.get(mode))
            for x, m in zip(positions, means):
                axis.text(x, m, f"{m:.4f}", ha="center", va="bottom", fontsize=6, rotation=90)
        axis.set_xticks(range(len(layers)), layers)
        axis.set_title(f"{'initial' if when == 'init' else 'final'} weights", fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("gradient cosine vs BPTT")
    axes[0].set_ylim(min(0.0, lowest - 0.05), 1.15)
    axes[1].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(os.path.join(output, "grad_cosine.png"), dpi=80)
    plt.close(figure)


# ----------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exodus-compare",
        description="Train one exodus-train config under several gradient modes from identical initial weights "
                    "and data order; write summary.json, summary.md, curves.csv and PNG plots. Arguments not "
                    "listed here (--trainer.*, --model.*, --data.*, --optimizer ...) go to the exodus-train parser.")
    parser.add_argument("--config", required=True, help="exodus-train YAML config")
    parser.add_argument("--gradients", nargs="+", default=["exodus", "slayer", "bptt"], choices=GRADIENTS,
                        help="gradient modes to train (default: exodus slayer bptt; sparse: fused Linear -> LIF blocks "
                             "with the sparse exact backward, set --model.surrogate_band for the same function)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=None,
                        help="first seed (default: the config's seed_everything, else 0); seeds are consecutive")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--grad-batches", type=int, default=2,
                        help="validation batches the gradient agreement is measured on (default 2)")
    parser.add_argument("--reseed-data", action="store_true",
                        help="also set data.seed to each seed (generated tasks: other samples; default: the "
                             "config's data, the same in every run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _first_seed(config: str, overrides: Sequence[str]) -> int:
    for i, arg in enumerate(overrides):
        if arg == "--seed_everything" and i + 1 < len(overrides):
            return int(overrides[i + 1])
        if arg.startswith("--seed_everything="):
            return int(arg.split("=", 1)[1])
    import yaml
    with open(config) as handle:
        loaded = yaml.safe_load(handle) or {}
    value = loaded.get("seed_everything") if isinstance(loaded, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of ``exodus-compare``. First sets this process's allocator up for training
    (docs/cpu_memory.md); the library never does."""
    memory.tune_training_process()
    options, overrides = _parser().parse_known_args(None if args is None else list(args))
    if options.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {options.seeds}")
    if not os.path.isfile(options.config):
        raise SystemExit(f"--config {options.config}: no such file")
    first = options.first_seed if options.first_seed is not None else _first_seed(options.config, overrides)
    seeds = list(range(first, first + options.seeds))
    summary = compare(options.config, options.gradients, seeds, options.output, overrides,
                      grad_batches=options.grad_batches, reseed_data=options.reseed_data,
                      progress=not options.no_progress)
    print(summary_markdown(summary))
    print(f"outputs in {os.path.abspath(options.output)}")
    if summary["exodus_matches_bptt"] is False:
        print(f"ERROR: an EXODUS gradient deviates from BPTT (cosine < {EXODUS_MIN_COSINE}); see summary.json",
              file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
