"""ctypes loader of cuda/cpu_events.cpp (the event simulator, extern "C" API).

Built at first use through exodus.backends.sources.build_shared_library with the CPU backend's
flag sets (tried in order; -ffp-contract=off in all of them), cached in ``~/.cache/exodus``.
The simulation is sequential (no OpenMP, even where the flags allow it); ``threads=2`` adds one
std::thread helper that draws the likely next spikers' random targets ahead (same results).
"""
from __future__ import annotations

import ctypes
import threading

from exodus.backends.cpu import _FLAG_SETS
from exodus.backends.sources import BuildError, build_shared_library

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_F64 = ctypes.c_double

# Status codes of exodus_events_run (enum Status in cpu_events.cpp).
OK_MAX_SPIKES, OK_END_TIME, ERR_CROSSING, ERR_NONFINITE, ERR_ARGS, ERR_EIF_RANGE = 0, 1, -1, -2, -3, -4


class EventsNetwork(ctypes.Structure):
    _fields_ = [("n", _I64), ("k", _I64), ("model", _I32), ("heterogeneous", _I32), ("seed", ctypes.c_uint64),
                ("csr_indptr", _P), ("csr_indices", _P), ("weights", _P), ("omega", _P), ("coupling", _P),
                ("drive", _P), ("omega0", _F64), ("coupling0", _F64), ("drive0", _F64), ("phase_th", _F64),
                ("phase_reset", _F64), ("eif_v", _P), ("eif_slope", _P), ("eif_n", _I64), ("eif_phase_lo", _F64),
                ("eif_step", _F64)]


class EventsState(ctypes.Structure):
    _fields_ = [("key", _P), ("phase", _P), ("last_time", _P), ("spike_count", _P), ("offset", _F64),
                ("time_base", _F64), ("time", _F64), ("n_spikes", _I64)]


class EventsSamples(ctypes.Structure):
    _fields_ = [("times", _P), ("n_times", _I64), ("next", _I64), ("neurons", _P), ("n_neurons", _I64), ("out", _P)]


_library: ctypes.CDLL | None = None
_error: str | None = None
_lock = threading.Lock()


def load() -> ctypes.CDLL:
    """The compiled simulator (built at first use); BuildError if no flag set compiles."""
    global _library, _error
    with _lock:
        if _library is not None:
            return _library
        if _error is not None:
            raise BuildError(_error)
        errors = []
        for flags in _FLAG_SETS:
            flags = [f for f in flags if f != "-fopenmp"] + ["-pthread"]
            try:
                library = ctypes.CDLL(str(build_shared_library("cpu_events.cpp", flags, "cpu-events")))
            except (BuildError, OSError) as error:
                errors.append(str(error))
                continue
            bind(library)
            _library = library
            return library
        _error = "the exodus.events simulator (cuda/cpu_events.cpp) could not be built:\n" + "\n".join(errors)
        raise BuildError(_error)


def bind(library: ctypes.CDLL) -> ctypes.CDLL:
    """Sets the argument and result types of cpu_events.cpp's C API on ``library`` (any build of it)."""
    library.exodus_events_init.restype = _I32
    library.exodus_events_init.argtypes = [ctypes.POINTER(EventsNetwork), ctypes.POINTER(EventsState), _P, _F64]
    library.exodus_events_run.restype = _I32
    library.exodus_events_run.argtypes = [ctypes.POINTER(EventsNetwork), ctypes.POINTER(EventsState), _I64,
                                          _F64, _P, _P, ctypes.POINTER(EventsSamples), _I32,
                                          ctypes.POINTER(_I64)]
    library.exodus_events_targets.restype = _I32
    library.exodus_events_targets.argtypes = [ctypes.c_uint64, _I64, _I64, _I64, _P]
    library.exodus_events_targets_many.restype = _I32
    library.exodus_events_targets_many.argtypes = [ctypes.c_uint64, _I64, _I64, _P, _I64, _P]
    library.exodus_events_queue_replay.restype = _I32
    library.exodus_events_queue_replay.argtypes = [_I64, _P, _I64, _P, _P, _I64, _P]
    library.exodus_events_schedule_replay.restype = _I32
    library.exodus_events_schedule_replay.argtypes = [_I64, _P, _P, _P, _P]
    library.exodus_events_key_count.restype = _I64
    library.exodus_events_key_count.argtypes = [_I64]
    library.exodus_events_ptc.restype = _I32
    library.exodus_events_ptc.argtypes = [_I32, _I64, _P, _P, _P, _P, _P, _P, _I64, _F64, _F64]
    return library


def ptc(model: int, phase, c, omega, table=None):
    """The compiled PTC (cuda/events_neurons.h) elementwise on float64 arrays (for the tests)."""
    import numpy as np

    phase, c, omega = (np.ascontiguousarray(np.broadcast_to(x, np.shape(phase)), np.float64) for x in (phase, c, omega))
    out = np.empty_like(phase)
    eif = (None, None, 0, 0.0, 0.0) if table is None else (table.v.ctypes.data, table.slope.ctypes.data, table.v.size,
                                                            table.phase_lo, table.step)
    status = load().exodus_events_ptc(model, phase.size, phase.ctypes.data, c.ctypes.data, omega.ctypes.data,
                                      out.ctypes.data, *eif)
    if status != 0:
        raise ValueError(f"exodus_events_ptc: bad arguments (status {status})")
    return out


def queue_replay(keys0, ids, new_keys, batch: int = 1):
    """Top ids of the compiled priority queue after every ``batch`` updates ``key[ids[u]] = new_keys[u]``
    (and after the last; -1 elsewhere), starting from ``keys0`` (for the tests)."""
    import numpy as np

    keys0 = np.ascontiguousarray(keys0, np.float64)
    ids = np.ascontiguousarray(ids, np.int64)
    new_keys = np.ascontiguousarray(new_keys, np.float64)
    if keys0.ndim != 1 or keys0.size < 1 or ids.shape != new_keys.shape or ids.ndim != 1:
        raise ValueError("queue_replay: keys0 (n,) with n >= 1, ids and new_keys of one shape (m,)")
    if ids.size and (ids.min() < 0 or ids.max() >= keys0.size):
        raise ValueError("queue_replay: ids out of range")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError("queue_replay: batch must be an int >= 1")
    out = np.empty(ids.size, np.int64)
    status = load().exodus_events_queue_replay(keys0.size, keys0.ctypes.data, ids.size, ids.ctypes.data,
                                               new_keys.ctypes.data, batch, out.ctypes.data)
    if status != 0:
        raise ValueError(f"exodus_events_queue_replay: bad arguments (status {status})")
    return out


def schedule_replay(seconds_on, seconds_off, disturbed=None):
    """Whether the helper thread works in each block (bool (m,)) under the compiled schedule rule,
    when block b takes ``seconds_on[b]`` with the helper and ``seconds_off[b]`` without
    (``disturbed[b]``: the block held an O(N) renormalisation) (for the tests)."""
    import numpy as np

    seconds_on = np.ascontiguousarray(seconds_on, np.float64)
    seconds_off = np.ascontiguousarray(seconds_off, np.float64)
    disturbed = (np.zeros(seconds_on.shape, np.int32) if disturbed is None
                 else np.ascontiguousarray(disturbed, np.int32))
    if seconds_on.ndim != 1 or seconds_off.shape != seconds_on.shape or disturbed.shape != seconds_on.shape:
        raise ValueError("schedule_replay: seconds_on, seconds_off and disturbed of one shape (m,)")
    on = np.empty(seconds_on.size, np.int32)
    status = load().exodus_events_schedule_replay(seconds_on.size, seconds_on.ctypes.data, seconds_off.ctypes.data,
                                                  disturbed.ctypes.data, on.ctypes.data)
    if status != 0:
        raise ValueError(f"exodus_events_schedule_replay: bad arguments (status {status})")
    return on.astype(bool)


def available() -> bool:
    try:
        load()
        return True
    except BuildError:
        return False
