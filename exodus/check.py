"""Self-check of exodus on this machine:  python -m exodus.check

For every backend that works here — ``cpu`` (the compiled CPU kernels), ``cupy`` (the
GPU kernels, with CUDA and CuPy) and ``emulation`` (the very same __global__ GPU kernels
run on the CPU through cuda/host_emulation.h, if a C++ compiler works) — a handful of
neuron configurations run in float64 and float32 against the plain-PyTorch reference
(exodus.reference; autograd through it is BPTT):

* forward: spikes and membrane must equal the reference bit for bit (recurrent layers: to rounding,
  since the kernels sum the recurrent input in their own order);
* backward: gradients w.r.t. input, alpha, threshold, v0 (adaptive neurons: also rho, w0 and the
  recurrent weight) of a random linear loss,
  relative to the largest reference gradient, must be below 1e-9 (float64) / 1e-4 (float32).

Prints one table row per (backend, dtype, case) and a verdict line; exit code 0 on PASS.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import functional
from . import surrogate as S
from .backends import cupy as cupy_backend
from .backends import cpu as cpu_backend
from .backends import emulation, launch
from .reference import adaptive_lif_ref, leaky_ref, lif_ref

GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
FWD_TOL = 0.0  # the fused forward is bitwise equal to the reference...
# ...except the recurrent input M a_{t-1}: the kernels sum it over the spiking neurons in order, torch's
# matrix product (the reference) in its own order, so membranes may differ by rounding.
RECURRENT_FWD_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = (torch.float64, torch.float32)


@dataclass
class Case:
    """One configuration: ``neuron`` "lif", "leaky" or "adaptive", keyword options of exodus.functional.
    adaptive: couplings (beta, gamma, zeta, eta) as numbers; recurrent: with an (N, N) weight_rec."""

    name: str
    neuron: str = "lif"
    options: dict = field(default_factory=dict)
    iaf: bool = False        # alpha = 1
    amplitude: float = 0.8   # input standard deviation (threshold ~ 1)
    couplings: tuple = (0.0, 0.0, 0.0, 0.0)
    recurrent: bool = False


CASES = [
    Case("lif subtract, single spike"),
    Case("lif zero reset, v_min, slayer x0.5", options=dict(
        reset="zero", v_min=-0.5, gradient="slayer", grad_scale=0.5, surrogate=S.FastSigmoid(slope=5.0))),
    Case("lif <=3 spikes, norm_input", options=dict(
        max_spikes_per_bin=3, norm_input=True, surrogate=S.PeriodicExponential()), amplitude=6.0),
    Case("lif unlimited spikes, final v only", options=dict(
        max_spikes_per_bin=None, v_trace=False, surrogate=S.Gaussian(sigma=0.4)), amplitude=2.5),
    Case("iaf, v_min, atan", options=dict(v_min=-1.0, surrogate=S.ATan()), iaf=True),
    Case("leaky (ExpLeak)", neuron="leaky"),
    Case("leaky, norm_input", neuron="leaky", options=dict(norm_input=True)),
    Case("alif (threshold adaptation)", neuron="adaptive", couplings=(1.5, 0.0, 0.0, 0.05)),
    Case("adlif recurrent, norm_input", neuron="adaptive", couplings=(0.0, 1.0, 0.3, 0.8), recurrent=True,
         options=dict(norm_input=True), amplitude=4.0),
    Case("lif recurrent, zero reset, v_min", neuron="adaptive", recurrent=True,
         options=dict(reset="zero", v_min=-0.5)),
]

# batch 3 x 77 neurons = 231 threads: two GPU blocks, the last one partial.
BATCH, TIME, FEATURES = 3, 40, (7, 11)


# ----------------------------------------------------------------------------- problems

def _problem(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Leaves (x, alpha, [threshold], v0) and loss weights for one case."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, offset=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype).to(device)

    def uniform(low, high):
        return (torch.rand(FEATURES, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype).to(device)

    features = (math.prod(FEATURES),) if case.recurrent else FEATURES
    x = randn(BATCH, TIME, *features, scale=case.amplitude, offset=0.3)
    alpha = torch.ones(FEATURES, dtype=dtype, device=device) if case.iaf else uniform(0.8, 0.99)
    leaves = {"x": x, "alpha": alpha.reshape(features)}
    if case.neuron in ("lif", "adaptive"):
        leaves["threshold"] = uniform(0.7, 1.4).reshape(features)
    leaves["v0"] = randn(BATCH, *features, scale=0.4)
    if case.neuron == "adaptive":
        leaves["rho"] = uniform(0.9, 0.995).reshape(features)
        if any(case.couplings):
            leaves["w0"] = randn(BATCH, *features, scale=0.2)
        if case.recurrent:
            n = features[0]
            leaves["weight_rec"] = randn(n, n, scale=0.5 / math.sqrt(n))
    v_shape = (BATCH, *features) if case.options.get("v_trace", True) is False else (BATCH, TIME, *features)
    weights = {"spikes": randn(BATCH, TIME, *features), "v": randn(*v_shape)}
    if case.neuron == "adaptive":
        weights["w"] = randn(*v_shape)
    return leaves, weights


def _reference(case: Case, leaves: dict):
    """Outputs and leaf gradients of the reference (the oracle)."""
    if case.neuron == "leaky":
        return (leaky_ref(leaves["x"], leaves["alpha"], leaves["v0"], **case.options),)
    if case.neuron == "adaptive":
        return _adaptive(adaptive_lif_ref, case, leaves)
    options = dict(case.options)
    v_trace = options.pop("v_trace", True)
    spikes, v = lif_ref(leaves["x"], leaves["alpha"], leaves["threshold"], leaves["v0"], **options)
    return spikes, (v if v_trace else v[:, -1])


def _adaptive(function: Callable, case: Case, leaves: dict, **extra):
    return function(leaves["x"], leaves["alpha"], leaves["threshold"], leaves["rho"], *case.couplings, leaves["v0"],
                    leaves.get("w0"), weight_rec=leaves.get("weight_rec"), **case.options, **extra)


def _functional(backend: str) -> Callable:
    def run(case: Case, leaves: dict):
        if case.neuron == "adaptive":
            return _adaptive(functional.adaptive_lif, case, leaves, backend=backend)
        if case.neuron == "leaky":
            return (functional.leaky(leaves["x"], leaves["alpha"], leaves["v0"], backend=backend, **case.options),)
        return functional.lif(leaves["x"], leaves["alpha"], leaves["threshold"], leaves["v0"], backend=backend,
                              **case.options)
    return run


def _loss(outputs, weights) -> torch.Tensor:
    if len(outputs) == 1:  # leaky: v only
        return (outputs[0] * weights["v"]).sum()
    loss = (outputs[0] * weights["spikes"]).sum() + (outputs[1] * weights["v"]).sum()
    return loss + (outputs[2] * weights["w"]).sum() if len(outputs) == 3 else loss


def _with_grads(run: Callable, case: Case, leaves: dict, weights: dict):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in leaves.items()}
    outputs = run(case, leaves)
    grads = torch.autograd.grad(_loss(outputs, weights), list(leaves.values()))
    return [o.detach() for o in outputs], dict(zip(leaves, grads))


# ----------------------------------------------------------------------------- host emulation

def _lif_options(options: dict) -> launch.LifOptions:
    surrogate = options.get("surrogate") or S.SingleExponential()
    max_spikes = options.get("max_spikes_per_bin", 1)
    v_min = options.get("v_min")
    return launch.LifOptions(
        reset=functional.RESETS[options.get("reset", "subtract")], max_spikes=0 if max_spikes is None else max_spikes,
        has_vmin=v_min is not None, v_min=0.0 if v_min is None else v_min,
        norm_input=bool(options.get("norm_input", False)), v_trace=bool(options.get("v_trace", True)),
        gradient=1 if options.get("gradient", "exodus") == "slayer" else 0, surrogate=surrogate.kind,
        grad_scale=float(options.get("grad_scale", 1.0)), surrogate_params=surrogate.kernel_params())


def _emulated(case: Case, leaves: dict, weights: dict):
    """The GPU kernels run on the CPU from the cupy backend's launch plans; the loss weights
    are the upstream gradients of the backward kernel. Adaptive neurons: the whole op (custom op,
    per-step loop of recurrent layers) with its kernels launched through the host emulation."""
    if case.neuron == "adaptive":
        return _with_grads(_functional("emulation"), case, leaves, weights)
    x, alpha, v0 = leaves["x"], leaves["alpha"], leaves["v0"]
    acc, shape = x.dtype, x.shape
    N = math.prod(FEATURES)
    x3, alpha_n, v0n = x.reshape(BATCH, TIME, N).contiguous(), alpha.reshape(N).contiguous(), v0.reshape(BATCH, N)
    grad_x = torch.empty_like(x3)
    grad_v0, grad_alpha, grad_theta = (torch.zeros(BATCH, N, dtype=acc) for _ in range(3))
    if case.neuron == "leaky":
        norm_input = bool(case.options.get("norm_input", False))
        v = torch.empty_like(x3)
        emulation.launch(launch.leaky_forward_plan(x3, alpha_n, v0n, v, norm_input), acc)
        grad_v = weights["v"].reshape(BATCH, TIME, N).contiguous()
        emulation.launch(launch.leaky_backward_plan(v, grad_v, alpha_n, v0n, grad_x, grad_v0, grad_alpha, norm_input),
                         acc)
        outputs = [v.view(shape)]
        grads = {"x": grad_x.view(shape), "alpha": grad_alpha.sum(0).view(FEATURES), "v0": grad_v0.view(v0.shape)}
        return outputs, grads
    o = _lif_options(case.options)
    theta_n = leaves["threshold"].reshape(N).contiguous()
    spikes, h = torch.empty_like(x3), torch.empty_like(x3)
    v = torch.empty_like(x3) if o.v_trace else torch.empty(BATCH, N, dtype=acc)
    emulation.launch(launch.lif_forward_plan(x3, alpha_n, theta_n, v0n, spikes, v, h, o), acc)
    grad_spikes = weights["spikes"].reshape(BATCH, TIME, N).contiguous()
    grad_v = weights["v"].reshape(v.shape).contiguous()
    emulation.launch(launch.lif_backward_plan(h, grad_spikes, grad_v, alpha_n, theta_n, v0n, grad_x, grad_v0,
                                              grad_alpha, grad_theta, o), acc)
    outputs = [spikes.view(shape), v.view(weights["v"].shape)]
    grads = {"x": grad_x.view(shape), "alpha": grad_alpha.sum(0).view(FEATURES),
             "threshold": grad_theta.sum(0).view(FEATURES), "v0": grad_v0.view(v0.shape)}
    return outputs, grads


# ----------------------------------------------------------------------------- backends

@dataclass
class Backend:
    name: str
    device: Optional[torch.device]   # None: unavailable
    run: Optional[Callable] = None   # (case, leaves, weights) -> (outputs, grads)
    reason: str = ""


def _backends() -> list[Backend]:
    found = []
    if cpu_backend.available():
        found.append(Backend("cpu", torch.device("cpu"), lambda c, l, w: _with_grads(_functional("cpu"), c, l, w)))
    else:
        found.append(Backend("cpu", None, reason=str(cpu_backend._error).splitlines()[0]))
    if cupy_backend.available():
        found.append(Backend("cupy", torch.device("cuda"), lambda c, l, w: _with_grads(_functional("cupy"), c, l, w)))
    else:
        reason = "no CUDA device" if not torch.cuda.is_available() else _cupy_import_error()
        found.append(Backend("cupy", None, reason=reason))
    try:
        for dtype in DTYPES:
            emulation._load(dtype)
        found.append(Backend("emulation", torch.device("cpu"), _emulated))
    except Exception as error:  # no working C++ compiler
        found.append(Backend("emulation", None, reason=str(error).splitlines()[0]))
    return found


def _cupy_import_error() -> str:
    try:
        import cupy  # noqa: F401
    except Exception as error:
        return f"CuPy is not importable ({type(error).__name__}: {error})"
    return "CuPy is unavailable"


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    diff = (a.double() - b.double()).abs()
    return math.inf if bool(diff.isnan().any()) else diff.max().item()


def _check(backend: Backend, case: Case, dtype: torch.dtype) -> tuple[float, float]:
    """(forward max abs error, gradient max relative error) of one backend against the reference."""
    leaves, weights = _problem(case, dtype, backend.device)
    ref_outputs, ref_grads = _with_grads(lambda c, l: _reference(c, l), case, leaves, weights)
    outputs, grads = backend.run(case, leaves, weights)
    fwd = max(_max_abs(o, r) for o, r in zip(outputs, ref_outputs))
    rel = 0.0
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        error = _max_abs(grads[name], ref)
        rel = max(rel, error / scale if scale > 0 else (0.0 if error == 0 else math.inf))
    return fwd, rel


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exodus.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=["cpu", "cupy", "emulation"],
                        help="check only this backend (repeatable); default: all available")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(f"exodus self-check: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    rows, skipped, failures, checked = [], [], 0, []
    for backend in _backends():
        if args.backend and backend.name not in args.backend:
            continue
        if backend.device is None:
            skipped.append(f"{backend.name}: {backend.reason}")
            continue
        checked.append(backend.name)
        for dtype in DTYPES:
            for case in CASES:
                try:
                    fwd, rel = _check(backend, case, dtype)
                    ok = fwd <= (RECURRENT_FWD_TOL[dtype] if case.recurrent else FWD_TOL) and rel <= GRAD_TOL[dtype]
                    rows.append((backend.name, str(dtype).removeprefix("torch."), case.name, f"{fwd:.1e}",
                                 f"{rel:.1e}", "PASS" if ok else "FAIL"))
                except Exception as error:  # report, keep checking the rest
                    ok = False
                    rows.append((backend.name, str(dtype).removeprefix("torch."), case.name, "-", "-",
                                 f"FAIL ({type(error).__name__}: {error})"))
                failures += not ok

    header = ("backend", "dtype", "case", "fwd max err", "grad max rel err", "result")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    for line in skipped:
        print(f"skipped {line}")
    print(f"tolerances: forward {FWD_TOL} (bitwise; recurrent {RECURRENT_FWD_TOL[torch.float64]:.0e} / "
          f"{RECURRENT_FWD_TOL[torch.float32]:.0e}: summation order of M a), gradient {GRAD_TOL[torch.float64]:.0e} (float64) / "
          f"{GRAD_TOL[torch.float32]:.0e} (float32) relative to max |reference gradient|")
    passed = bool(rows) and failures == 0
    summary = (f"{len(rows) - failures}/{len(rows)} checks on {', '.join(checked) or 'no backend'}"
               + (f"; skipped {', '.join(s.split(':')[0] for s in skipped)}" if skipped else "")
               + f"; {time.perf_counter() - start:.1f} s")
    print(f"exodus self-check: {'PASS' if passed else 'FAIL'} ({summary})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
