"""A/B timing of the CPU kernels of two versions of cuda/ (for kernel work, not for users).

    git worktree add /tmp/exodus-old <commit>            # or any copy of an older cuda/ folder
    python benchmarks/kernel_ab.py /tmp/exodus-old/cuda cuda --shape 16 500 1024

Builds cpu_drivers.cpp of both folders with the flags the cpu backend uses (float32), then times
the LIF forward kernel and the backward kernel (without and with the parameter gradients) of A and
B alternately on the same preallocated tensors, so that the machine's noise hits both alike.
Prints the median of each and the ratio B/A (< 1: B is faster). Single-threaded by default.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import time
from pathlib import Path

import torch

from exodus.backends import cpu, launch, sources
from exodus.backends.native import ctypes_args


def build(cuda_dir: Path) -> ctypes.CDLL:
    """cpu_drivers.cpp of ``cuda_dir`` (includes inlined from the same folder), float32."""
    original = sources.cuda_dir
    sources.cuda_dir = lambda: cuda_dir
    sources.inline_source.cache_clear()
    try:
        flags = [*cpu._FLAG_SETS[0], "-DEXODUS_SCALAR=float", "-DEXODUS_ACC=float"]
        return ctypes.CDLL(str(sources.build_shared_library("cpu_drivers.cpp", flags, "ab-float")))
    finally:
        sources.cuda_dir = original
        sources.inline_source.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="cuda/ folder of version A")
    parser.add_argument("b", type=Path, nargs="?", default=Path(__file__).resolve().parent.parent / "cuda",
                        help="cuda/ folder of version B (default: this checkout's)")
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 500, 1024), metavar=("B", "T", "N"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--no-frozen", action="store_true",
                        help="skip the backward with frozen parameters (null gradient pointers): cuda/ "
                             "versions before commit ba1109c write those gradients unconditionally")
    args = parser.parse_args()

    libraries = [build(args.a.resolve()), build(args.b.resolve())]
    B, T, N = args.shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, N, generator=g) * 0.3 + 0.06
    grad = torch.randn(B, T, N, generator=g) * 0.3
    alpha, theta, v0 = torch.full((N,), math.exp(-1 / 20)), torch.ones(N), torch.zeros(B, N)
    spikes, h, v_last, grad_x = torch.empty_like(x), torch.empty_like(x), x.new_empty(B, N), torch.empty_like(x)
    grad_v0, grad_alpha, grad_theta = torch.zeros(B, N), torch.zeros(B, N), torch.zeros(B, N)
    options = launch.LifOptions(v_trace=False)
    plans = {
        "forward": launch.lif_forward_plan(x, alpha, theta, v0, spikes, v_last, h, options),
        # tau and theta frozen: no parameter gradients (null pointers)
        "backward": launch.lif_backward_plan(h, grad, None, alpha, theta, v0, grad_x, grad_v0, None, None, options),
        "backward + dalpha, dtheta": launch.lif_backward_plan(h, grad, None, alpha, theta, v0, grad_x, grad_v0,
                                                              grad_alpha, grad_theta, options),
    }
    if args.no_frozen:
        del plans["backward"]
    calls = {name: ctypes_args(plan.args, torch.float32) for name, plan in plans.items()}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.reps):
        for version, library in enumerate(libraries):
            for name, call_args in calls.items():
                kernel = getattr(library, plans[name].kernel.replace("exodus_", "exodus_cpu_", 1))
                start = time.perf_counter()
                kernel(*call_args, ctypes.c_int(args.threads))
                times.setdefault((name, version), []).append(time.perf_counter() - start)
    print(f"(B, T, N) = {tuple(args.shape)}, {args.threads} thread(s), median of {args.reps}")
    print(f"  A = {args.a}\n  B = {args.b}")
    for name in calls:
        a, b = (statistics.median(times[(name, version)]) * 1e3 for version in (0, 1))
        print(f"{name:28s} A {a:8.2f} ms   B {b:8.2f} ms   B/A {b / a:.2f}")


if __name__ == "__main__":
    main()
