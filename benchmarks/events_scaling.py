"""Cost per network spike of exodus.events (compiled SparseProp simulator, O(K) per spike amortised)
against an O(N) vectorised numpy event simulator and a time-stepped torch simulation of the same
network (balanced inhibitory LIF, K = 100, DESIGN.md §8), all measured in one run.

    python benchmarks/events_scaling.py                      # N = 1e4, 1e5, 1e6
    python benchmarks/events_scaling.py --big                # + N = 1e6 x 1e7 spikes

exodus runs twice per N: on one thread (threads=1, the default) and with its helper thread
(threads=2: the likely next spikers' targets drawn ahead on the second core; same spikes).
The O(N) numpy simulator and the torch simulation run on one thread.

Prints microseconds per spike and the ratios; timings on a shared machine are noisy, so the
ratios (same run) are what to read, each side the fastest of --repeats runs (default 3).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import exodus.events as ev
from exodus.events import _native
from exodus.events.timestepped import simulate_timestepped


def exodus_run(net: ev.Network, n_spikes: int, repeats: int = 1, threads: int = 1) -> tuple[float, float, float]:
    """(wall us per spike, CPU us per spike, mean rate Hz) of the compiled event simulator, the
    fastest of `repeats` identical runs."""
    best = (math.inf, math.inf, 0.0)
    for _ in range(repeats):
        cpu = time.process_time()
        spikes = ev.simulate(net, n_spikes, threads=threads)
        cpu = time.process_time() - cpu
        best = min(best, (1e6 * spikes.wall_seconds / n_spikes, 1e6 * cpu / n_spikes, spikes.mean_rate()))
    return best


def on_event_run(net: ev.Network, n_spikes: int, repeats: int = 1) -> tuple[float, float]:
    """(wall, CPU) us per spike of an O(N)-per-spike exact event simulator, vectorised in numpy (homogeneous
    LIF: argmax over all phases, one in-place add to all phases, PTC on the K targets); the fastest
    of `repeats` runs."""
    return min(_on_event_once(net, n_spikes) for _ in range(repeats))


def _on_event_once(net: ev.Network, n_spikes: int) -> tuple[float, float]:
    phase = net.initial_phases()
    omega, c = net.omega0, float(net.coupling_per_neuron()[0])
    start = cpu = None
    for s in range(n_spikes + 5):
        if s == 5:
            start, cpu = time.perf_counter(), time.process_time()
        j = int(np.argmax(phase))
        phase += 1.0 - phase[j]
        targets, _ = net.targets_and_synapses(j)
        phase[targets] = -omega * np.log(np.exp(-phase[targets] / omega) + c)
        phase[j] = 0.0
    return 1e6 * (time.perf_counter() - start) / n_spikes, 1e6 * (time.process_time() - cpu) / n_spikes


def stepped_run(net: ev.Network, duration: float, dt: float) -> tuple[float, float]:
    """(wall, CPU) us per network spike of the time-stepped torch simulation (dt in units of tau)."""
    start, cpu = time.perf_counter(), time.process_time()
    spikes = simulate_timestepped(net, duration, dt)
    count = max(spikes.times.size, 1)
    return 1e6 * (time.perf_counter() - start) / count, 1e6 * (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--exodus-spikes", type=int, default=1_000_000)
    parser.add_argument("--on-spikes", type=int, default=300, help="spikes timed in the O(N) simulator")
    parser.add_argument("--stepped-duration", type=float, default=0.02, help="seconds simulated time-stepped")
    parser.add_argument("--dt", type=float, default=0.01, help="time step of the stepped run (units of tau)")
    parser.add_argument("--big", action="store_true", help="also run N = 1e6 for 1e7 spikes")
    parser.add_argument("--memory", action="store_true", help="peak memory of a counts-only run per N")
    parser.add_argument("--repeats", type=int, default=3,
                        help="exodus and the O(N) simulator: the fastest of this many runs each (shared machines)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    ev.simulate(ev.Network(100, 10), 10)  # build / load the native library outside the timings
    print(f"balanced inhibitory LIF, K = {args.k}, tau = 10 ms, j0 = 1, i_ext = tau sqrt(K) j0 (nu = 1 Hz); "
          f"torch threads = 1; stepped dt = {args.dt} tau")
    print(f"us per network spike, wall clock (CPU time of this process in brackets); fastest of {args.repeats} runs each")
    print(f"{'N':>9} {'rate Hz':>8} {'exodus':>14} {'O(N) numpy':>18} {'O(N)/exodus':>12} {'stepped torch':>16} "
          f"{'stepped/exod.':>13} {'state MB':>9} {'exodus 2 thr.':>14} {'O(N)/ex. 2 thr.':>15}")
    ex_cost = {}
    for size in args.sizes:
        n = int(size)
        net = ev.Network(n, args.k, seed=1)
        ex_us, ex_cpu, rate = exodus_run(net, args.exodus_spikes, args.repeats)
        ex2_us, ex2_cpu, _ = exodus_run(net, args.exodus_spikes, args.repeats, threads=2)
        on_us, on_cpu = on_event_run(net, args.on_spikes, args.repeats)
        stepped_us, stepped_cpu = stepped_run(net, args.stepped_duration, args.dt)
        ex_cost[n] = (ex_us, ex_cpu)
        key_count = _native.load().exodus_events_key_count(n)
        state_mb = (8 * key_count + 8 * n + n / 8) / 1e6  # keys, spike counts, drawn-target bits (+ the window: ~KB)
        print(f"{n:>9,} {rate:>8.3f} {ex_us:>6.2f} ({ex_cpu:>5.2f}) {on_us:>8.1f} ({on_cpu:>7.1f}) "
              f"{on_us / ex_us:>5.0f} ({on_cpu / ex_cpu:>4.0f}) {stepped_us:>7.1f} ({stepped_cpu:>6.1f}) "
              f"{stepped_us / ex_us:>6.1f} ({stepped_cpu / ex_cpu:>4.1f}) {state_mb:>9.1f} "
              f"{ex2_us:>6.2f} ({ex2_cpu:>5.2f}) {on_us / ex2_us:>6.0f} ({on_cpu / ex2_cpu:>4.0f})", flush=True)
    sizes = sorted(ex_cost)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"exodus cost growth N = {lo:,} -> {hi:,}: {ex_cost[hi][0] / ex_cost[lo][0]:.2f}x wall, "
              f"{ex_cost[hi][1] / ex_cost[lo][1]:.2f}x CPU (log2 N ratio {math.log2(hi) / math.log2(lo):.2f})")
    if args.memory:  # numpy allocations (tracemalloc sees them) of a counts-only run: the simulator's memory
        import tracemalloc
        for size in args.sizes:
            net = ev.Network(int(size), args.k, seed=1)
            tracemalloc.start()
            ev.simulate(net, 200_000, record=False)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"memory N = {int(size):>9,}: peak {peak / 1e6:7.1f} MB of numpy arrays during simulate "
                  f"({peak / int(size):.0f} bytes per neuron)")
    if args.big:
        net = ev.Network(1_000_000, args.k, seed=1)
        for threads in (1, 2):
            cpu = time.process_time()
            spikes = ev.simulate(net, 10_000_000, record=False, threads=threads)
            cpu = time.process_time() - cpu
            print(f"N = 1,000,000 x 10,000,000 spikes (counts only), threads={threads}: {spikes.wall_seconds:.1f} s wall "
                  f"({cpu:.1f} s CPU), {1e6 * spikes.wall_seconds / 1e7:.2f} us/spike, {spikes.duration:.3f} s "
                  f"simulated, rate {spikes.mean_rate():.3f} Hz")


if __name__ == "__main__":
    main()
