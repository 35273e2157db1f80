"""Backends that run the neuron scans.

* ``cupy``  — GPU kernels (cuda/kernels.cu) compiled by NVRTC, CUDA tensors only.
* ``cpu``   — the same step functions compiled for the host (cuda/cpu_drivers.cpp).
* ``torch`` — the plain-PyTorch reference (exodus/reference.py), autograd = BPTT.

``resolve(name, device)`` turns "auto" into the fastest one that works here.
"""
from __future__ import annotations

import torch

from . import cpu, cupy, emulation

BACKENDS = ("auto", "cupy", "cpu", "torch")


@torch.compiler.assume_constant_result
def _available(kind: str) -> bool:
    """Whether a native backend works here (builds the CPU kernels at first call).
    A constant for torch.compile, so resolving the backend never breaks a graph."""
    return cpu.available() if kind == "cpu" else cupy.available()


def resolve(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name == "cupy":
        if device.type != "cuda":
            raise ValueError("backend='cupy' needs CUDA tensors; this input is on " + str(device))
        if not _available("cupy"):
            raise ValueError("backend='cupy' needs CuPy and a CUDA device: pip install exodus-snn[cuda12] "
                             "(or [cuda13])")
        return name
    if name == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors; this input is on {device}")
        if not _available("cpu"):
            raise ValueError("backend='cpu' is unavailable: " + str(cpu._error))
        return name
    if name == "torch":
        return name
    if device.type == "cuda":
        return "cupy" if _available("cupy") else "torch"
    if device.type == "cpu":
        if _available("cpu"):
            return "cpu"
        cpu.warn_unavailable()
    return "torch"


def bind(plan, backend: str, storage_dtype: torch.dtype, acc: torch.dtype, device: torch.device):
    """A ranged launch plan (``plan.time_range`` set) bound to a backend: returns
    ``run(t_begin, t_end)``, which runs the driver over steps [t_begin, t_end). "emulation"
    runs the GPU drivers on the CPU (tests, ``python -m exodus.check``)."""
    if plan.time_range is None:
        raise ValueError(f"{plan.kernel} runs whole sequences; it has no time range to bind")
    if backend == "cpu":
        return cpu.bind(plan, acc)
    if backend == "cupy":
        return cupy.bind(plan, device, storage_dtype, acc)
    if backend == "emulation":
        return emulation.bind(plan, acc)
    raise ValueError(f"the fused ops run on backend 'cpu' or 'cupy', not {backend!r}")
