"""Training sparse inhibitory LIF networks (exodus.events) with exact spike-time gradients through
the event tape (exodus/events/adjoint.py). Two tasks:

--task times (default): a teacher network with random per-neuron drives produces a spike train;
    a student starts from the teacher's drives perturbed by --noise (relative) and fits all spike
    times by Gauss-Newton with the exact Jacobian dt_s / d log i_ext (forward mode, one jvp per
    neuron). While the spike order stays the teacher's, the iteration converges quadratically.

--task rates: per-neuron target rates (2-10 Hz); the rate is the continuous phase count
    (n_i + phi_i(T) - phi_i(0)) / T (exodus.events.phase_rates), the drives are trained by Adam
    with reverse-mode gradients through exodus.events.spike_times (torch autograd). The gradient
    is exact for each step's spike order, but in the balanced regime most of a finite parameter
    change's effect on the rates comes from changes of the order (discontinuities of the event
    map), which no gradient along a fixed order sees: the loss plateaus (see docs/events.md).

    python experiments/events_train_rates.py                    # ~5 s
    python experiments/events_train_rates.py --task rates       # ~40 s on 2 busy cores
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import exodus.events as ev
from exodus.events import adjoint as A


def fit_spike_times(args) -> None:
    rng = np.random.default_rng(args.seed)
    drive_true = rng.uniform(0.05, 0.2, args.n)
    teacher_net = ev.Network(args.n, args.k, i_ext=drive_true, seed=args.seed + 1)
    teacher = ev.simulate(teacher_net, duration=args.duration)
    drive = drive_true * np.exp(args.noise * rng.normal(size=args.n))
    print(f"task times: N = {args.n}, K = {args.k}, {teacher.times.size} teacher spikes in {args.duration} s; "
          f"student drives perturbed by {args.noise:.1%}")
    start = time.perf_counter()
    for iteration in range(args.steps):
        student = teacher_net.with_params(i_ext=drive)
        spikes = ev.simulate(student, duration=args.duration, phase0=teacher.phase0)
        if not np.array_equal(spikes.neurons, teacher.neurons):
            print(f"iteration {iteration}: the student's spike order differs from the teacher's: stop "
                  "(start closer, e.g. --noise 0.002)")
            return
        residual = (spikes.times - teacher.times) / student.tau          # units of tau
        spiking = spikes.counts > 0
        print(f"iteration {iteration}: rms spike-time error {np.sqrt(np.mean(residual ** 2)):.3e} tau, max relative "
              f"drive error (neurons that spike) {np.max(np.abs(drive / drive_true - 1)[spiking]):.3e}  "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        tape = A.replay(student, spikes)
        jacobian = np.stack([A.spike_time_jvp(student, spikes, {"i_ext": np.eye(args.n)[i] * drive[i]}, tape)
                             for i in range(args.n)], axis=1) / student.tau  # d t / d log i_ext
        step, *_ = np.linalg.lstsq(jacobian, -residual, rcond=None)
        drive = drive * np.exp(step)


def fit_rates(args) -> None:
    import torch

    rng = np.random.default_rng(args.seed)
    target = torch.from_numpy(rng.uniform(2.0, 10.0, args.n))
    net = ev.Network(args.n, args.k, i_ext=np.full(args.n, 0.1), seed=args.seed + 1)
    log_drive = torch.full((args.n,), float(np.log(0.1)), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([log_drive], lr=args.lr)
    print(f"task rates: N = {args.n}, K = {args.k}, {args.duration} s per step, targets 2-10 Hz, Adam lr {args.lr}")
    start = time.perf_counter()
    for step in range(args.steps + 1):
        times, neurons, phase_end, spikes = ev.spike_times(net, duration=args.duration, i_ext=log_drive.exp(),
                                                           return_final_phase=True)
        rates = ev.phase_rates(net, spikes, phase_end)
        loss = torch.mean((rates - target) ** 2)
        if step % 10 == 0:
            counted = torch.from_numpy(spikes.counts) / args.duration
            print(f"step {step:3d}  loss {loss.item():8.3f} Hz^2  mean |rate - target| "
                  f"{torch.mean(torch.abs(rates - target)).item():.3f} Hz (spike count / T: "
                  f"{torch.mean(torch.abs(counted - target)).item():.3f} Hz)  {times.numel()} spikes  "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
        if step == args.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("times", "rates"), default="times")
    parser.add_argument("--n", type=int, default=None, help="neurons (times: 30, rates: 200)")
    parser.add_argument("--k", type=int, default=None, help="out-degree (times: 5, rates: 20)")
    parser.add_argument("--duration", type=float, default=None, help="seconds (times: 0.3, rates: 2)")
    parser.add_argument("--steps", type=int, default=None, help="iterations (times: 6, rates: 60)")
    parser.add_argument("--noise", type=float, default=0.002, help="times: relative perturbation of the drives")
    parser.add_argument("--lr", type=float, default=0.1, help="rates: Adam learning rate on log i_ext")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    defaults = {"times": (30, 5, 0.3, 6), "rates": (200, 20, 2.0, 60)}[args.task]
    for name, value in zip(("n", "k", "duration", "steps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    (fit_spike_times if args.task == "times" else fit_rates)(args)


if __name__ == "__main__":
    main()
