"""cupy backend: cuda/kernels.cu compiled with NVRTC at first use, cached per
(device, dtype), launched on torch's current CUDA stream under a device guard.

Tensors are handed to the kernels as raw device pointers (no copies). CuPy is an
optional dependency: ``pip install exodus-snn[cuda12]`` or ``[cuda13]``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .launch import LaunchPlan
from .sources import inline_source, type_defines

# -fmad=false keeps a*b + c as two roundings, like the torch reference (bitwise-equal forward).
NVRTC_OPTIONS = ("--std=c++17", "-fmad=false")


def nvrtc_options(dtype: torch.dtype) -> tuple[str, ...]:
    """Options the cupy backend passes to NVRTC for kernels storing ``dtype``."""
    return (*NVRTC_OPTIONS, *type_defines(dtype))


def kernel_source() -> str:
    return inline_source("kernels.cu")


def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _module(device_index: int, dtype: torch.dtype):
    import cupy
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=kernel_source(), options=nvrtc_options(dtype), backend="nvrtc")
        module.compile()
    return module


_NUMPY = {"i64": np.int64, "i32": np.int32}


def _cupy_args(plan: LaunchPlan, acc: torch.dtype) -> tuple:
    acc_np = np.float64 if acc == torch.float64 else np.float32
    out = []
    for kind, value in plan.args:
        if kind == "ptr":
            out.append(np.uint64(0 if value is None else value.data_ptr()))
        elif kind == "acc":
            out.append(acc_np(value))
        else:
            out.append(_NUMPY[kind](value))
    return tuple(out)


def run(plan: LaunchPlan, device: torch.device, dtype: torch.dtype, acc: torch.dtype) -> None:
    import cupy
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _module(index, dtype).get_function(plan.kernel)
    with cupy.cuda.Device(index):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
        with stream:
            kernel(plan.grid, plan.block, _cupy_args(plan, acc))


def bind(plan: LaunchPlan, device: torch.device, dtype: torch.dtype, acc: torch.dtype):
    """``run(t_begin, t_end)`` for a ranged plan (see exodus.backends.bind)."""
    import cupy
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _module(index, dtype).get_function(plan.kernel)
    args = list(_cupy_args(plan, acc))
    begin, end = plan.time_range

    def run_range(t_begin: int, t_end: int) -> None:
        args[begin], args[end] = np.int64(t_begin), np.int64(t_end)
        with cupy.cuda.Device(index):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
            with stream:
                kernel(plan.grid, plan.block, tuple(args))

    return run_range
