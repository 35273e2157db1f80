"""Online gradients (issue 9; DESIGN.md §7): peak memory and time per step against the sequence length.

A 700-256-20 network (LinearLIF 700 -> 256, then a linear readout with a per-step squared-error loss;
batch 16, Poisson input at 2 % per bin, tau_mem 10 steps, S3GD's truncated surrogate at band 0.1)
trained on one sequence of T steps:

* online       LinearLIF(gradient="online"), chunks of 100 steps, backward per chunk (input streamed)
* exodus BPTT  LinearLIF(gradient="exodus") over the whole sequence, one backward
* autograd BPTT the reference loop under autograd (only up to --bptt-max-T)

Each (mode, T) runs in a fresh process (with MALLOC_MMAP_THRESHOLD_=65536, so that freed blocks of 64 KiB
and more go back to the system and the peak resident size follows the live memory; --default-malloc
keeps glibc's defaults, whose heap high-water mark varies by ~10 MB between identical runs); peak memory is the process' peak resident set size minus its
size after imports and a warm-up. The gradients of online and exodus BPTT are the same (checked here at
the smallest T). The baseline is taken after a 4-step warm-up (kernels loaded), so the figure includes
the online traces (B·N·N_in, held twice during a chunk) and every buffer of the run. Timings from one
run on one machine: read the ratios.

    python benchmarks/online_memory.py                        # T = 1e3, 1e4, 1e5
    python benchmarks/online_memory.py --T 1000 10000 --batch 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

CHUNK = 100


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(mode: str, T: int, batch: int, check: bool) -> dict:
    import torch
    import torch.nn.functional as F

    import exodus
    from exodus import surrogate as S
    from exodus.online import fit_sequence

    torch.manual_seed(0)
    surrogate = S.Truncated(S.FastSigmoid(slope=100.0), 0.1)
    gradient = {"online": "online", "exodus": "exodus", "bptt": "bptt"}[mode]
    block = exodus.LinearLIF(700, 256, tau_mem=10.0, gradient=gradient, surrogate=surrogate)
    with torch.no_grad():
        block.weight.normal_(0.0, 0.4 / math.sqrt(700 * 0.02))
    readout = torch.nn.Linear(256, 20)
    model = torch.nn.Sequential(block, readout)

    def chunk_input(start: int, stop: int) -> torch.Tensor:  # the same input whatever the chunking
        g = torch.Generator().manual_seed(start)
        return (torch.rand(batch, stop - start, 700, generator=g) < 0.02).float()

    def target(start: int, stop: int) -> torch.Tensor:
        return torch.sin(torch.arange(start, stop, dtype=torch.float32) / 50.0).view(1, -1, 1).expand(batch, -1, 20)

    def run() -> None:
        model.zero_grad()
        block.reset_states()
        if mode == "online":
            for start in range(0, T, CHUNK):
                stop = min(T, start + CHUNK)
                F.mse_loss(model(chunk_input(start, stop)), target(start, stop), reduction="sum").backward()
        else:
            x = torch.cat([chunk_input(s, min(T, s + CHUNK)) for s in range(0, T, CHUNK)], 1)
            F.mse_loss(model(x), target(0, T), reduction="sum").backward()

    # warm-up on 4 steps (loads the kernels; the traces and buffers of the real run are not yet there)
    saved_T = T
    T = 4
    run()
    T = saved_T
    base = rss_mb()
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    out = {"mode": mode, "T": T, "peak_mb": rss_mb() - base, "ms_per_step": 1e3 * seconds / T,
           "active": None}
    if check:
        out["grad_w"] = block.weight.grad.flatten()[:2000].tolist()
    return out


def run_child(mode: str, T: int, batch: int, check: bool, default_malloc: bool) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(T), str(batch), str(int(check))]
    env = dict(os.environ)
    if not default_malloc:  # large blocks from mmap, returned at free: the peak RSS then follows what is live
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"mode": mode, "T": T, "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, T, batch, check = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), bool(int(sys.argv[5]))
        print(json.dumps(child(mode, T, batch, check)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bptt-max-T", type=int, default=1000)
    parser.add_argument("--exodus-max-T", type=int, default=10000,
                        help="exodus BPTT holds the whole input and h: (batch, T, 700 + 256) floats")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default malloc thresholds in the children (its heap high-water mark then "
                             "varies by ~10 MB from run to run, whatever T)")
    args = parser.parse_args()
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 700-256-20, batch {args.batch}, "
          f"chunks of {CHUNK}; malloc: {'default' if args.default_malloc else 'MALLOC_MMAP_THRESHOLD_=65536'}")
    rows = []
    for i, T in enumerate(args.T):
        for mode in ("online", "exodus", "bptt"):
            if (mode == "bptt" and T > args.bptt_max_T) or (mode == "exodus" and T > args.exodus_max_T):
                continue
            rows.append(run_child(mode, T, args.batch, (i == 0 and mode != "bptt"), args.default_malloc))
            r = rows[-1]
            if "error" in r:
                print(f"T={T:>7} {mode:7s} failed: {r['error']}")
            else:
                print(f"T={T:>7} {mode:7s} peak {r['peak_mb']:9.1f} MB   {r['ms_per_step']:8.3f} ms/step", flush=True)
    checked = [r for r in rows if "grad_w" in r]
    if len(checked) == 2:
        a, b = (torch.tensor(r["grad_w"]) for r in checked)
        print(f"online vs exodus BPTT gradient (first 2000 weights) at T={checked[0]['T']}: max relative difference "
              f"{float((a - b).abs().max() / b.abs().max()):.2e}")
    online = {r["T"]: r for r in rows if r["mode"] == "online" and "error" not in r}
    exodus_rows = {r["T"]: r for r in rows if r["mode"] == "exodus" and "error" not in r}
    if len(online) >= 2:
        Ts = sorted(online)
        print(f"online peak memory from T={Ts[0]} to T={Ts[-1]}: x{online[Ts[-1]]['peak_mb'] / online[Ts[0]]['peak_mb']:.2f}")
    for T in sorted(set(online) & set(exodus_rows)):
        print(f"T={T}: exodus BPTT / online peak memory x{exodus_rows[T]['peak_mb'] / online[T]['peak_mb']:.1f}, "
              f"online / exodus time per step x{online[T]['ms_per_step'] / exodus_rows[T]['ms_per_step']:.2f}")


if __name__ == "__main__":
    main()
