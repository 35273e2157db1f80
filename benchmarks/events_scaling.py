"""Cost per network spike of exodus.events (compiled SparseProp heap, O(K log N) per spike)
against an O(N) vectorised numpy event simulator and a time-stepped torch simulation of the same
network (balanced inhibitory LIF, K = 100, DESIGN.md §8), all measured in one run.

    python benchmarks/events_scaling.py                      # N = 1e4, 1e5, 1e6
    python benchmarks/events_scaling.py --big                # + N = 1e6 x 1e7 spikes

Prints microseconds per spike and the ratios; timings on a shared machine are noisy, so the
ratios (same run) are what to read.
"""
from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch

import exodus.events as ev
from exodus.events.timestepped import simulate_timestepped


def heap_run(net: ev.Network, n_spikes: int) -> tuple[float, float]:
    """(us per spike, mean rate Hz) of the compiled heap simulator."""
    spikes = ev.simulate(net, n_spikes)
    return 1e6 * spikes.wall_seconds / n_spikes, spikes.mean_rate()


def on_event_run(net: ev.Network, n_spikes: int) -> float:
    """us per spike of an O(N)-per-spike exact event simulator, vectorised in numpy (homogeneous
    LIF: argmax over all phases, one in-place add to all phases, PTC on the K targets)."""
    phase = net.initial_phases()
    omega, c = net.omega0, float(net.coupling_per_neuron()[0])
    start = None
    for s in range(n_spikes + 5):
        if s == 5:
            start = time.perf_counter()
        j = int(np.argmax(phase))
        phase += 1.0 - phase[j]
        targets, _ = net.targets_and_synapses(j)
        phase[targets] = -omega * np.log(np.exp(-phase[targets] / omega) + c)
        phase[j] = 0.0
    return 1e6 * (time.perf_counter() - start) / n_spikes


def stepped_run(net: ev.Network, duration: float, dt: float) -> tuple[float, int]:
    """(us per network spike, spikes) of the time-stepped torch simulation (dt in units of tau)."""
    start = time.perf_counter()
    spikes = simulate_timestepped(net, duration, dt)
    return 1e6 * (time.perf_counter() - start) / max(spikes.times.size, 1), spikes.times.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--heap-spikes", type=int, default=1_000_000)
    parser.add_argument("--on-spikes", type=int, default=300, help="spikes timed in the O(N) simulator")
    parser.add_argument("--stepped-duration", type=float, default=0.02, help="seconds simulated time-stepped")
    parser.add_argument("--dt", type=float, default=0.01, help="time step of the stepped run (units of tau)")
    parser.add_argument("--big", action="store_true", help="also run N = 1e6 for 1e7 spikes")
    args = parser.parse_args()
    torch.set_num_threads(1)

    ev.simulate(ev.Network(100, 10), 10)  # build / load the native library outside the timings
    print(f"balanced inhibitory LIF, K = {args.k}, tau = 10 ms, j0 = 1, i_ext = tau sqrt(K) j0 (nu = 1 Hz); "
          f"torch threads = 1; stepped dt = {args.dt} tau")
    print(f"{'N':>9} {'rate Hz':>8} {'heap us/spk':>12} {'O(N) us/spk':>12} {'O(N)/heap':>10} "
          f"{'stepped us/spk':>15} {'stepped/heap':>13} {'heap state MB':>14}")
    heap_cost = {}
    for size in args.sizes:
        n = int(size)
        net = ev.Network(n, args.k, seed=1)
        heap_us, rate = heap_run(net, args.heap_spikes)
        on_us = on_event_run(net, args.on_spikes)
        stepped_us, _ = stepped_run(net, args.stepped_duration, args.dt)
        heap_cost[n] = heap_us
        state_mb = n * (16 + 8 + 8) / 1e6  # heap entries, positions, spike counts
        print(f"{n:>9,} {rate:>8.3f} {heap_us:>12.2f} {on_us:>12.1f} {on_us / heap_us:>10.0f} {stepped_us:>15.2f} "
              f"{stepped_us / heap_us:>13.2f} {state_mb:>14.1f}", flush=True)
    sizes = sorted(heap_cost)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"heap cost growth N = {lo:,} -> {hi:,}: {heap_cost[hi] / heap_cost[lo]:.2f}x "
              f"(log2 N ratio {math.log2(hi) / math.log2(lo):.2f})")
    if args.big:
        net = ev.Network(1_000_000, args.k, seed=1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        spikes = ev.simulate(net, 10_000_000, record=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"N = 1,000,000 x 10,000,000 spikes (counts only): {spikes.wall_seconds:.1f} s wall, "
              f"{1e6 * spikes.wall_seconds / 1e7:.2f} us/spike, {spikes.duration:.3f} s simulated, "
              f"rate {spikes.mean_rate():.3f} Hz, peak RSS {peak / 1024:.0f} MB (before {before / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
