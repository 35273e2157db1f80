"""Online gradients on a stack of blocks (issue 9; DESIGN.md §7): how close to full BPTT?

Two LinearLIF(gradient="online") blocks (in-H-H) and a linear readout with a per-step squared-error
loss, trained on one sequence in chunks: exact within each block across chunks, but a chunk's loss
reaches the lower block only within the chunk (the e-prop approximation across layers). Prints, per
layer and chunk size, the cosine and norm ratio of the accumulated gradient against full-sequence
BPTT of the same network (float64).

    python benchmarks/online_stack_cosine.py
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import exodus
from exodus import surrogate as S
from exodus.online import fit_sequence


def network(gradient: str, n_in: int, hidden: int, seed: int):
    torch.manual_seed(seed)
    surrogate = S.Truncated(S.FastSigmoid(10.0), 0.3)
    blocks = [exodus.LinearLIF(n_in, hidden, tau_mem=10.0, gradient=gradient, surrogate=surrogate),
              exodus.LinearLIF(hidden, hidden, tau_mem=10.0, gradient=gradient, surrogate=surrogate)]
    with torch.no_grad():
        blocks[0].weight.mul_(3.0)
        blocks[1].weight.mul_(3.0)
    return torch.nn.Sequential(*blocks, torch.nn.Linear(hidden, 5)).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=400)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 10, 50, 400])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    n_in, hidden, batch = 40, 64, 8
    print(f"{n_in}-{hidden}-{hidden}-5, batch {batch}, T = {args.T}, float64; mean over {args.seeds} seeds")
    for chunk in args.chunks:
        cos = {0: [], 1: []}
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(100 + seed)
            x = (torch.rand(batch, args.T, n_in, generator=g) < 0.1).double()
            target = torch.randn(batch, args.T, 5, generator=g, dtype=torch.float64)
            ref = network("exodus", n_in, hidden, seed)
            F.mse_loss(ref(x), target, reduction="sum").backward()
            net = network("online", n_in, hidden, seed)
            fit_sequence(net, x, lambda out, w: F.mse_loss(out, target[:, w], reduction="sum"), chunk)
            for layer in (0, 1):
                a, b = net[layer].weight.grad.flatten(), ref[layer].weight.grad.flatten()
                cos[layer].append((float(a @ b / (a.norm() * b.norm())), float(a.norm() / b.norm())))
        row = "  ".join(f"block {layer + 1}: cosine {sum(c for c, _ in v) / len(v):.6f}, "
                        f"norm ratio {sum(r for _, r in v) / len(v):.4f}" for layer, v in cos.items())
        print(f"chunk {chunk:4d}   {row}")


if __name__ == "__main__":
    main()
