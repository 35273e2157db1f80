"""Sparse exact backward of a Linear -> LIF block (issue 8; DESIGN.md §6) against the dense one.

A 2-hidden-layer SHD-shaped network (700-H-H-20, T = 500, batch 64; tau_mem 10 ms at dt 2 ms, S3GD's
surrogate 1/(100|v - theta| + 1)^2 truncated at |v - theta| < band theta). For each band: the share of
active neuron-steps of the second block, its backward time (dL/dW2 and dL/ds1) and its saved-for-
backward memory, gradient="sparse" against gradient="exodus" with the same surrogate and against
autograd BPTT through the reference; then a whole training step (forward + backward, all layers).
All timings in one run (medians of --repeats), so the ratios hold on a noisy machine.

    python benchmarks/sparse_backward.py                   # H = 256 and 1024
    python benchmarks/sparse_backward.py --hidden 256 --bands 0.2 --repeats 3
    python benchmarks/sparse_backward.py --threads 1         # one thread: steadier on a shared machine
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

import exodus
from exodus import surrogate as S
from exodus.functional.linear import linear_lif, linear_lif_ref

DT_MS, TAU_MS = 2.0, 10.0
ALPHA = math.exp(-DT_MS / TAU_MS)


def saved_bytes(fn) -> tuple[object, int]:
    """Run fn() and count the bytes of the distinct storages autograd saves meanwhile."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_network(hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Poisson input at 2 % per bin; weights scaled so that the hidden layers fire at ~2-3 % per bin
    # (an untrained network: its membranes visit the band more often than a trained one's).
    x = (torch.rand(64, 500, 700, generator=g) < 0.02).float()
    w1 = torch.randn(hidden, 700, generator=g) * (0.4 / math.sqrt(700 * 0.02))
    w2 = torch.randn(hidden, hidden, generator=g) * (0.3 / math.sqrt(hidden * 0.03))
    w3 = torch.randn(20, hidden, generator=g) / math.sqrt(hidden)
    return x, w1, w2, w3


def block(gradient: str, surrogate):
    if gradient == "bptt":
        return lambda s, w: linear_lif_ref(s, w, None, ALPHA, 1.0, surrogate=surrogate)[0]
    return lambda s, w: linear_lif(s, w, None, ALPHA, 1.0, surrogate=surrogate, gradient=gradient, v_trace=False)[0]


def bench(hidden: int, band: float, repeats: int, with_bptt: bool) -> None:
    surrogate = S.Truncated(S.FastSigmoid(slope=100.0), band)
    x, w1, w2, w3 = make_network(hidden)
    modes = ["sparse", "exodus"] + (["bptt"] if with_bptt else [])
    rows = {}
    for mode in modes:
        f = block(mode, surrogate)
        with torch.no_grad():  # the first block's output (a sparse block tags it with its active points)
            s1 = f(x, w1) if mode != "bptt" else block("exodus", surrogate)(x, w1)
        s1.requires_grad_()
        w2p = w2.clone().requires_grad_()
        g_out = torch.randn(64, 500, hidden)

        out, saved = saved_bytes(lambda: f(s1, w2p))
        active = None
        if mode == "sparse":
            active = out.grad_fn.saved_tensors[7].numel() / out.numel()  # the saved active-point index
        # The backward alone, repeated on one graph (retain_graph), so the forward is not in the timing.
        bwd = median_ms(lambda: torch.autograd.grad(out, [s1, w2p], g_out, retain_graph=True), repeats)
        del out

        w = [w1.clone().requires_grad_(), w2.clone().requires_grad_(), w3.clone().requires_grad_()]
        labels = torch.randint(0, 20, (64,), generator=torch.Generator().manual_seed(1))

        def train_step():
            h1 = f(x, w[0])
            h2 = f(h1, w[1])
            logits = F.linear(h2, w[2]).sum(1)
            loss = F.cross_entropy(logits, labels)
            loss.backward()

        t_step = median_ms(train_step, max(1, repeats // 2))
        rows[mode] = (active, bwd, saved, t_step)
    base = rows["exodus"]
    active = rows["sparse"][0]
    print(f"H={hidden:5d} band={band:<5} active {100 * active:6.2f} %")
    for mode, (_, bwd, saved, step) in rows.items():
        # The saved-tensor count covers the fused blocks' own saves; the reference's per-step autograd
        # graph is not captured the same way, so BPTT's is not printed.
        memory = ("saved        n/a" if mode == "bptt" else
                  f"saved {saved / 2**20:8.1f} MiB ({100 * (1 - saved / base[2]):5.1f} % less)")
        print(f"  {mode:7s} block-2 backward {bwd:9.1f} ms ({base[1] / bwd:6.1f}x vs dense exodus)   {memory}   "
              f"train step {step:8.1f} ms ({base[3] / step:5.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--bands", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-bptt", action="store_true", help="skip autograd BPTT (slow at H = 1024)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch / kernel threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; exodus {exodus.__version__}; "
          f"(64, 500, 700-H-H-20), alpha = exp(-{DT_MS}/{TAU_MS})")
    for hidden in args.hidden:
        for band in args.bands:
            bench(hidden, band, args.repeats, with_bptt=not args.no_bptt and hidden <= 256)


if __name__ == "__main__":
    main()
