"""CPU backend: cuda/cpu_drivers.cpp (the neuron.cuh step functions, tiled over
batch x neurons, time-outer / neurons-inner) compiled once per machine and cached.

The build runs at first use with the system C++ compiler (``$CXX`` or ``c++``).
If it fails, ``available()`` is False and exodus falls back to the torch backend
with one warning.
"""
from __future__ import annotations

import ctypes
import platform
import threading
import warnings

import torch

from .launch import LaunchPlan
from .native import ctypes_args
from .sources import BuildError, build_shared_library

# Tried in order until one builds and loads. -ffp-contract=off keeps a*b + c rounded twice, as
# in the reference; -fno-trapping-math / -fno-math-errno only let the compiler vectorise
# branches and math calls (results unchanged). libmvec gives vectorised exp (x86-64 glibc).
_BASE_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno"]
# On x86-64, full AVX-512 vectors where the CPU has them (gcc prefers 256-bit ones by default;
# measured: forward kernel 10-35% faster on an AVX-512 Xeon; a no-op without AVX-512).
_X86 = platform.machine() in ("x86_64", "AMD64")
_LIBMVEC = ["-DEXODUS_LIBMVEC", "-lmvec"] if _X86 else []
_WIDE = ["-mprefer-vector-width=512"] if _X86 else []
_FLAG_SETS = tuple(flags for flags in (
    [*_BASE_FLAGS, "-march=native", *_WIDE, "-fopenmp", *_LIBMVEC],
    [*_BASE_FLAGS, "-march=native", "-fopenmp"],
    [*_BASE_FLAGS, "-fopenmp"],
    _BASE_FLAGS,
) if flags)
_DTYPES = {torch.float32: "float", torch.float64: "double"}
_libraries: dict[torch.dtype, ctypes.CDLL] = {}
_lock = threading.Lock()
_error: str | None = None
_warned = False


def _load(acc: torch.dtype) -> ctypes.CDLL:
    global _error
    with _lock:
        if acc in _libraries:
            return _libraries[acc]
        if _error is not None:
            raise BuildError(_error)
        c_type = _DTYPES[acc]
        errors = []
        for flags in _FLAG_SETS:
            try:
                path = build_shared_library(
                    "cpu_drivers.cpp", [*flags, f"-DEXODUS_SCALAR={c_type}", f"-DEXODUS_ACC={c_type}"],
                    f"cpu-{c_type}")
                _libraries[acc] = ctypes.CDLL(str(path))
                return _libraries[acc]
            except (BuildError, OSError) as error:
                errors.append(str(error))
        _error = "the exodus CPU kernels could not be built:\n" + "\n".join(errors)
        raise BuildError(_error)


def available() -> bool:
    """True if the CPU kernels are built (building them now if needed)."""
    try:
        _load(torch.float32)  # the float64 kernels are built at their first use
        return True
    except BuildError:
        return False


def warn_unavailable() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"{_error}\nexodus falls back to the (slow) torch reference backend.", RuntimeWarning,
                      stacklevel=3)


def run(plan: LaunchPlan, acc: torch.dtype) -> None:
    """Run a launch plan's kernel through its CPU driver (`exodus_cpu_*`)."""
    function = getattr(_load(acc), plan.kernel.replace("exodus_", "exodus_cpu_", 1))
    function(*ctypes_args(plan.args, acc), ctypes.c_int(torch.get_num_threads()))
