"""Host emulation of the GPU drivers: the __global__ kernels of cuda/kernels.cu
compiled for the CPU with cuda/host_emulation.h, launched from the same launch
plans as the cupy backend (grid walked sequentially). Used by tests and by
``python -m exodus.check``; it is slow (one thread at a time) by design.
"""
from __future__ import annotations

import ctypes

import torch

from .launch import LaunchPlan
from .native import ctypes_args
from .sources import build_shared_library

_DTYPES = {torch.float32: "float", torch.float64: "double"}
_libraries: dict[torch.dtype, ctypes.CDLL] = {}


def _load(acc: torch.dtype) -> ctypes.CDLL:
    if acc not in _libraries:
        c_type = _DTYPES[acc]
        path = build_shared_library(
            "host_emulation.cpp",
            ["-O1", "-ffp-contract=off", "-pthread", f"-DEXODUS_SCALAR={c_type}", f"-DEXODUS_ACC={c_type}"],
            f"emulation-{c_type}")
        _libraries[acc] = ctypes.CDLL(str(path))
    return _libraries[acc]


def launch(plan: LaunchPlan, acc: torch.dtype) -> None:
    """Run ``plan`` on the CPU exactly as a GPU launch would: every (block, thread) of the grid."""
    values = ctypes_args(plan.args, acc)
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    getattr(_load(acc), f"emulate_{plan.kernel}")(ctypes.c_uint(plan.grid[0]), ctypes.c_uint(plan.block[0]), params)


def bind(plan: LaunchPlan, acc: torch.dtype):
    """``run(t_begin, t_end)`` for a ranged plan (see exodus.backends.bind)."""
    values = ctypes_args(plan.args, acc)
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    function = getattr(_load(acc), f"emulate_{plan.kernel}")
    begin, end = plan.time_range

    def run_range(t_begin: int, t_end: int) -> None:
        values[begin].value, values[end].value = t_begin, t_end
        function(ctypes.c_uint(plan.grid[0]), ctypes.c_uint(plan.block[0]), params)

    return run_range
