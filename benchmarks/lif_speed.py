"""Speed and memory of the fused LIF scan (gradient="exodus", cpu backend) against BPTT.

    python benchmarks/lif_speed.py [--quick] [--skip-bptt-large] [--skip-others] [--reps N]

For (batch, time, neurons) = (16, 500, 256), (64, 500, 1024), (16, 2000, 256), float32,
one ``exodus.LIF(tau_mem=20)`` layer, upstream gradient = a fixed random tensor on the spikes:

* forward, backward and forward+backward wall time (median of several repetitions after a
  warm-up) of gradient="exodus" (fused scan, cpu backend) and gradient="bptt" (autograd
  through the plain-PyTorch reference loop), and their ratio;
* bytes saved for backward per neuron-step, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages of the packed tensors), and
  the peak resident memory a forward+backward adds (Linux: /proc/self/status VmHWM);
* effective memory bandwidth of the fused scan — the bytes it must move (forward: read x,
  write spikes and the saved pre-reset membrane h, plus the v trace when one is returned;
  backward: read h and the spike gradient, write the input gradient) divided by its time —
  as a percentage of a streaming ``torch.add(x, 1, out=y)`` of the same size, timed
  interleaved with the scan in the same run (the machine's noise hits both alike);
* diagnostics: are the kernels memory- or compute-bound (each kernel, outputs preallocated,
  against a torch op moving the same bytes, at 1 thread and at the default thread count;
  cost of fresh output memory);
* optional: snnTorch (snntorch.Leaky), SpikingJelly (LIFNode, step_mode="m") and sinabs
  (sinabs.layers.LIF) at (16, 500, 256) when they are installed.

Timings are wall-clock on whatever else runs on the machine (the load average is printed);
ratios against baselines measured in the same run are what to read. The closing
"target check" says PASS or MISS for each target of the benchmark issue.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Callable, Optional

import torch

import exodus
from exodus import functional

SHAPES = [(16, 500, 256), (64, 500, 1024), (16, 2000, 256)]
SMALL, LARGE, LONG = SHAPES
TAU_MEM = 20.0
INPUT_MEAN, INPUT_STD = 0.06, 0.3  # about 5 % of neuron-steps spike with tau_mem = 20, threshold 1

TARGET_SPEEDUP = 100.0
TARGET_BANDWIDTH = 0.70
TARGET_LINEAR_TOLERANCE = 1.25  # backward time per neuron-step at T=2000 / at T=500
TARGET_SAVED_ELEMENTS = 1.0


# ----------------------------------------------------------------------------- environment

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_state() -> str:
    """Commit of the exodus checkout being measured, and whether its cuda/ or exodus/ differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(exodus.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "cuda", "exodus"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        changed = [line[3:] for line in status if line.strip()]
        return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean cuda/, exodus/)")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------- measurement tools

def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def make_input(shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * INPUT_STD + INPUT_MEAN


def upstream_gradient(shape) -> torch.Tensor:
    return make_input(shape, seed=1) - INPUT_MEAN


class SavedCounter:
    """Bytes of the unique storages autograd packs for backward during a forward pass.
    `scaling_bytes` counts only storages at least as large as one (batch, time, neurons) tensor."""

    def __init__(self, neuron_steps: int, element_size: int):
        self.neuron_steps = neuron_steps
        self.element_size = element_size
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        self.storages[key] = max(self.storages.get(key, 0), storage.nbytes())
        return tensor

    def count(self, forward: Callable[[], object]) -> "SavedCounter":
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
            out = forward()
        del out
        return self

    @property
    def total_bytes(self) -> int:
        return sum(self.storages.values())

    @property
    def scaling_bytes(self) -> int:
        big = self.neuron_steps * self.element_size
        return sum(n for n in self.storages.values() if n >= big)

    def elements(self, nbytes: int) -> float:
        """Elements per neuron-step."""
        return nbytes / self.element_size / self.neuron_steps


class PeakMemory:
    """Peak resident memory a call adds (Linux with glibc). The peak is reset through
    /proc/self/clear_refs; malloc is set to return every block above 64 KiB to the OS on
    free and trimmed before each call, so the resident size follows the live tensors.
    This changes malloc's behaviour for the rest of the process: use it after the timings."""

    M_MMAP_THRESHOLD = -3  # glibc <malloc.h>

    def __init__(self):
        self.reason = None
        try:
            self.libc = ctypes.CDLL(None)
            self.libc.mallopt, self.libc.malloc_trim  # noqa: B018 (presence check)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if self._status("VmHWM") is None:
                raise OSError("no VmHWM in /proc/self/status")
        except (OSError, AttributeError) as error:
            self.reason = f"peak memory not measurable here ({error})"
            return
        self.libc.mallopt(self.M_MMAP_THRESHOLD, 64 * 1024)

    @property
    def available(self) -> bool:
        return self.reason is None

    @staticmethod
    def _status(key: str) -> Optional[int]:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    def measure(self, call: Callable[[], None]) -> Optional[int]:
        if not self.available:
            return None
        # exodus' output pool keeps freed blocks resident for the next step (backends/memory.py):
        # unmap them, or memory the call needs would count as already there.
        exodus.backends.memory.release()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = self._status("VmRSS")
        call()
        return max(0, self._status("VmHWM") - before)


class TrainingStep:
    """forward = layer(x) on a fresh input leaf (reset state first), backward = autograd with a
    fixed upstream gradient on the output."""

    def __init__(self, layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
                 reset: Callable[[], None] = lambda: None):
        self.layer, self.x, self.grad, self.reset = layer, x, grad, reset

    def run(self):
        """One step; returns (forward seconds, backward seconds, output, input leaf)."""
        self.reset()
        leaf = self.x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        out = self.layer(leaf)
        t1 = time.perf_counter()
        torch.autograd.backward(out, self.grad)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out, leaf

    def time(self, reps: int, warmup: int, between: Optional[Callable[[], None]] = None) -> dict:
        """Medians of forward, backward and their sum; `between` runs after each repetition."""
        forward, backward, total = [], [], []
        for i in range(warmup + reps):
            f, b, out, leaf = self.run()
            del out, leaf
            if i >= warmup:
                forward.append(f)
                backward.append(b)
                total.append(f + b)
            if between is not None:
                between()
        return {"fwd": median(forward), "bwd": median(backward), "total": median(total), "reps": reps}

    def saved(self) -> SavedCounter:
        self.reset()
        leaf = self.x.detach().requires_grad_(True)
        return SavedCounter(self.x.numel(), self.x.element_size()).count(lambda: self.layer(leaf))

    def peak(self, memory: PeakMemory) -> Optional[int]:
        def step():
            _, _, out, leaf = self.run()
            del out, leaf
        return memory.measure(step)


def time_call(function: Callable[[], object], reps: int, warmup: int = 2) -> float:
    samples = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        function()
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return median(samples)


class Interleaved:
    """A baseline timed `repeats_per_tick` times at every `tick` (called between the
    repetitions of another measurement)."""

    def __init__(self, function: Callable[[], object], repeats_per_tick: int = 3):
        self.function, self.repeats, self.samples = function, repeats_per_tick, []
        for _ in range(2):
            function()

    def tick(self) -> None:
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            self.function()
            self.samples.append(time.perf_counter() - t0)

    @property
    def time(self) -> float:
        return median(self.samples)


# ----------------------------------------------------------------------------- exodus vs bptt

def exodus_layer(gradient: str) -> exodus.LIF:
    return exodus.LIF(tau_mem=TAU_MEM, gradient=gradient, backend="cpu")


def measure_shape(shape, reps: int, warmup: int, bptt_reps: int) -> dict:
    x, grad = make_input(shape), upstream_gradient(shape)
    result = {"shape": shape, "neuron_steps": x.numel()}

    # exodus, interleaved with the streaming baseline torch.add(x, 1, out=y)
    layer = exodus_layer("exodus")
    step = TrainingStep(layer, x, grad, layer.reset_states)
    y = torch.empty_like(x)
    add = Interleaved(lambda: torch.add(x, 1, out=y))
    result["exodus"] = step.time(reps, warmup, between=add.tick)
    result["exodus_step"] = step
    result["add_time"] = add.time
    _, _, spikes, leaf = step.run()
    result["spike_rate"] = spikes.float().mean().item()
    saved = step.saved()
    result["exodus_saved"] = saved
    # bytes the fused scan must move: forward reads x, writes the outputs it returns and h
    # (the time-sized saved storage); backward reads h and the spike gradient, writes dL/dx.
    trace = layer.recordings.get("v") if layer.record_states else None
    result["fwd_bytes"] = x.nbytes + spikes.nbytes + saved.scaling_bytes + (trace.nbytes if trace is not None else 0)
    result["bwd_bytes"] = saved.scaling_bytes + grad.nbytes + leaf.grad.nbytes
    del spikes, leaf

    # bptt: autograd through the reference loop (few repetitions: slow)
    reference = exodus_layer("bptt")
    result["bptt_step"] = TrainingStep(reference, x, grad, reference.reset_states)
    if bptt_reps > 0:
        result["bptt"] = result["bptt_step"].time(bptt_reps, warmup=0)
        result["bptt_saved"] = result["bptt_step"].saved()
    return result


# ----------------------------------------------------------------------------- diagnostics

def kernel_calls(x: torch.Tensor, grad: torch.Tensor) -> dict:
    """The CPU forward/backward kernels with preallocated outputs (no allocation, no autograd),
    through exodus' internal launch API; empty (with a note) if that API is not as expected."""
    try:
        from exodus.backends import cpu, launch
        B, T, N = x.shape
        alpha = torch.full((N,), math.exp(-1.0 / TAU_MEM))
        theta, v0 = torch.ones(N), torch.zeros(B, N)
        spikes, h, v_trace = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        v_last, grad_x = x.new_empty((B, N)), torch.empty_like(x)
        grad_v0, grad_alpha, grad_theta = (torch.zeros(B, N) for _ in range(3))
        no_trace, with_trace = launch.LifOptions(v_trace=False), launch.LifOptions(v_trace=True)
        forward = launch.lif_forward_plan(x, alpha, theta, v0, spikes, v_last, h, no_trace)
        forward_trace = launch.lif_forward_plan(x, alpha, theta, v0, spikes, v_trace, h, with_trace)
        backward = launch.lif_backward_plan(h, grad, None, alpha, theta, v0, grad_x, grad_v0, grad_alpha,
                                            grad_theta, no_trace)
        calls = {"kernel_fwd": lambda: cpu.run(forward, torch.float32),
                 "kernel_fwd_trace": lambda: cpu.run(forward_trace, torch.float32),
                 "kernel_bwd": lambda: cpu.run(backward, torch.float32)}
        calls["kernel_fwd"]()
        calls["kernel_bwd"]()
        return calls
    except Exception as error:  # internal API changed: skip this part of the diagnostics, say so
        return {"note": f"kernel-only timing skipped: {type(error).__name__}: {error}"}


DIAGNOSTIC_ROWS = [  # (key, bytes per element, description)
    ("add_out", 8, "torch.add(x, 1, out=y)                         read 1, write 1"),
    ("add_alloc", 8, "torch.add(x, 1), fresh output each call        read 1, write 1"),
    ("add2_out", 12, "torch.add(a, b, out=c)                         read 2, write 1"),
    ("addcmul_out", 16, "torch.addcmul(a, b, c, out=d)                  read 3, write 1"),
    ("kernel_fwd", 12, "exodus fwd kernel, preallocated, no v trace    read x; write s, h"),
    ("kernel_fwd_trace", 16, "exodus fwd kernel, preallocated, v trace       read x; write s, v, h"),
    ("kernel_bwd", 12, "exodus bwd kernel, preallocated                read h, ds; write dx"),
    ("op_fwd", 12, "functional.lif fwd, no grad, fresh outputs     read x; write s, h"),
]


def diagnostics(shape, reps: int) -> dict:
    """Memory- or compute-bound? Each kernel against a torch op moving the same bytes per element,
    at 1 thread and at the default thread count. Returns {threads: {name: seconds}} and a note."""
    x, grad = make_input(shape), upstream_gradient(shape)
    alpha = math.exp(-1.0 / TAU_MEM)
    a, b, c, d = (x.clone() for _ in range(4))
    calls = {
        "add_out": lambda: torch.add(a, 1, out=d),
        "add_alloc": lambda: torch.add(a, 1),
        "add2_out": lambda: torch.add(a, b, out=c),
        "addcmul_out": lambda: torch.addcmul(a, b, c, out=d),
    }
    kernels = kernel_calls(x, grad)
    note = kernels.pop("note", None)
    calls.update(kernels)

    def op_forward():
        with torch.no_grad():
            return functional.lif(x, alpha, backend="cpu", v_trace=False)
    try:
        op_forward()
        calls["op_fwd"] = op_forward
    except TypeError:  # no v_trace option in this version
        pass

    threads = torch.get_num_threads()
    timings = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        try:
            timings[n] = {name: time_call(call, reps) for name, call in calls.items()}
        finally:
            torch.set_num_threads(threads)
    return {"timings": timings, "note": note}


# ----------------------------------------------------------------------------- other libraries

def other_libraries(shape, reps: int) -> list[dict]:
    """The same neuron (tau 20, threshold 1, subtract reset, one spike per bin) in other
    libraries, forward + backward at `shape`. Each entry: name, version, status, times, step."""
    x, grad = make_input(shape), upstream_gradient(shape)
    beta = math.exp(-1.0 / TAU_MEM)
    entries = []

    def run(name, distribution, build):
        entry = {"name": name}
        entries.append(entry)
        try:
            layer, reset, note = build()
        except ImportError as error:
            entry["status"] = f"not installed ({error.name or error})"
            return
        except Exception as error:  # imports but cannot build this layer
            entry["status"] = f"failed: {type(error).__name__}: {error}"
            return
        entry["version"] = version_of(distribution)
        step = TrainingStep(layer, x, grad, reset)
        try:
            entry.update(step.time(reps, warmup=1))
            entry["saved"] = step.saved()
            _, _, out, _ = step.run()
            entry["spike_rate"] = out.float().mean().item()
            entry["status"] = note
            entry["step"] = step
        except Exception as error:
            entry["status"] = f"failed: {type(error).__name__}: {error}"

    def snntorch_layer():
        import snntorch
        neuron = snntorch.Leaky(beta=beta, threshold=1.0, reset_mechanism="subtract")

        def forward(inp):  # (B, T, N); snnTorch steps one time bin per call
            # unbind, not inp[:, t]: autograd of a slice per step builds a full-size zero gradient
            # per step (O(T^2) backward)
            mem = torch.zeros_like(inp[:, 0])
            spikes = []
            for current in inp.unbind(1):
                spk, mem = neuron(current, mem)
                spikes.append(spk)
            return torch.stack(spikes, 1)
        return forward, lambda: None, "Leaky, python loop over time, default surrogate"

    def spikingjelly_layer():
        from spikingjelly.activation_based import functional as sj_functional
        from spikingjelly.activation_based import neuron as sj_neuron
        node = sj_neuron.LIFNode(tau=TAU_MEM, decay_input=False, v_threshold=1.0, v_reset=None, step_mode="m")
        if hasattr(node, "backend"):
            node.backend = "torch"

        def forward(inp):  # time-major (T, B, N); the transposes are part of the timed call
            return node(inp.transpose(0, 1).contiguous()).transpose(0, 1)
        return forward, lambda: sj_functional.reset_net(node), \
            "LIFNode step_mode='m', its CPU path, decay_input=False, soft reset"

    def sinabs_layer():
        import sinabs.layers
        from sinabs.activation import SingleSpike
        neuron = sinabs.layers.LIF(tau_mem=TAU_MEM, spike_fn=SingleSpike, norm_input=False)
        return neuron, neuron.reset_states, "layers.LIF, SingleSpike, norm_input=False"

    run("snnTorch", "snntorch", snntorch_layer)
    run("SpikingJelly", "spikingjelly", spikingjelly_layer)
    run("sinabs", "sinabs", sinabs_layer)
    return entries


# ----------------------------------------------------------------------------- printing

def fmt_ms(seconds: Optional[float]) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt(value: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def shape_name(shape) -> str:
    return "x".join(map(str, shape))


def per_step(nbytes: Optional[int], neuron_steps: int) -> Optional[float]:
    return None if nbytes is None else nbytes / neuron_steps


def print_main_table(results: list[dict]) -> None:
    print("\nTimes in ms (median). speedup = bptt / exodus. saved = bytes packed for backward per neuron-step;\n"
          "peak = peak resident memory added by one forward+backward (outputs, saved tensors, gradients,\n"
          "temporaries) per neuron-step.")
    rows = []
    for r in results:
        e, b, n = r["exodus"], r.get("bptt"), r["neuron_steps"]
        rows.append([
            shape_name(r["shape"]), f"{r['spike_rate'] * 100:.1f}%",
            fmt_ms(e["fwd"]), fmt_ms(e["bwd"]), fmt_ms(e["total"]),
            fmt_ms(b["fwd"]) if b else "skipped", fmt_ms(b["bwd"]) if b else "-", fmt_ms(b["total"]) if b else "-",
            fmt(b["fwd"] / e["fwd"], ".0f", "x") if b else "-", fmt(b["total"] / e["total"], ".0f", "x") if b else "-",
            fmt(per_step(r["exodus_saved"].total_bytes, n), ".2f"),
            fmt(per_step(r["bptt_saved"].total_bytes, n), ".2f") if b else "-",
            fmt(per_step(r.get("exodus_peak"), n), ".1f"), fmt(per_step(r.get("bptt_peak"), n), ".1f"),
        ])
    print_table(["B x T x N", "spikes", "exo fwd", "exo bwd", "exo f+b", "bptt fwd", "bptt bwd", "bptt f+b",
                 "fwd speedup", "f+b speedup", "saved B exo", "saved B bptt", "peak B exo", "peak B bptt"], rows)


def print_bandwidth_table(results: list[dict]) -> None:
    print("\nEffective bandwidth of the fused scan vs torch.add(x, 1, out=y) (8 B per element), timed interleaved.\n"
          "Bytes per neuron-step: forward = read x + write spikes + write h (+ v trace if returned);\n"
          "backward = read h + read dL/dspikes + write dL/dx.")
    rows = []
    for r in results:
        e, n = r["exodus"], r["neuron_steps"]
        rows.append([shape_name(r["shape"]), fmt_ms(r["add_time"]), f"{r['add_bw'] / 1e9:.1f}",
                     f"{r['fwd_bytes'] / n:.0f}", f"{r['fwd_bw'] / 1e9:.1f}", f"{r['fwd_bw'] / r['add_bw']:.0%}",
                     f"{r['bwd_bytes'] / n:.0f}", f"{r['bwd_bw'] / 1e9:.1f}", f"{r['bwd_bw'] / r['add_bw']:.0%}",
                     f"{r['tot_bw'] / r['add_bw']:.0%}", f"{e['fwd'] / n * 1e9:.2f}", f"{e['bwd'] / n * 1e9:.2f}"])
    print_table(["B x T x N", "add ms", "add GB/s", "fwd B/step", "fwd GB/s", "fwd %add", "bwd B/step",
                 "bwd GB/s", "bwd %add", "f+b %add", "fwd ns/step", "bwd ns/step"], rows)


def print_saved(results: list[dict]) -> None:
    print("\nSaved for backward (unique storages packed by autograd), elements per neuron-step:")
    for r in results:
        s = r["exodus_saved"]
        line = (f"  {shape_name(r['shape']):<12} exodus {s.elements(s.total_bytes):.4f} "
                f"({s.elements(s.scaling_bytes):.4f} in time-sized storages; {len(s.storages)} storages)")
        if "bptt_saved" in r:
            sb = r["bptt_saved"]
            line += f"   bptt {sb.elements(sb.total_bytes):.4f} ({len(sb.storages)} storages)"
        print(line)


def print_diagnostics(diag: dict) -> None:
    timings = diag["timings"]
    n = math.prod(LARGE)
    print(f"\nDiagnostics at {LARGE}: each kernel against a torch op moving the same bytes (ms and GB/s, median)")
    if diag["note"]:
        print("  (" + diag["note"] + ")")
    thread_counts = list(timings)
    headers = ["operation", "B/elem"]
    for threads in thread_counts:
        headers += [f"{threads} thr ms", f"{threads} thr GB/s"]
    rows = []
    for key, nbytes, text in DIAGNOSTIC_ROWS:
        if key in timings[thread_counts[0]]:
            row = [text, str(nbytes)]
            for threads in thread_counts:
                seconds = timings[threads][key]
                row += [fmt_ms(seconds), f"{nbytes * n / seconds / 1e9:.1f}"]
            rows.append(row)
    print_table(headers, rows)
    for threads in thread_counts:
        d = timings[threads]
        page = (d["add_alloc"] - d["add_out"]) / (4 * n) * 4096
        line = f"  {threads} thread(s): fresh memory costs ~{page * 1e6:.2f} us per 4 KiB page (add alloc - add out=)"
        if "kernel_fwd" in d:
            line += (f"; fwd kernel / add(a, b, out=) = {d['kernel_fwd'] / d['add2_out']:.2f}; "
                     f"fwd kernel with v trace / addcmul(out=) = {d['kernel_fwd_trace'] / d['addcmul_out']:.2f}; "
                     f"bwd kernel / add(a, b, out=) = {d['kernel_bwd'] / d['add2_out']:.2f}")
        print(line)
    if len(thread_counts) > 1 and "kernel_fwd" in timings[thread_counts[0]]:
        one, many = timings[thread_counts[0]], timings[thread_counts[-1]]
        print(f"  speed-up from 1 to {thread_counts[-1]} threads: fwd kernel {one['kernel_fwd'] / many['kernel_fwd']:.2f}x, "
              f"bwd kernel {one['kernel_bwd'] / many['kernel_bwd']:.2f}x, add(a, b, out=) "
              f"{one['add2_out'] / many['add2_out']:.2f}x")
    print("  kernel / same-bytes torch op near 1: memory-bound; well above 1: compute-bound.")


def print_others(small: dict, others: list[dict]) -> None:
    n = small["neuron_steps"]
    print(f"\nOther libraries at {SMALL}, forward + backward (ms, median of 3 after 1 warm-up; saved and peak in\n"
          "bytes per neuron-step):")

    def row(name, version, times, saved, peak, rate, note):
        return [name, version, fmt_ms(times["fwd"]), fmt_ms(times["bwd"]), fmt_ms(times["total"]),
                fmt(times["total"] / small["exodus"]["total"], ".1f", "x"), fmt(per_step(saved, n), ".1f"),
                fmt(per_step(peak, n), ".1f"), fmt(rate * 100, ".1f", "%"), note]

    rows = [row("exodus.LIF (cpu)", exodus.__version__, small["exodus"], small["exodus_saved"].total_bytes,
                small.get("exodus_peak"), small["spike_rate"], "fused scan, exact gradient")]
    if "bptt" in small:
        rows.append(row("exodus.LIF (bptt)", exodus.__version__, small["bptt"], small["bptt_saved"].total_bytes,
                        small.get("bptt_peak"), small["spike_rate"], "autograd through the reference loop"))
    for o in others:
        if "total" in o and "spike_rate" in o:
            rows.append(row(o["name"], o["version"], o, o["saved"].total_bytes, o.get("peak"), o["spike_rate"],
                            o["status"]))
        else:
            rows.append([o["name"], o.get("version", "-"), "-", "-", "-", "-", "-", "-", "-", o["status"]])
    print_table(["library", "version", "fwd", "bwd", "f+b", "/ exodus", "saved", "peak", "spikes", "notes"], rows)


def print_targets(results: list[dict], diag: dict) -> None:
    print("\nTarget check")

    def check(ok: Optional[bool], text: str) -> None:
        print(f"  [{'n/a ' if ok is None else 'PASS' if ok else 'MISS'}] {text}")

    small, large, long = results
    if "bptt" in small:
        speedup = small["bptt"]["total"] / small["exodus"]["total"]
        check(speedup >= TARGET_SPEEDUP, f"fwd+bwd >= {TARGET_SPEEDUP:.0f}x faster than bptt at {SMALL}: {speedup:.0f}x")
    else:
        check(None, f"fwd+bwd speedup vs bptt at {SMALL}: bptt not measured")
    for key, name in (("fwd_bw", "forward"), ("bwd_bw", "backward"), ("tot_bw", "forward+backward")):
        share = large[key] / large["add_bw"]
        check(share >= TARGET_BANDWIDTH, f"{name} effective bandwidth >= {TARGET_BANDWIDTH:.0%} of torch.add(out=) "
                                         f"at {LARGE}: {share:.0%} ({large[key] / 1e9:.1f} vs "
                                         f"{large['add_bw'] / 1e9:.1f} GB/s)")
    n = math.prod(LARGE)
    threads = max(diag["timings"])
    d = diag["timings"][threads]
    if "kernel_fwd" in d:
        add_bw = 8 * n / d["add_out"]
        print(f"         the kernels alone (outputs preallocated, {threads} threads): forward "
              f"{12 * n / d['kernel_fwd'] / add_bw:.0%}, backward {12 * n / d['kernel_bwd'] / add_bw:.0%} "
              f"of torch.add(out=) bandwidth (Diagnostics)")
    bwd_per_step = lambda r, mode: r[mode]["bwd"] / r["neuron_steps"]
    ratio = bwd_per_step(long, "exodus") / bwd_per_step(small, "exodus")
    check(ratio <= TARGET_LINEAR_TOLERANCE,
          f"backward time linear in T: per neuron-step, T=2000 / T=500 = {ratio:.2f} "
          f"({bwd_per_step(long, 'exodus') * 1e9:.2f} vs {bwd_per_step(small, 'exodus') * 1e9:.2f} ns; "
          f"pass if <= {TARGET_LINEAR_TOLERANCE})")
    if "bptt" in small and "bptt" in long:
        print(f"         bptt for comparison: T=2000 / T=500 = "
              f"{bwd_per_step(long, 'bptt') / bwd_per_step(small, 'bptt'):.2f}")
    scaling = max(r["exodus_saved"].elements(r["exodus_saved"].scaling_bytes) for r in results)
    total = max(r["exodus_saved"].elements(r["exodus_saved"].total_bytes) for r in results)
    check(scaling <= TARGET_SAVED_ELEMENTS,
          f"<= one saved element per neuron-step: {scaling:.4f} in time-sized storages, {total:.4f} with the "
          f"per-neuron parameters and initial state (O(B*N), independent of T)")
    print(f"  load average at the end: {load_average()}")
    print("  GPU (cupy backend): not measured by this run" +
          ("." if torch.cuda.is_available() else " (no CUDA device here)."))


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, bptt only at the smallest shape, no other libraries")
    parser.add_argument("--skip-bptt-large", action="store_true",
                        help="run bptt only at (16, 500, 256) (seconds to minutes per step at the larger shapes)")
    parser.add_argument("--skip-others", action="store_true", help="do not time snnTorch / SpikingJelly / sinabs")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the exodus measurements (default 7)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: leave torch's default)")
    parser.add_argument("--bptt-reps", type=int, default=None,
                        help="repetitions of bptt at (16, 500, 256) (default 3; always 1 at the larger shapes)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    small_bptt_reps = args.bptt_reps or (1 if args.quick else 3)
    large_bptt_reps = 0 if (args.skip_bptt_large or args.quick) else 1
    run_others = not (args.skip_others or args.quick)

    print("exodus LIF speed / memory benchmark")
    print(f"  command     : python {' '.join(sys.argv)}")
    print(f"  machine     : {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}")
    print(f"  software    : python {platform.python_version()}, torch {torch.__version__}, exodus {exodus.__version__}")
    print(f"  source      : {source_state()}")
    print(f"  load        : {load_average()} (1/5/15-min load average at the start; other processes share the cores)")
    print(f"  threads     : torch.get_num_threads() = {torch.get_num_threads()} (the exodus CPU kernels use as many)"
          + (" [set by --threads]" if args.threads else " [torch default]"))
    print(f"  neuron      : float32, tau_mem={TAU_MEM}, threshold 1, subtract reset, one spike per bin, "
          f"SingleExponential surrogate")
    print(f"  input       : N({INPUT_MEAN}, {INPUT_STD}^2) current; upstream gradient N(0, {INPUT_STD}^2) on the spikes")
    print(f"  repetitions : exodus {reps} (+{warmup} warm-up), bptt {small_bptt_reps} at {SMALL} and "
          f"{large_bptt_reps} at the larger shapes; medians")
    t0 = time.perf_counter()
    exodus_layer("exodus")(make_input((1, 2, 8)))
    print(f"  cpu kernels : ready in {time.perf_counter() - t0:.1f} s (compiled once per machine, then cached)")
    sys.stdout.flush()

    def progress(text: str) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    results = []
    for shape in SHAPES:
        progress(f"timing {shape}")
        results.append(measure_shape(shape, reps, warmup, small_bptt_reps if shape == SMALL else large_bptt_reps))
    for r in results:
        e, n = r["exodus"], r["neuron_steps"]
        r["add_bw"] = 8 * n / r["add_time"]
        r["fwd_bw"], r["bwd_bw"] = r["fwd_bytes"] / e["fwd"], r["bwd_bytes"] / e["bwd"]
        r["tot_bw"] = (r["fwd_bytes"] + r["bwd_bytes"]) / e["total"]
    progress("diagnostics")
    diag = diagnostics(LARGE, max(3, reps // 2))
    others = []
    if run_others:
        progress("other libraries")
        torch.manual_seed(0)
        others = other_libraries(SMALL, reps=3)

    # peak memory last: it switches malloc to returning every large block to the OS
    progress("peak memory")
    memory = PeakMemory()
    if memory.available:
        for r in results:
            r["exodus_peak"] = r["exodus_step"].peak(memory)
        results[0]["bptt_peak"] = results[0]["bptt_step"].peak(memory) if "bptt" in results[0] else None
        for o in others:
            if "step" in o:
                o["peak"] = o["step"].peak(memory)

    print_main_table(results)
    if not memory.available:
        print(f"  ({memory.reason})")
    elif "bptt" in results[0]:
        print("  (bptt peak memory is measured at the smallest shape only: one more bptt step at the others is slow)")
    print_bandwidth_table(results)
    print_saved(results)
    print_diagnostics(diag)
    if run_others:
        print_others(results[0], others)
    print_targets(results, diag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
