"""Speed and memory of recurrent adaptive layers (fused cpu scan) against BPTT and other libraries.

    python benchmarks/recurrent_speed.py [--quick] [--shapes B,T,N ...] [--repeats N] [--budget S]
                                         [--skip KEY ...] [--no-breakdown]

For (batch, time, neurons) = (64, 250, 256) and (64, 1000, 512), float32, one recurrent layer
(x_t + M a_{t-1}, M an N x N trained weight), upstream gradient = a fixed random tensor on the spikes,
gradients for the input and for M:

* exodus ``AdLIF(recurrent=True)`` (Bittar & Garner's adLIF: tau_mem 20, tau_adapt 150, a 0.5, b 1),
  ``ALIF(recurrent=True)`` (Bellec et al.: tau_adapt 200, adapt_threshold 1.8) and
  ``LIF(recurrent=True)`` (tau_mem 20), fused scan on backend="cpu", gradient="exodus";
* the same three through the plain-PyTorch reference loop (backend="torch", gradient="bptt");
* when installed: snnTorch ``RLeaky`` (recurrent LIF), Norse ``LSNNRecurrent`` (recurrent ALIF) and
  sinabs ``ALIFRecurrent`` / ``LIFRecurrent``, each driven the way its documentation shows (see the
  notes printed with the table); a peer that does not import is skipped with the reason.

Every implementation gets the same input current x ~ N(0.06, 0.3^2) and the same recurrent weight
M ~ N(0, 0.5^2 / N); layers that scale their input by (1 - alpha) (adLIF's norm_input, Norse's
Euler step) get x and M multiplied by 1 / (1 - alpha) so that all see the same drive. The mean
firing rate of each is printed (a few percent per neuron-step for all).

Per implementation: forward, backward and forward+backward wall time (median; repetitions of all
implementations interleaved round-robin, so the machine's noise hits all alike; all in one process
with the same torch.get_num_threads()), the peak resident memory one forward+backward adds and the
bytes autograd saves for backward, with ratios against the fastest peer and against the reference
BPTT of the same neuron. Peak memory is /proc/self/status VmHWM after clear_refs with large blocks
returned to the OS on free (Linux, glibc; as in benchmarks/lif_speed.py), measured in a fresh process
per implementation and shape: warm-up step first (the first 8 steps only for an implementation
slower than --slow seconds per step), then the layer's state is reset (exodus' carried spikes are a
view of the last output) and the baseline taken. Measured in the process that ran all the timings,
the heap left by the other implementations inflated some figures up to 6x.
An implementation whose first (warm-up) step takes longer than --budget seconds is not repeated (its
row shows that one step and says so; its memory is not measured); one slower than --slow seconds
gets at most 3 repetitions.

The breakdown section splits exodus' time into the per-step (B, N) x (N, N) products (timed
alone, outputs preallocated), the per-neuron fused scans (the same layer without recurrence: one
kernel launch over all steps), dL/dM and the rest (per-step launches from Python, slicing).
The closing "target check" says PASS or MISS for the targets of the benchmark issue.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import exodus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lif_speed import (PeakMemory, SavedCounter, cpu_model, fmt, fmt_ms, load_average, median,  # noqa: E402
                       print_table, shape_name, source_state, version_of)

SHAPES = [(64, 250, 256), (64, 1000, 512)]
QUICK_SHAPES = [(4, 40, 32)]
INPUT_MEAN, INPUT_STD = 0.06, 0.3  # with REC_STD: 4-6 % of neuron-steps spike for every layer here
REC_STD = 0.5                      # recurrent weight M ~ N(0, REC_STD^2 / N)
TAU_MEM = 20.0
ALPHA = math.exp(-1.0 / TAU_MEM)
NORM_GAIN = 1.0 / (1.0 - ALPHA)    # input scale for layers with norm_input (c = 1 - alpha)
ADLIF = dict(tau_mem=TAU_MEM, tau_adapt=150.0, a=0.5, b=1.0)
ALIF = dict(tau_mem=TAU_MEM, tau_adapt=200.0, adapt_threshold=1.8)

TARGET_SPEEDUP = 5.0      # exodus >= 5x faster than the fastest peer
TARGET_MEMORY = 0.5       # and <= half its peak memory


# ----------------------------------------------------------------------------- inputs

def make_input(shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * INPUT_STD + INPUT_MEAN


def upstream_gradient(shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=generator) * INPUT_STD


def recurrent_weight(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn((n, n), generator=generator) * (REC_STD / math.sqrt(n))


# ----------------------------------------------------------------------------- implementations

@dataclass
class Built:
    forward: Callable[[torch.Tensor], torch.Tensor]  # (B, T, N) input leaf -> (B, T, N) spikes
    reset: Callable[[], None]                        # fresh state before a step
    weight: torch.Tensor                             # the trained N x N recurrent weight (gradient checked)
    note: str = ""


@dataclass
class Impl:
    key: str            # for --skip
    label: str
    model: str          # adLIF / ALIF / LIF
    kind: str           # exodus / bptt / peer
    distribution: str   # for the version
    build: Callable[[int, torch.Tensor], Built]  # (N, M scaled by gain) -> Built
    gain: float = 1.0   # x and M are multiplied by this (layers that scale their input by 1 - alpha)
    # filled per shape
    results: dict = field(default_factory=dict)


def exodus_builder(cls, params: dict, gradient: str, backend: str, gain_note: str = ""):
    def build(n: int, weight: torch.Tensor) -> Built:
        layer = cls(**params, recurrent=True, shape=(n,), gradient=gradient, backend=backend)
        with torch.no_grad():
            layer.weight_rec.copy_(weight)

        def reset():
            layer.reset_states()
            layer.weight_rec.grad = None
        return Built(layer, reset, layer.weight_rec, gain_note)
    return build


def snntorch_builder(n: int, weight: torch.Tensor) -> Built:
    import snntorch
    neuron = snntorch.RLeaky(beta=ALPHA, threshold=1.0, linear_features=n, reset_mechanism="subtract")
    with torch.no_grad():
        neuron.recurrent.weight.copy_(weight)
        neuron.recurrent.bias.zero_()
    neuron.recurrent.bias.requires_grad_(False)

    def forward(inp):  # (B, T, N); snnTorch steps one time bin per call (its documented time loop)
        # unbind, not inp[:, t]: autograd of a slice per step builds a full-size zero gradient per step
        spk = torch.zeros_like(inp[:, 0])
        mem = torch.zeros_like(inp[:, 0])
        spikes = []
        for current in inp.unbind(1):
            spk, mem = neuron(current, spk, mem)
            spikes.append(spk)
        return torch.stack(spikes, 1)

    def reset():
        neuron.reset_mem()  # the module keeps the last spk / mem (and through them the last graph)
        neuron.recurrent.weight.grad = None
    return Built(forward, reset, neuron.recurrent.weight,
                 "RLeaky(linear_features=N), our loop over unbind(1), ATan surrogate, delayed subtract reset")


def norse_builder(n: int, weight: torch.Tensor) -> Built:
    from norse.torch import LSNNParameters, LSNNRecurrent
    rho = math.exp(-1.0 / ALIF["tau_adapt"])
    # Euler step with dt = 1: v += (i - v) / tau_mem; tau_syn_inv = 1 empties the synaptic current each
    # step (i_t = x_t + M z_t reaches v at t + 1); threshold b jumps by beta and decays back to v_th
    # with 1 / tau_adapt: exodus ALIF's theta + 1.8 w, w += (1 - rho) a.
    p = LSNNParameters(tau_syn_inv=torch.as_tensor(1.0), tau_mem_inv=torch.as_tensor(1.0 / TAU_MEM),
                       tau_adapt_inv=torch.as_tensor(1.0 / ALIF["tau_adapt"]), v_th=torch.as_tensor(1.0),
                       v_reset=torch.as_tensor(0.0), beta=torch.as_tensor(ALIF["adapt_threshold"] * (1 - rho)))
    recurrent = torch.nn.Parameter(weight.clone())
    layer = LSNNRecurrent(n, n, p=p, input_weights=torch.eye(n), recurrent_weights=recurrent, autapses=True, dt=1.0)

    def forward(inp):  # Norse is time-major: (T, B, N); the transposes are part of the timed call
        spikes, _ = layer(inp.transpose(0, 1).contiguous())
        return spikes.transpose(0, 1)

    def reset():
        recurrent.grad = None
    return Built(forward, reset, recurrent,
                 "LSNNRecurrent (its own time loop), input_weights = identity (not trained: one extra "
                 "(B,N)x(N,N) product per step fwd and bwd), SuperSpike surrogate, reset to 0")


def sinabs_builder(alif: bool):
    def build(n: int, weight: torch.Tensor) -> Built:
        import sinabs.layers
        from sinabs.activation import SingleSpike
        rec = torch.nn.Linear(n, n, bias=False)
        with torch.no_grad():
            rec.weight.copy_(weight)
        if alif:
            layer = sinabs.layers.ALIFRecurrent(tau_mem=TAU_MEM, tau_adapt=ALIF["tau_adapt"],
                                                adapt_scale=ALIF["adapt_threshold"], rec_connect=rec,
                                                spike_fn=SingleSpike, norm_input=False)
            taus = (layer.tau_mem, layer.tau_adapt)
        else:
            layer = sinabs.layers.LIFRecurrent(tau_mem=TAU_MEM, rec_connect=rec, spike_fn=SingleSpike,
                                               norm_input=False)
            taus = (layer.tau_mem,)
        for tau in taus:  # sinabs makes the time constants parameters; exodus' are not trained here
            tau.requires_grad_(False)

        def reset():
            layer.reset_states()
            rec.weight.grad = None
        return Built(layer, reset, rec.weight,
                     f"{'ALIF' if alif else 'LIF'}Recurrent(rec_connect=Linear(N,N,bias=False)), its own time "
                     "loop (input[:, t] per step), SingleSpike, norm_input=False")
    return build


def implementations() -> list[Impl]:
    cpu, ref = dict(gradient="exodus", backend="cpu"), dict(gradient="bptt", backend="torch")
    gain_note = "x, M scaled by 1/(1-alpha) (norm_input)"
    out = []
    for kind, options, suffix in (("exodus", cpu, "cpu"), ("bptt", ref, "bptt")):
        out += [
            Impl(f"adlif-{suffix}", f"exodus AdLIF ({suffix})", "adLIF", kind, "exodus-snn",
                 exodus_builder(exodus.AdLIF, ADLIF, gain_note=gain_note, **options), NORM_GAIN),
            Impl(f"alif-{suffix}", f"exodus ALIF ({suffix})", "ALIF", kind, "exodus-snn",
                 exodus_builder(exodus.ALIF, ALIF, **options)),
            Impl(f"lif-{suffix}", f"exodus LIF ({suffix})", "LIF", kind, "exodus-snn",
                 exodus_builder(exodus.LIF, dict(tau_mem=TAU_MEM), **options)),
        ]
    out += [
        Impl("snntorch", "snnTorch RLeaky", "LIF", "peer", "snntorch", snntorch_builder),
        Impl("norse", "Norse LSNNRecurrent", "ALIF", "peer", "norse", norse_builder, 1.0 / (1.0 / TAU_MEM)),
        Impl("sinabs-alif", "sinabs ALIFRecurrent", "ALIF", "peer", "sinabs", sinabs_builder(True)),
        Impl("sinabs-lif", "sinabs LIFRecurrent", "LIF", "peer", "sinabs", sinabs_builder(False)),
    ]
    return out


# ----------------------------------------------------------------------------- measurement

class Step:
    """One training step of an implementation: fresh input leaf, forward, backward of the fixed
    upstream gradient on the spikes (gradients for the input and the recurrent weight)."""

    def __init__(self, built: Built, x: torch.Tensor, grad: torch.Tensor):
        self.built, self.x, self.grad = built, x, grad
        self.fwd, self.bwd, self.total = [], [], []

    def run(self, record: bool = True):
        self.built.reset()
        leaf = self.x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        out = self.built.forward(leaf)
        t1 = time.perf_counter()
        torch.autograd.backward(out, self.grad)
        t2 = time.perf_counter()
        if record:
            self.fwd.append(t1 - t0)
            self.bwd.append(t2 - t1)
            self.total.append(t2 - t0)
        return out, leaf, t2 - t0

    def medians(self) -> dict:
        return {"fwd": median(self.fwd), "bwd": median(self.bwd), "total": median(self.total), "reps": len(self.total)}


def measure_shape(impls: list[Impl], shape, reps: int, warmup: int, budget: float, slow: float,
                  progress: Callable[[str], None]) -> dict[str, Step]:
    B, T, N = shape
    x, grad, weight = make_input(shape), upstream_gradient(shape), recurrent_weight(N)
    scaled: dict[float, torch.Tensor] = {}
    steps: dict[str, Step] = {}
    limits: dict[str, int] = {}
    for impl in impls:
        r = impl.results[shape] = {}
        try:
            built = impl.build(N, weight * impl.gain)
        except ImportError as error:
            r["status"] = f"skipped: not installed ({error.name or error})"
            continue
        except Exception as error:  # imports but cannot build this layer
            r["status"] = f"skipped: {type(error).__name__}: {error}"
            continue
        if impl.gain not in scaled:
            scaled[impl.gain] = x if impl.gain == 1.0 else x * impl.gain
        step = Step(built, scaled[impl.gain], grad)
        r["note"] = built.note
        progress(f"{shape_name(shape)} {impl.label}: warm-up")
        try:
            seconds = 0.0
            for i in range(warmup if impl.kind == "exodus" else 1):
                out, leaf, seconds = step.run(record=False)
            r["spike_rate"] = out.float().mean().item()
            r["grad_ok"] = (leaf.grad is not None and built.weight.grad is not None
                            and bool(torch.isfinite(built.weight.grad).all()) and float(built.weight.grad.abs().sum()) > 0)
            del out, leaf
        except Exception as error:
            r["status"] = f"failed: {type(error).__name__}: {error}"
            continue
        steps[impl.key] = step
        if seconds > budget:
            step.fwd, step.bwd, step.total = [math.nan], [math.nan], [seconds]
            r["status"] = f"over budget: one step took {seconds:.0f} s > --budget {budget:.0f} s; not repeated"
            limits[impl.key] = 0
        else:
            limits[impl.key] = min(reps, 3) if seconds > slow else reps
    for round_ in range(reps):
        active = [impl for impl in impls if limits.get(impl.key, 0) > round_]
        if not active:
            break
        progress(f"{shape_name(shape)} round {round_ + 1}/{reps} ({len(active)} implementations)")
        shift = round_ % len(active)
        for impl in active[shift:] + active[:shift]:  # rotate the order: no implementation always first
            out, leaf, _ = steps[impl.key].run()
            del out, leaf
    for impl in impls:
        if impl.key in steps:
            impl.results[shape].update(steps[impl.key].medians())
    return steps


def peak_child(key: str, shape, warmup_steps: int) -> dict:
    """In a fresh process (--peak-child): build one implementation, warm it up with one forward+backward
    over the first `warmup_steps` steps (all of them normally: the libraries' lasting buffers, e.g. for
    BLAS, are then in the baseline as in a training loop), then measure the peak resident memory of one
    full forward+backward and the bytes autograd saves for backward."""
    B, T, N = shape
    impl = next(i for i in implementations() if i.key == key)
    x, grad, weight = make_input(shape) * impl.gain, upstream_gradient(shape), recurrent_weight(N) * impl.gain
    built = impl.build(N, weight)
    memory = PeakMemory()  # before the warm-up: warm-up and measured step see the same malloc settings
    if not memory.available:
        return {"reason": memory.reason}
    short = max(1, min(T, warmup_steps))
    Step(built, x[:, :short].contiguous(), grad[:, :short].contiguous()).run(record=False)
    step = Step(built, x, grad)
    built.reset()  # the state left by the warm-up (e.g. a view of its last output) is freed before the baseline
    gc.collect()

    def one():
        out, leaf, _ = step.run(record=False)
        del out, leaf
    peak = memory.measure(one)
    built.reset()
    leaf = x.detach().requires_grad_(True)
    saved = SavedCounter(x.numel(), x.element_size()).count(lambda: built.forward(leaf))
    return {"peak": peak, "saved": saved.total_bytes}


def measure_memory(impls: list[Impl], shape, slow: float, progress: Callable[[str], None]) -> Optional[str]:
    """Peak memory and saved bytes of every implementation that ran, each in a fresh process (one
    process's heap after the other implementations' steps would blur the figure). The warm-up there
    is a full step, or the first 8 steps for an implementation slower than `slow` seconds per step
    (the loops of small per-step ops whose buffers are all allocated by then). Returns a reason if
    memory cannot be measured here."""
    for impl in impls:
        r = impl.results[shape]
        if "total" not in r:
            continue
        if r.get("status", "").startswith("over budget"):
            r["peak_note"] = "peak not measured (over budget)"
            continue
        short = r["total"] > slow
        if short:
            r["peak_note"] = "peak after a warm-up on 8 steps"
        progress(f"{shape_name(shape)} {impl.label}: peak memory (fresh process)")
        command = [sys.executable, os.path.abspath(__file__), "--threads", str(torch.get_num_threads()),
                   "--peak-child", impl.key, ",".join(map(str, shape)), str(8 if short else shape[1])]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            r["peak_note"] = f"peak not measured: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
            continue
        answer = json.loads(lines[-1])
        if "reason" in answer:
            return answer["reason"]
        r["peak"], r["saved"] = answer["peak"], answer["saved"]
    return None


# ----------------------------------------------------------------------------- breakdown of exodus' time

def breakdown(shape, reps: int, spike_rate: float) -> dict:
    """Where exodus AdLIF's time goes: the same neuron without recurrence (the fused per-neuron scans,
    one launch each), the dense (B, N) x (N, N) products of one sequence timed alone (torch BLAS), and
    what is left."""
    B, T, N = shape
    x, grad = make_input(shape) * NORM_GAIN, upstream_gradient(shape)
    weight = recurrent_weight(N) * NORM_GAIN
    spikes = (torch.rand(shape, generator=torch.Generator().manual_seed(3)) < spike_rate).float()
    gx = torch.randn(shape)
    prev, out = torch.zeros(B, N), torch.empty(B, N)
    wt = weight.t()

    def mm_forward():  # T x M a_{t-1} as per-step BLAS products on strided slices of the spike tensor
        p = prev
        for t in range(T):
            torch.mm(p, wt, out=out)
            p = spikes[:, t]

    def mm_backward():  # T-1 x (c H_{t+1}) M, as the op's backward loop does between its kernel launches
        for t in range(T - 2, -1, -1):
            torch.mm(gx[:, t + 1], weight, out=out)

    def training_step(layer):  # forward and backward of one layer, timed separately
        def run():
            layer.reset_states()
            leaf = x.detach().requires_grad_(True)
            t0 = time.perf_counter()
            y = layer(leaf)
            t1 = time.perf_counter()
            torch.autograd.backward(y, grad)
            return t1 - t0, time.perf_counter() - t1
        return run

    recurrent = exodus.AdLIF(**ADLIF, recurrent=True, shape=(N,), backend="cpu")
    with torch.no_grad():
        recurrent.weight_rec.copy_(weight)
    steps = {"layer": training_step(recurrent),  # the recurrent layer again, in the same rounds as its parts
             "ff": training_step(exodus.AdLIF(**ADLIF, recurrent=False, shape=(N,), backend="cpu"))}
    plain = {"mm_fwd": mm_forward, "mm_bwd": mm_backward}
    samples: dict[str, list[float]] = {k: [] for k in ("fwd", "bwd", "ff_fwd", "ff_bwd", *plain)}
    for call in (*steps.values(), *plain.values()):  # warm-up
        call()
    names = [*steps, *plain]
    for round_ in range(reps):  # interleaved round-robin, rotated: all parts see the same machine
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if name in steps:
                f, b = steps[name]()
                samples["fwd" if name == "layer" else "ff_fwd"].append(f)
                samples["bwd" if name == "layer" else "ff_bwd"].append(b)
            else:
                t0 = time.perf_counter()
                plain[name]()
                samples[name].append(time.perf_counter() - t0)
    return {k: median(v) for k, v in samples.items()}


# ----------------------------------------------------------------------------- printing

def peer_rows(impls: list[Impl], shape) -> list[Impl]:
    return [i for i in impls if i.kind == "peer" and "total" in i.results[shape]
            and not i.results[shape].get("status", "").startswith("over budget")]


def fastest(impls: list[Impl], shape) -> Optional[Impl]:
    peers = peer_rows(impls, shape)
    return min(peers, key=lambda i: i.results[shape]["total"]) if peers else None


def mib(nbytes: Optional[int]) -> Optional[float]:
    return None if nbytes is None else nbytes / 2 ** 20


def fmt_mib(nbytes: Optional[int]) -> str:
    return fmt(mib(nbytes), ".0f" if nbytes is not None and nbytes >= 10 * 2 ** 20 else ".2f")


def print_shape_table(impls: list[Impl], shape) -> None:
    best = fastest(impls, shape)
    bptt = {i.model: i for i in impls if i.kind == "bptt" and "total" in i.results[shape]}
    n = math.prod(shape)
    print(f"\n{shape_name(shape)} (batch x time x neurons): times in ms (median of 'reps'); peak = resident memory one\n"
          f"forward+backward adds (MiB); saved = bytes autograd keeps for backward per neuron-step; "
          f"'x faster' = other / this;\n'peak / fp' = this peak / fastest peer's peak. Fastest peer: "
          f"{best.label if best else 'none measured'}.")
    rows, notes = [], []
    for impl in impls:
        r = impl.results.get(shape, {})
        status = r.get("status", "")
        if r.get("note"):
            notes.append(f"  {impl.label}: {r['note']}")
        if "total" not in r:
            rows.append([impl.label, impl.model] + ["-"] * 10 + [status])
            continue
        over = status.startswith("over budget")
        ref = bptt.get(impl.model)
        vs_peer = best.results[shape]["total"] / r["total"] if best else None
        vs_bptt = ref.results[shape]["total"] / r["total"] if ref and impl is not ref else None
        peak = r.get("peak")
        peak_fp = best.results[shape].get("peak") if best else None
        saved = r.get("saved")
        if r.get("peak_note"):
            status = (status + "; " if status else "") + r["peak_note"]
        rows.append([
            impl.label, impl.model, fmt_ms(r["fwd"]), fmt_ms(r["bwd"]), fmt_ms(r["total"]),
            "1 (warm-up)" if over else str(r["reps"]),
            fmt(vs_peer, ".1f", "x"), fmt(vs_bptt, ".1f", "x"),
            fmt_mib(peak),
            fmt(peak / peak_fp if peak is not None and peak_fp else None, ".2f"),
            fmt(saved / n if saved is not None else None, ".1f"),
            fmt(r["spike_rate"] * 100, ".1f", "%") + ("" if r.get("grad_ok") else " (no dL/dM!)"),
            status,
        ])
    print_table(["implementation", "neuron", "fwd", "bwd", "f+b", "reps", "x faster than fp", "x faster than bptt",
                 "peak MiB", "peak / fp", "saved B", "spikes", "status"], rows)
    print("\n".join(notes))


def print_breakdown(shape, b: dict, threads: int) -> None:
    B, T, N = shape
    gflop = 2 * B * N * N * T / 1e9  # one (B*T, N) x (N, N) product
    rest_f = b["fwd"] - b["ff_fwd"]
    rest_b = b["bwd"] - b["ff_bwd"] - b["mm_bwd"]
    print(f"\nBreakdown of exodus AdLIF (cpu) at {shape_name(shape)} (ms, median; {threads} threads; the layer and "
          f"its parts timed\ninterleaved in the same rounds, after the main table; one dense (B*T,N)x(N,N) product = "
          f"{gflop:.1f} GFLOP):")
    rows = [
        ["forward", "layer (recurrent input summed in the kernel over the spiking neurons, one launch)",
         fmt_ms(b["fwd"]), ""],
        ["", "same neuron without recurrence (fused scan, one launch)", fmt_ms(b["ff_fwd"]), ""],
        ["", f"{T} x torch.mm (B,N)x(N,N) alone: what per-step dense products would cost", fmt_ms(b["mm_fwd"]),
         f"{gflop / b['mm_fwd']:.0f} GFLOP/s"],
        ["", "layer - scan without recurrence (the recurrent sum)", fmt_ms(rest_f), f"{rest_f / T * 1e6:.0f} us/step"],
        ["backward", "layer (one call: reverse step, per-step product c H_(t+1) M, dL/dM over the spikes)",
         fmt_ms(b["bwd"]), ""],
        ["", "same neuron without recurrence (fused reverse scan, one launch)", fmt_ms(b["ff_bwd"]), ""],
        ["", f"{T - 1} x torch.mm (B,N)x(N,N) alone: the products as per-step BLAS calls", fmt_ms(b["mm_bwd"]),
         f"{gflop / b['mm_bwd']:.0f} GFLOP/s"],
        ["", "layer - scan - BLAS products (negative: the driver's products beat BLAS; + dL/dM, barriers)",
         fmt_ms(rest_b), f"{rest_b / T * 1e6:.0f} us/step"],
    ]
    width = max(len(r[1]) for r in rows)
    for r in rows:
        print(f"  {r[0]:<9} {r[1]:<{width}}  {r[2]:>7} ms  {r[3]}".rstrip())


def print_targets(impls: list[Impl], shapes) -> None:
    print("\nTarget check (exodus >= 5x faster than the fastest peer, <= half its peak memory)")

    def check(ok: Optional[bool], text: str) -> None:
        print(f"  [{'n/a ' if ok is None else 'PASS' if ok else 'MISS'}] {text}")

    by_key = {i.key: i for i in impls}
    for shape in shapes:
        best = fastest(impls, shape)
        for key in ("adlif-cpu", "alif-cpu", "lif-cpu"):
            impl = by_key[key]
            r = impl.results[shape]
            if best is None or "total" not in r:
                check(None, f"{impl.label} at {shape_name(shape)}: no peer measured")
                continue
            p = best.results[shape]
            speedup = p["total"] / r["total"]
            check(speedup >= TARGET_SPEEDUP,
                  f"{impl.label} vs fastest peer ({best.label}) at {shape_name(shape)}: {speedup:.1f}x faster "
                  f"({fmt_ms(r['total'])} vs {fmt_ms(p['total'])} ms)")
            if r.get("peak") is not None and p.get("peak"):
                share = r["peak"] / p["peak"]
                check(share <= TARGET_MEMORY, f"{impl.label} peak memory / fastest peer's at {shape_name(shape)}: "
                                              f"{share:.2f} ({fmt_mib(r['peak'])} vs {fmt_mib(p['peak'])} MiB)")
            # the same neuron model in the peers
            same = [i for i in peer_rows(impls, shape) if i.model == impl.model]
            if same:
                peer = min(same, key=lambda i: i.results[shape]["total"])
                q = peer.results[shape]
                print(f"         same neuron ({impl.model}): fastest peer {peer.label} {fmt_ms(q['total'])} ms -> "
                      f"{q['total'] / r['total']:.1f}x"
                      + (f", peak {r['peak'] / q['peak']:.2f}x theirs" if r.get("peak") and q.get("peak") else ""))
    print(f"  load average at the end: {load_average()}")


# ----------------------------------------------------------------------------- main

def parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is B,T,N (three positive integers), got {text!r}")
    return parts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: shape {QUICK_SHAPES[0]}, 2 repetitions")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=None, metavar="B,T,N",
                        help="shapes to measure (default: 64,250,256 64,1000,512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per implementation (default 5)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="an implementation whose warm-up step takes longer (seconds) is not repeated (default 60)")
    parser.add_argument("--slow", type=float, default=10.0,
                        help="an implementation whose warm-up step takes longer (seconds) gets at most 3 repetitions")
    parser.add_argument("--skip", nargs="+", default=[], metavar="KEY", help="implementations to leave out: " +
                        ", ".join(i.key for i in implementations()))
    parser.add_argument("--no-breakdown", action="store_true", help="do not time the parts of exodus' step")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) first")
    parser.add_argument("--peak-child", nargs=3, metavar=("KEY", "B,T,N", "WARMUP_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        print(json.dumps(peak_child(args.peak_child[0], parse_shape(args.peak_child[1]), int(args.peak_child[2]))))
        return 0
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    reps = args.repeats or (2 if args.quick else 5)
    warmup = 1 if args.quick else 2
    unknown = set(args.skip) - {i.key for i in implementations()}
    if unknown:
        parser.error(f"unknown --skip keys: {', '.join(sorted(unknown))}")
    impls = [i for i in implementations() if i.key not in args.skip]
    threads = torch.get_num_threads()

    print("exodus recurrent adaptive layers: speed / memory benchmark")
    print(f"  command     : python {' '.join(sys.argv)}")
    print(f"  machine     : {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}")
    print(f"  software    : python {platform.python_version()}, torch {torch.__version__}, exodus {exodus.__version__}")
    peers = sorted({i.distribution for i in impls if i.kind == "peer"})
    print("  peers       : " + ", ".join(f"{d} {version_of(d)}" for d in peers) + "  ('?' = not installed)")
    print(f"  source      : {source_state()}")
    print(f"  load        : {load_average()} (1/5/15-min load average at the start; other processes share the cores)")
    print(f"  threads     : torch.get_num_threads() = {threads} for every implementation (one process; the exodus "
          f"CPU kernels use as many)" + (" [set by --threads]" if args.threads else " [torch default]"))
    print(f"  neurons     : float32, threshold 1; adLIF tau_mem={ADLIF['tau_mem']:g} tau_adapt={ADLIF['tau_adapt']:g} "
          f"a={ADLIF['a']:g} b={ADLIF['b']:g} (norm_input); ALIF tau_mem={TAU_MEM:g} tau_adapt={ALIF['tau_adapt']:g} "
          f"beta={ALIF['adapt_threshold']:g}; LIF tau_mem={TAU_MEM:g}; subtract reset, SingleExponential surrogate")
    print(f"  input       : x ~ N({INPUT_MEAN}, {INPUT_STD}^2), recurrent M ~ N(0, {REC_STD}^2/N) (x{NORM_GAIN:.1f} both "
          f"for norm_input layers), upstream gradient N(0, {INPUT_STD}^2) on the spikes; gradients for x and M")
    print(f"  repetitions : {reps} per implementation (+{warmup} warm-up for exodus, 1 for the others), interleaved "
          f"round-robin; at most 3 if a step takes > {args.slow:g} s, none if > {args.budget:g} s; medians")
    t0 = time.perf_counter()
    for i in impls:
        if i.kind == "exodus":
            i.build(8, recurrent_weight(8)).forward(make_input((1, 2, 8)))
    print(f"  cpu kernels : ready in {time.perf_counter() - t0:.1f} s (compiled once per machine, then cached)")
    sys.stdout.flush()

    def progress(text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    for shape in shapes:
        measure_shape(impls, shape, reps, warmup, args.budget, args.slow, progress)
    breakdowns = {}
    by_key = {i.key: i for i in impls}
    if not args.no_breakdown and "adlif-cpu" in by_key:
        for shape in shapes:
            if "total" in by_key["adlif-cpu"].results[shape]:
                progress(f"{shape_name(shape)} breakdown")
                breakdowns[shape] = breakdown(shape, max(3, reps), by_key["adlif-cpu"].results[shape]["spike_rate"])
    # peak memory: one fresh process per implementation and shape (the timings' heap stays out of it)
    memory_reason = None
    for shape in shapes:
        memory_reason = memory_reason or measure_memory(impls, shape, args.slow, progress)

    for shape in shapes:
        print_shape_table(impls, shape)
    if memory_reason:
        print(f"  ({memory_reason})")
    for shape, b in breakdowns.items():
        print_breakdown(shape, b, threads)
    if all(k in by_key for k in ("adlif-cpu", "alif-cpu", "lif-cpu")):
        print_targets(impls, shapes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
