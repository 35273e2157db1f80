"""Seconds per RLS training loop (one 2 s trial, 100 RLS updates) of exodus.rls, against its own
torch backend and the plain reference, in one run; and the correlation after a fixed number of
loops on TrainSpikingNet.jl's tutorial network.

    python benchmarks/rls_speed.py                      # everything (~15 min on 2 cores)
    python benchmarks/rls_speed.py --corr-loops 0       # timings only

Rows: N = 4096 with the tutorial's K = 205, L = 29, and N = 4096 / 10 000 with K = 512, L = 45
(the paper's scaling figure; their CPU median at N = 10k: 3.9 s/loop). Per row: the native
backend (compiled loop + block-packed RLS, median of --loops loops after one warm-up loop), the
torch backend (the CUDA code path, run on the CPU; --torch-loops loops, first row only), and the plain reference
(exodus.rls.reference: a Python step loop, one neuron at a time for RLS) timed on a slice of
--reference-steps steps plus one RLS update and scaled to a whole loop. The machine is shared, so
compare the ratios within a run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import exodus.rls as rls
from exodus.rls.network import new_state
from exodus.rls.reference import rls_update_reference, simulate_reference

ROWS = [
    ("N=4096 (tutorial: K=205, L=29)", dict(n_cells=4096)),
    ("N=4096, K=512, L=45", dict(n_cells=4096, k=512, n_plastic=45)),
    ("N=10000, K=512, L=45", dict(n_cells=10000, k=512, n_plastic=45)),
]


def time_backend(params, backend: str, loops: int, warmup: int = 1) -> dict:
    trainer, spont = rls.setup(params, backend=backend)
    for _ in range(warmup):
        trainer.train_loop(evaluate=False)
    seconds, rls_seconds, rates = [], [], []
    for _ in range(loops):
        s = trainer.train_loop(evaluate=False).stats
        seconds.append(s.seconds)
        rls_seconds.append(s.rls_seconds)
        rates.append(s.rate_hz)
    return {"seconds": statistics.median(seconds), "rls_seconds": statistics.median(rls_seconds),
            "all_seconds": seconds, "rate_hz": statistics.mean(rates), "spont_exc_hz": spont.rate_exc,
            "spont_inh_hz": spont.rate_inh}


def time_reference(params, steps: int) -> dict:
    """Per-step Python loop over ``steps`` learning-window steps, plus one per-neuron RLS update;
    scaled to one loop (n_steps steps + n_learn updates)."""
    net = rls.build_network(params)
    gen = torch.Generator().manual_seed(0)
    state = new_state(params, gen)
    w = net.w0.clone()
    P = rls.initial_P(params).to(params.torch_dtype).unsqueeze(0).repeat(params.n_cells, 1, 1)
    begin = params.stim_off_steps + 1
    t0 = time.perf_counter()
    simulate_reference(net, state, begin, begin + steps, w)
    sim = (time.perf_counter() - t0) / steps
    target = torch.zeros(params.n_cells, dtype=params.torch_dtype)
    t0 = time.perf_counter()
    rls_update_reference(P, w, net.plastic_inputs, state.r, state.u_static, target)
    update = time.perf_counter() - t0
    return {"seconds": sim * params.n_steps + update * params.n_learn, "step_seconds": sim, "update_seconds": update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=5, help="timed native loops per row")
    parser.add_argument("--torch-loops", type=int, default=1, help="timed torch-backend loops (row 0 only)")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--corr-loops", type=int, default=100, help="loops of the correlation run (0: skip)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rows", default="0,1,2", help="indices of the rows to time")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}")
    results = {}
    for index in [int(i) for i in args.rows.split(",") if i != ""]:
        name, overrides = ROWS[index]
        params = rls.NetworkParams(**overrides, dtype=args.dtype)
        row = {"native": time_backend(params, "native", args.loops)}
        if args.torch_loops > 0 and index == 0:  # ~3 min per loop at N = 4096 on 2 loaded cores
            row["torch"] = time_backend(params, "torch", args.torch_loops, warmup=0)
        if args.reference_steps > 0:
            row["reference"] = time_reference(params, args.reference_steps)
        results[name] = row
        native = row["native"]["seconds"]
        line = (f"{name:32s} native {native:6.2f} s/loop (RLS {row['native']['rls_seconds']:5.2f} s, "
                f"rate {row['native']['rate_hz']:.2f} Hz)")
        for other in ("torch", "reference"):
            if other in row:
                line += f" | {other} {row[other]['seconds']:8.1f} s ({row[other]['seconds'] / native:5.1f}x)"
        print(line, flush=True)
    if args.corr_loops > 0:
        params = rls.NetworkParams(n_cells=4096, dtype=args.dtype)
        trainer, _ = rls.setup(params, backend="native")
        t0 = time.perf_counter()
        stats = trainer.train(args.corr_loops)
        corr = [s.correlation for s in stats]
        results["correlation"] = {"loops": args.corr_loops, "curve": corr, "final": corr[-1],
                                  "best": max(corr), "mean_last_10": statistics.mean(corr[-10:]),
                                  "median_seconds": statistics.median(s.seconds for s in stats),
                                  "wall_seconds": time.perf_counter() - t0}
        c = results["correlation"]
        print(f"N=4096 tutorial, {args.corr_loops} loops: correlation {c['final']:.3f} (last), "
              f"{c['mean_last_10']:.3f} (mean of the last 10), best {c['best']:.3f}; "
              f"median {c['median_seconds']:.2f} s/loop")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
