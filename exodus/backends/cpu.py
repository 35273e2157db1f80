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
# branches and math calls (results unchanged). libmvec gives vectorised exp (x86-64 glibc) to the
# double builds; float builds inline the surrogates' exp (cuda/surrogates.cuh).
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
_libraries: dict[tuple[str, torch.dtype], ctypes.CDLL] = {}
_lock = threading.Lock()
_error: str | None = None
_warned = False


# Driver source of each kernel family (one shared library per source and dtype, built at first use).
_SOURCES = {"exodus_adaptive_": "cpu_adaptive.cpp", "exodus_lif_sparse_": "cpu_sparse.cpp",
            "exodus_sparse_": "cpu_sparse.cpp", "exodus_lif_online_": "cpu_online.cpp"}
_DEFAULT_SOURCE = "cpu_drivers.cpp"


def _source_of(kernel: str) -> str:
    return next((src for prefix, src in _SOURCES.items() if kernel.startswith(prefix)), _DEFAULT_SOURCE)


def _load(acc: torch.dtype, source: str = _DEFAULT_SOURCE) -> ctypes.CDLL:
    global _error
    with _lock:
        key = (source, acc)
        if key in _libraries:
            return _libraries[key]
        if _error is not None:
            raise BuildError(_error)
        c_type = _DTYPES[acc]
        stem = "cpu" if source == _DEFAULT_SOURCE else "cpu-" + source.removeprefix("cpu_").removesuffix(".cpp")
        errors = []
        for flags in _FLAG_SETS:
            try:
                path = build_shared_library(
                    source, [*flags, f"-DEXODUS_SCALAR={c_type}", f"-DEXODUS_ACC={c_type}"], f"{stem}-{c_type}")
                _libraries[key] = ctypes.CDLL(str(path))
                return _libraries[key]
            except (BuildError, OSError) as error:
                errors.append(str(error))
        message = f"the exodus CPU kernels ({source}) could not be built:\n" + "\n".join(errors)
        if source == _DEFAULT_SOURCE:
            _error = message
        raise BuildError(message)


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


def _function(plan: LaunchPlan, acc: torch.dtype):
    return getattr(_load(acc, _source_of(plan.kernel)), plan.kernel.replace("exodus_", "exodus_cpu_", 1))


def adaptive_w_checkpoint_rows(T: int) -> int:
    """Rows of the w checkpoints the CPU adaptive forward saves for T steps (cuda/cpu_adaptive.cpp)."""
    function = _load(torch.float64, "cpu_adaptive.cpp").exodus_cpu_adaptive_w_checkpoint_rows
    function.restype, function.argtypes = ctypes.c_longlong, [ctypes.c_longlong]
    return int(function(T))


def run(plan: LaunchPlan, acc: torch.dtype) -> int:
    """Run a launch plan's kernel through its CPU driver (`exodus_cpu_*`). Returns what the driver
    returns (only drivers declared ``int`` return something meaningful: a status)."""
    return _function(plan, acc)(*ctypes_args(plan.args, acc), ctypes.c_int(torch.get_num_threads()))


def bind(plan: LaunchPlan, acc: torch.dtype):
    """``run(t_begin, t_end)`` for a ranged plan: the ctypes arguments are built once and only the
    range changes between calls (a recurrent layer calls it once per time step)."""
    function = _function(plan, acc)
    args = [*ctypes_args(plan.args, acc), ctypes.c_int(torch.get_num_threads())]
    begin, end = plan.time_range

    def run_range(t_begin: int, t_end: int) -> None:
        args[begin].value, args[end].value = t_begin, t_end
        function(*args)

    return run_range
