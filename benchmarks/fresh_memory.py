"""Cost of fresh output memory in the fused CPU ops, per allocator configuration (docs/cpu_memory.md).

    python benchmarks/fresh_memory.py [--quick] [--configs before default ...] [--reps N] [--rounds R]

Each configuration runs in a fresh process (torch reads THP_MEM_ALLOC_ENABLE once; glibc's heap
state carries over between measurements otherwise):

* ``before``   — exodus' output pool off (EXODUS_CPU_POOL_BYTES=0): every output is a torch.empty,
                 i.e. a fresh glibc mmap for large tensors (the code before this change);
* ``thp-env``  — pool off, THP_MEM_ALLOC_ENABLE=1 (torch advises huge pages on its allocations);
* ``default``  — what a library user gets now: outputs from exodus.backends.memory's pool;
* ``pool-4k``  — the pool without its huge-page advice (4 KiB pages): what the advice adds;
* ``cli``      — the pool plus exodus.backends.memory.tune_training_process() (glibc serves every
                 block from its heap and keeps freed ones), what exodus-train / exodus-compare set.

In each process, timed interleaved so that the machine's noise hits all alike:

* streaming bandwidth: ``torch.add(x, 1, out=y)`` on a reused y, and ``torch.add(x, 1)`` (fresh
  output), (64, 500, 1024) float32;
* one ``exodus.LIF(tau_mem=20)`` layer forward + backward at (64, 500, 1024) float32 (upstream
  gradient on the spikes; fresh outputs as in training): time and "% of streaming" = the 6 streams
  it must move (x, spikes, h; h, grad, grad_x) per second over the reused add's 2 streams per second;
* the ceiling: the forward and backward kernels alone on preallocated outputs (what the LIF step
  would take if fresh memory cost nothing), as % of streaming, and each kernel's 3 streams as %
  of streaming;
* backward alone vs T (T = 250, 500, 1000, 2000 at batch 32, 1024 neurons): ns per neuron-step
  (linear in T: flat), with the ratio T=2000 / T=250;
* an SHD-shaped training step (Linear 700-256, LIF, Linear 256-256, LIF, Linear 256-20, summed
  over time, cross-entropy, Adam; T = 100, batch 64): exodus.LIF against the same network with
  nn.ReLU in place of the neurons, timed alternately; ratio (target <= 1.25).

Medians over repetitions after a warm-up; with --rounds R every configuration runs R times, in
turn (before, thp-env, ..., before, thp-env, ...), and the table shows the median over the rounds
of each number (the load of other processes shifts between rounds). The load average is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "before": {"EXODUS_CPU_POOL_BYTES": "0"},
    "thp-env": {"EXODUS_CPU_POOL_BYTES": "0", "THP_MEM_ALLOC_ENABLE": "1"},
    "default": {},
    "pool-4k": {},  # the child turns memory.advise_huge_pages off
    "cli": {},  # + tune_training_process() in the child, after torch's first allocation (as in the CLIs)
}
SHAPE = (64, 500, 1024)
T_SWEEP = (250, 500, 1000, 2000)
SWEEP_BATCH, SWEEP_NEURONS = 32, 1024
SHD = dict(inputs=700, hidden=256, classes=20, T=100, batch=64)
TARGET_BANDWIDTH, TARGET_LINEAR, TARGET_SHD = 0.70, 1.25, 1.25


def median(values):
    return statistics.median(values) if values else math.nan


def child(config: str, reps: int, quick: bool) -> dict:
    """All measurements of one configuration (runs in its own process)."""
    applied = {}
    import torch
    if config == "cli":
        torch.zeros(1)  # like the CLIs: tensors exist (pytorch_lightning's import) before the settings
        from exodus.backends.memory import tune_training_process
        applied = tune_training_process()
    from torch import nn

    import exodus
    from exodus.backends import memory
    if config == "pool-4k":
        memory.advise_huge_pages = lambda mapping: False

    torch.manual_seed(0)
    result = {"config": config, "applied": applied, "threads": torch.get_num_threads(),
              "thp_mode": memory.transparent_huge_pages(), "load_before": os.getloadavg()[0]}
    shape = (16, 500, 1024) if quick else SHAPE
    x = torch.randn(shape) * 0.3 + 0.06
    grad = torch.randn(shape) * 0.3
    y = torch.empty_like(x)
    layer = exodus.LIF(tau_mem=20.0, backend="cpu")

    def add_reused():
        torch.add(x, 1, out=y)

    def add_fresh():
        torch.add(x, 1)

    def lif_step():
        layer.reset_states()
        leaf = x.detach().requires_grad_(True)
        spikes = layer(leaf)
        spikes.backward(grad)
        return leaf.grad

    # ceiling: the same two kernels on preallocated outputs (no allocation, no autograd)
    from exodus.backends import cpu, launch
    B, T, N = shape
    alpha, theta, v0 = torch.full((N,), math.exp(-1 / 20)), torch.ones(N), torch.zeros(B, N)
    spikes, h, v_last, grad_x = torch.empty_like(x), torch.empty_like(x), x.new_empty((B, N)), torch.empty_like(x)
    options = launch.LifOptions(v_trace=False)
    forward = launch.lif_forward_plan(x, alpha, theta, v0, spikes, v_last, h, options)
    backward = launch.lif_backward_plan(h, grad, None, alpha, theta, v0, grad_x, torch.zeros(B, N), None, None, options)

    timed = {"add_reused": add_reused, "add_fresh": add_fresh, "lif_fwd_bwd": lif_step,
             "kernel_fwd": lambda: cpu.run(forward, torch.float32),
             "kernel_bwd": lambda: cpu.run(backward, torch.float32)}
    samples = {name: [] for name in timed}
    for i in range(2 + reps):  # round robin: every repetition times each once
        for name, function in timed.items():
            t0 = time.perf_counter()
            function()
            if i >= 2:
                samples[name].append(time.perf_counter() - t0)
    for name in timed:
        result[name + "_ms"] = median(samples[name]) * 1e3
    # bandwidth fraction: (6 streams / t_lif) / (2 streams / t_add)
    result["lif_fraction_of_streaming"] = 3 * result["add_reused_ms"] / result["lif_fwd_bwd_ms"]
    result["kernels_preallocated_ms"] = result["kernel_fwd_ms"] + result["kernel_bwd_ms"]
    result["kernels_fraction_of_streaming"] = 3 * result["add_reused_ms"] / result["kernels_preallocated_ms"]
    # each kernel moves 3 streams (forward: x, spikes, h; backward: h, grad, grad_x)
    result["kernel_fwd_fraction"] = 1.5 * result["add_reused_ms"] / result["kernel_fwd_ms"]
    result["kernel_bwd_fraction"] = 1.5 * result["add_reused_ms"] / result["kernel_bwd_ms"]
    del x, grad, y, spikes, h, grad_x

    # backward vs T: fresh forward each time (its outputs are what the backward reads), backward timed
    sweep = {}
    for T in (T_SWEEP[:2] if quick else T_SWEEP):
        xs = torch.randn(SWEEP_BATCH, T, SWEEP_NEURONS) * 0.3 + 0.06
        gs = torch.randn_like(xs) * 0.3
        times = []
        for i in range(2 + max(3, reps // 2)):
            layer.reset_states()
            leaf = xs.detach().requires_grad_(True)
            spikes = layer(leaf)
            t0 = time.perf_counter()
            spikes.backward(gs)
            if i >= 2:
                times.append(time.perf_counter() - t0)
            del spikes, leaf
        sweep[T] = median(times) / xs.numel() * 1e9
        del xs, gs
    result["bwd_ns_per_neuron_step"] = sweep
    Ts = sorted(sweep)
    result["bwd_linearity"] = sweep[Ts[-1]] / sweep[Ts[0]]

    # SHD-shaped training step: LIF vs ReLU, alternately
    def network(neuron):
        return nn.Sequential(nn.Linear(SHD["inputs"], SHD["hidden"]), neuron(), nn.Linear(SHD["hidden"], SHD["hidden"]),
                             neuron(), nn.Linear(SHD["hidden"], SHD["classes"]))

    torch.manual_seed(1)
    nets = {"lif": network(lambda: exodus.LIF(tau_mem=20.0, backend="cpu")), "relu": network(nn.ReLU)}
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-3) for name, net in nets.items()}
    data = torch.rand(SHD["batch"], SHD["T"], SHD["inputs"]) < 0.05
    data = data.float() * 2.0
    labels = torch.randint(0, SHD["classes"], (SHD["batch"],))

    def train_step(name):
        net, optimizer = nets[name], optimizers[name]
        for module in net:
            if hasattr(module, "reset_states"):
                module.reset_states()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(data).sum(1), labels)
        loss.backward()
        optimizer.step()

    step_samples = {name: [] for name in nets}
    for i in range(3 + 3 * reps):
        for name in nets:
            t0 = time.perf_counter()
            train_step(name)
            if i >= 3:
                step_samples[name].append(time.perf_counter() - t0)
    result["shd_lif_ms"] = median(step_samples["lif"]) * 1e3
    result["shd_relu_ms"] = median(step_samples["relu"]) * 1e3
    result["shd_ratio"] = result["shd_lif_ms"] / result["shd_relu_ms"]
    result["pool"] = memory.stats()
    result["load_after"] = os.getloadavg()[0]
    return result


def run_child(config: str, reps: int, quick: bool) -> dict:
    env = {**os.environ, **CONFIGS[config]}
    for variable in ("EXODUS_CPU_POOL_BYTES", "THP_MEM_ALLOC_ENABLE"):  # only what the configuration says
        if variable not in CONFIGS[config]:
            env.pop(variable, None)
    args = [sys.executable, os.path.abspath(__file__), "--child", config, "--reps", str(reps)]
    if quick:
        args.append("--quick")
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"configuration {config} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def merge_rounds(runs: list[dict]) -> dict:
    """Median over the rounds of every number (per T for the sweep); the load range over all."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = median([run[key] for run in runs])
    merged["bwd_ns_per_neuron_step"] = {T: median([run["bwd_ns_per_neuron_step"][T] for run in runs])
                                        for T in runs[0]["bwd_ns_per_neuron_step"]}
    merged["load_before"] = min(run["load_before"] for run in runs)
    merged["load_after"] = max(run["load_after"] for run in runs)
    merged["rounds"] = len(runs)
    return merged


def report(results: list[dict]) -> None:
    print(f"threads {results[0]['threads']}, THP mode {results[0]['thp_mode']!r}, shape {SHAPE} float32, "
          f"median of {results[0]['rounds']} round(s)")
    header = ("config", "add reused", "add fresh", "LIF fwd+bwd", "% streaming", "kernels only", "% streaming",
              "fwd / bwd kernel %",
              "bwd ns/step T=" +
              "/".join(str(T) for T in results[0]["bwd_ns_per_neuron_step"]), "T-ratio", "SHD LIF", "SHD ReLU",
              "SHD ratio", "load")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        sweep = "/".join(f"{v:.2f}" for v in r["bwd_ns_per_neuron_step"].values())
        print(f"| {r['config']} | {r['add_reused_ms']:.1f} ms | {r['add_fresh_ms']:.1f} ms | {r['lif_fwd_bwd_ms']:.1f} ms | "
              f"{100 * r['lif_fraction_of_streaming']:.0f} % | {r['kernels_preallocated_ms']:.1f} ms | "
              f"{100 * r['kernels_fraction_of_streaming']:.0f} % | "
              f"{100 * r['kernel_fwd_fraction']:.0f} / {100 * r['kernel_bwd_fraction']:.0f} % | {sweep} | {r['bwd_linearity']:.2f} | "
              f"{r['shd_lif_ms']:.1f} ms | {r['shd_relu_ms']:.1f} ms | {r['shd_ratio']:.2f} | "
              f"{r['load_before']:.1f}-{r['load_after']:.1f} |")
    for r in results:
        if r["applied"]:
            print(f"{r['config']}: applied {r['applied']}")
    default = next((r for r in results if r["config"] == "default"), None)
    if default is not None:
        print("target check (default configuration):")
        checks = [("fwd+bwd >= 70 % of streaming", default["lif_fraction_of_streaming"] >= TARGET_BANDWIDTH,
                   f"{100 * default['lif_fraction_of_streaming']:.0f} %"),
                  ("backward linear in T (ratio <= 1.25)", default["bwd_linearity"] <= TARGET_LINEAR,
                   f"{default['bwd_linearity']:.2f}"),
                  ("SHD step LIF / ReLU <= 1.25", default["shd_ratio"] <= TARGET_SHD, f"{default['shd_ratio']:.2f}")]
        for name, ok, value in checks:
            print(f"  {'PASS' if ok else 'MISS'}  {name}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, shorter sweep (smoke test)")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.reps, args.quick)))
        return
    print(f"load average at start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rounds = {config: [] for config in args.configs}
    for round_index in range(args.rounds):
        for config in args.configs:
            rounds[config].append(run_child(config, args.reps, args.quick))
            print(f"  round {round_index + 1}: {config} done", flush=True)
    report([merge_rounds(runs) for runs in rounds.values()])


if __name__ == "__main__":
    main()
