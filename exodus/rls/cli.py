"""``exodus-rls``: train an E/I LIF network with RLS from a config file and write the learning
curve, a checkpoint and plots (TrainSpikingNet.jl's tutorial: ``--config
experiments/configs/rls_tutorial.yaml``).

Config (YAML or JSON), every key optional:

    network:  {NetworkParams fields: n_cells, k, n_plastic, dtype, seed, penalty_lambda, ...}
    targets:  {kind: sinusoids | rates, amplitude: 0.5, period: 1000.0, n_tasks: 1,
               rates_file: rates.pt | rates.npy  ((n_learn, N) or (tasks, n_learn, N), Hz)}
    training: {loops: 100, evaluate_every: 1, backend: auto | native | torch, device: cpu,
               threads: null, checkpoint_every: 0}
    output:   {dir: experiments/results/rls_tutorial, plots: true, example_neurons: 4}

Command-line flags override the file (``--loops``, ``--n-cells``, ``--out``, ``--resume``, ...).
Writes <dir>/learning_curve.json (one row per loop), <dir>/checkpoint.pt and, with plots,
<dir>/correlation.png and <dir>/currents.png (matplotlib, imported only here).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch

DEFAULTS = {
    "network": {},
    "targets": {"kind": "sinusoids", "amplitude": 0.5, "period": 1000.0, "n_tasks": 1, "rates_file": None},
    "training": {"loops": 100, "evaluate_every": 1, "backend": "auto", "device": "cpu", "threads": None,
                 "checkpoint_every": 0},
    "output": {"dir": "experiments/results/rls_tutorial", "plots": True, "example_neurons": 4},
}


def load_config(path: Optional[str]) -> dict:
    """The config file merged over DEFAULTS (unknown sections or keys raise ValueError)."""
    config = {section: dict(values) for section, values in DEFAULTS.items()}
    if path is None:
        return config
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml  # PyYAML (installed with the train extra)

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a mapping of sections")
    for section, values in data.items():
        if section not in config:
            raise ValueError(f"{path}: unknown section {section!r} (expected {sorted(config)})")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping")
        if section != "network":
            unknown = set(values) - set(config[section])
            if unknown:
                raise ValueError(f"{path}: unknown keys in {section!r}: {sorted(unknown)}")
        config[section].update(values)
    return config


def load_rates(path: str) -> torch.Tensor:
    if path.endswith(".npy"):
        import numpy as np

        return torch.from_numpy(np.load(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict):
        data = next(iter(data.values()))
    return torch.as_tensor(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exodus-rls", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON config (see experiments/configs/rls_tutorial.yaml)")
    parser.add_argument("--loops", type=int, help="training loops (trials)")
    parser.add_argument("--n-cells", type=int, help="network size N")
    parser.add_argument("--dtype", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--backend", choices=["auto", "native", "torch"])
    parser.add_argument("--device", help="torch device of the simulation state (cuda: untested here)")
    parser.add_argument("--threads", type=int, help="OpenMP threads of the RLS update")
    parser.add_argument("--out", help="output directory")
    parser.add_argument("--resume", help="checkpoint to continue from (its network and targets are used)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    net_cfg, tgt, train_cfg, out_cfg = config["network"], config["targets"], config["training"], config["output"]
    for flag, section, key in (("loops", train_cfg, "loops"), ("n_cells", net_cfg, "n_cells"),
                               ("dtype", net_cfg, "dtype"), ("seed", net_cfg, "seed"),
                               ("backend", train_cfg, "backend"), ("device", train_cfg, "device"),
                               ("threads", train_cfg, "threads"), ("out", out_cfg, "dir")):
        if getattr(args, flag) is not None:
            section[key] = getattr(args, flag)
    if args.no_plots:
        out_cfg["plots"] = False

    from . import NetworkParams, RLSTrainer, setup

    out = Path(out_cfg["dir"])
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.resume:
        trainer = RLSTrainer.load(args.resume, backend=train_cfg["backend"], device=train_cfg["device"],
                                  threads=train_cfg["threads"])
        print(f"resumed {args.resume} at loop {trainer.loop}")
    else:
        params = NetworkParams.from_dict(net_cfg)
        rates = load_rates(tgt["rates_file"]) if tgt["kind"] == "rates" and tgt["rates_file"] else None
        trainer, spont = setup(params, n_tasks=int(tgt["n_tasks"]), backend=train_cfg["backend"],
                               device=train_cfg["device"], threads=train_cfg["threads"], targets=tgt["kind"],
                               rates=rates, amplitude=float(tgt["amplitude"]), period=float(tgt["period"]))
        print(f"N = {params.n_cells}, K = {params.K}, L = {params.L}, {params.dtype}, backend {trainer.backend}; "
              f"spontaneous rates: excitatory {spont.rate_exc:.3f} Hz, inhibitory {spont.rate_inh:.3f} Hz "
              f"(setup {time.perf_counter() - start:.1f} s)")
    (out / "config.json").write_text(json.dumps({**config, "network": trainer.params.to_dict()}, indent=2))

    every = int(train_cfg["checkpoint_every"])

    def after_loop(result):
        s = result.stats
        if args.no_progress:
            print(f"loop {s.loop:4d}  task {s.task}  {s.seconds:7.3f} s  (RLS {s.rls_seconds:6.3f} s)  "
                  f"rate {s.rate_hz:7.3f} Hz  correlation {s.correlation:8.4f}", flush=True)
        if every > 0 and s.loop % every == 0:
            trainer.save(out / f"checkpoint-{s.loop}.pt")
        _write_curve(trainer, out)

    trainer.train(int(train_cfg["loops"]), evaluate_every=int(train_cfg["evaluate_every"]),
                  progress=not args.no_progress, callback=after_loop)
    trainer.save(out / "checkpoint.pt")
    _write_curve(trainer, out)
    history = trainer.history
    if history:
        seconds = sorted(s.seconds for s in history)
        last = next((s.correlation for s in reversed(history) if not math.isnan(s.correlation)), float("nan"))
        print(f"{len(history)} loops: median {seconds[len(seconds) // 2]:.3f} s/loop, "
              f"final correlation {last:.4f}, final rate {history[-1].rate_hz:.3f} Hz")
    if out_cfg["plots"]:
        _plots(trainer, out, int(out_cfg["example_neurons"]))
        print(f"plots: {out / 'correlation.png'}, {out / 'currents.png'}")
    return 0


def _write_curve(trainer, out: Path) -> None:
    rows = [vars(s) for s in trainer.history]
    (out / "learning_curve.json").write_text(json.dumps(rows, indent=1, allow_nan=True))


def _plots(trainer, out: Path, example_neurons: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .targets import learning_times

    history = trainer.history
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    loops = [s.loop for s in history]
    ax[0].plot(loops, [s.correlation for s in history], ".-", ms=3)
    ax[0].set_xlabel("training loop")
    ax[0].set_ylabel("correlation with target")
    ax[0].grid(alpha=0.3)
    ax[1].plot(loops, [s.rate_hz for s in history], ".-", ms=3, color="tab:red")
    ax[1].set_xlabel("training loop")
    ax[1].set_ylabel("mean rate (Hz)")
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "correlation.png", dpi=90)
    plt.close(fig)

    # one test trial with frozen weights: the whole-trial current, its rolling average, the target
    p = trainer.params
    result = trainer.run_trial(task=0, learn=False, evaluate=True, trace=True)
    t_trace = trainer.sample_every * torch.arange(1, result.u_trace.shape[0] + 1)
    t_learn = learning_times(p)
    count = min(example_neurons, p.n_cells)
    cells = torch.linspace(0, p.n_cells - 1, count).round().long().tolist()
    fig, axes = plt.subplots(count, 1, figsize=(8, 1.6 * count + 0.6), sharex=True, squeeze=False)
    for ax, cell in zip(axes[:, 0], cells):
        ax.plot(t_trace, result.u_trace[:, cell].float().cpu(), lw=0.4, color="0.7", label="u (1 ms samples)")
        ax.plot(t_learn, result.smoothed[:, cell].float().cpu(), lw=1.5, label="u, 100 ms average")
        ax.plot(t_learn, trainer.targets[0, :, cell].float().cpu(), "--", lw=1.2, label="target")
        ax.axvspan(p.stim_on, p.stim_off, color="tab:orange", alpha=0.1)
        settled = t_trace > 50.0  # the first milliseconds (random v(0), a synchronous volley) set no scale
        values = torch.cat([result.u_trace[settled, cell].float().cpu(), trainer.targets[0, :, cell].float().cpu()])
        low, high = float(values.min()), float(values.max())
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        kind = "E" if cell < p.n_exc else "I"
        ax.set_ylabel(f"{kind} {cell}")
    axes[0, 0].legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1, 0].set_xlabel("time (ms)  (stimulus shaded; learning window after it)")
    fig.suptitle(f"test trial after {trainer.loop} loops: correlation {result.stats.correlation:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "currents.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
