"""Train a sparse inhibitory LIF network (exodus.events) so that every neuron fires at its own
target rate, with exact spike-time gradients through the event tape (exodus/events/adjoint.py).

Each step simulates `--duration` seconds exactly (compiled heap), estimates each neuron's rate as
(n_i - 1) / (t_last - t_first) (a differentiable function of its spike times), and takes an Adam
step on the per-neuron drives i_ext (log-parameterised: they stay above rheobase) and, with
--train-weights, on the per-synapse weights. The order of events changes between steps; within a
step the gradient is exact for that step's order.

    python experiments/events_train_rates.py                  # ~20 s on 2 cores
    python experiments/events_train_rates.py --train-weights
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import exodus.events as ev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds simulated per step")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--train-weights", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    target = torch.from_numpy(rng.uniform(2.0, 10.0, args.n))           # Hz, one per neuron
    log_drive = torch.full((args.n,), np.log(0.1), dtype=torch.float64, requires_grad=True)
    weights = torch.ones((args.n, args.k), dtype=torch.float64, requires_grad=args.train_weights)
    net = ev.Network(args.n, args.k, i_ext=np.full(args.n, 0.1), weights=np.ones((args.n, args.k)), seed=args.seed + 1)
    params = [log_drive] + ([weights] if args.train_weights else [])
    optimizer = torch.optim.Adam(params, lr=args.lr)
    print(f"N = {args.n}, K = {args.k}, {args.duration} s per step, targets 2-10 Hz; "
          f"training i_ext{' and weights' if args.train_weights else ''}")
    start = time.perf_counter()
    for step in range(args.steps + 1):
        times, neurons = ev.spike_times(net, duration=args.duration, i_ext=log_drive.exp(),
                                        weights=weights if args.train_weights else None)
        rates = ev.isi_rates(times, neurons, args.n)
        loss = torch.mean((rates - target) ** 2)
        counted = torch.bincount(neurons, minlength=args.n) / args.duration
        if step % 10 == 0 or step == args.steps:
            print(f"step {step:3d}  loss {loss.item():9.4f} Hz^2  mean |rate - target| {torch.mean(torch.abs(rates - target)):.3f} Hz"
                  f" (count/T: {torch.mean(torch.abs(counted - target)):.3f} Hz)  {times.numel()} spikes  "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.train_weights:
            with torch.no_grad():
                weights.clamp_(min=0.0)  # stay inhibitory: excitation across threshold is not supported


if __name__ == "__main__":
    main()
