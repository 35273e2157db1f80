"""ctypes loader of cuda/cpu_rls.cpp (the compiled simulation loop and batched RLS update).

Built at first use per dtype through exodus.backends.sources.build_shared_library with the CPU
backend's flag sets (tried in order: -march=native + OpenMP first, plain -O3 last), cached in
``~/.cache/exodus``. ``available()`` is False without a working compiler; the trainer then uses
the torch implementation.
"""
from __future__ import annotations

import ctypes
import threading

import torch

from exodus.backends.cpu import _FLAG_SETS
from exodus.backends.sources import BuildError, build_shared_library

_C_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}
_libraries: dict[torch.dtype, ctypes.CDLL] = {}
_errors: dict[torch.dtype, str] = {}
_lock = threading.Lock()
_structures: dict[torch.dtype, tuple[type, type, type]] = {}

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


def structures(dtype: torch.dtype) -> tuple[type, type, type]:
    """(RlsNetwork, RlsState, RlsRecord) ctypes structures for the scalar type of ``dtype``
    (field for field the C structs of cuda/cpu_rls.cpp)."""
    if dtype not in _structures:
        scalar = _C_TYPES[dtype][1]

        class RlsNetwork(ctypes.Structure):
            _fields_ = [("n_cells", _I64), ("n_exc", _I64), ("static_ptr", _P), ("static_post", _P),
                        ("static_weight", _P), ("plastic_ptr", _P), ("plastic_post", _P), ("plastic_slot", _P),
                        ("plastic_weight", _P), ("x_bal", _P), ("x_stim", _P), ("stim_first_step", _I64),
                        ("stim_rows", _I64), ("dt", scalar), ("mem_rate", scalar), ("threshold", scalar),
                        ("v_reset", scalar), ("inv_tau_exc", scalar), ("inv_tau_inh", scalar),
                        ("inv_tau_plastic", scalar), ("refractory_steps", _I64)]

        class RlsState(ctypes.Structure):
            _fields_ = [(name, _P) for name in ("v", "u_exc", "u_inh", "u_plastic", "r", "in_exc", "in_inh",
                                                "in_plastic", "u_static", "spiked", "refractory", "spike_count")]

        class RlsRecord(ctypes.Structure):
            _fields_ = [("u_total", _P), ("first_step", _I64), ("every", _I64), ("rows", _I64), ("u_sum", _P),
                        ("u_sq_sum", _P), ("sum_first_step", _I64)]

        _structures[dtype] = (RlsNetwork, RlsState, RlsRecord)
    return _structures[dtype]


def load(dtype: torch.dtype) -> ctypes.CDLL:
    """The compiled library for float32 or float64 (built at first use); BuildError if it cannot be built."""
    if dtype not in _C_TYPES:
        raise TypeError(f"exodus.rls native kernels support float32 and float64, not {dtype}")
    with _lock:
        if dtype in _libraries:
            return _libraries[dtype]
        if dtype in _errors:
            raise BuildError(_errors[dtype])
        c_type = _C_TYPES[dtype][0]
        errors = []
        for flags in _FLAG_SETS:
            try:
                path = build_shared_library("cpu_rls.cpp", [*flags, f"-DEXODUS_SCALAR={c_type}"], f"cpu-rls-{c_type}")
                library = ctypes.CDLL(str(path))
            except (BuildError, OSError) as error:
                errors.append(str(error))
                continue
            network, state, record = structures(dtype)
            library.exodus_rls_simulate.restype = ctypes.c_int
            library.exodus_rls_simulate.argtypes = [ctypes.POINTER(network), ctypes.POINTER(state),
                                                    ctypes.POINTER(record), _I64, _I64, ctypes.c_int]
            library.exodus_rls_update.restype = ctypes.c_int
            library.exodus_rls_update.argtypes = [_I64, _I64, _P, _P, _P, _I64, _I64, _P, _P, _P, _P, _P, ctypes.c_int,
                                                  _P, ctypes.c_int]
            library.exodus_rls_flush.restype = ctypes.c_int
            library.exodus_rls_flush.argtypes = [_I64, _I64, _P, _P, _P, _I64, _I64, ctypes.c_int]
            _libraries[dtype] = library
            return library
        _errors[dtype] = "the exodus.rls CPU kernels (cpu_rls.cpp) could not be built:\n" + "\n".join(errors)
        raise BuildError(_errors[dtype])


def available(dtype: torch.dtype = torch.float32) -> bool:
    """True if the compiled kernels for ``dtype`` are built (building them now if needed)."""
    try:
        load(dtype)
        return True
    except BuildError:
        return False


def pointer(tensor: torch.Tensor | None) -> int | None:
    """Data pointer of a contiguous CPU tensor (None for None)."""
    if tensor is None:
        return None
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("exodus.rls native kernels need contiguous CPU tensors")
    return tensor.data_ptr()
