"""Calling compiled host code through ctypes (CPU backend and host emulation)."""
from __future__ import annotations

import ctypes
from typing import Any

import torch

_ACC_CTYPE = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


def ctypes_args(args: list[tuple[str, Any]], acc: torch.dtype) -> list:
    """Typed ctypes values for a launch plan's argument list."""
    out = []
    for kind, value in args:
        if kind == "ptr":
            out.append(ctypes.c_void_p(None if value is None else value.data_ptr()))
        elif kind == "i64":
            out.append(ctypes.c_longlong(int(value)))
        elif kind == "i32":
            out.append(ctypes.c_int(int(value)))
        elif kind == "acc":
            out.append(_ACC_CTYPE[acc](float(value)))
        else:
            raise ValueError(f"unknown argument kind {kind!r}")
    return out
