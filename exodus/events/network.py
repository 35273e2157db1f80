"""Pulse-coupled sparse networks and their exact event-based simulation (DESIGN.md §8).

Units: ``tau`` in seconds; inside the simulator time is in units of tau, phases as in DESIGN §8;
spike times come back in seconds and rates in Hz. Couplings are inhibitory for j0 > 0: a spike
of j moves each target i's voltage by -J w_ji with J = j0 / sqrt(K) (w_ji = 1 unless ``weights``).
"""
from __future__ import annotations

import ctypes
import math
import sys
import time as _time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from . import _native
from .reference import uniform_phases

MODELS = ("lif", "qif", "eif")
_MODEL_ID = {"lif": 0, "qif": 1, "eif": 2}


def _ptr(array: Optional[np.ndarray]) -> Optional[int]:
    return None if array is None else array.ctypes.data


def _positive_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


class Network:
    """A sparse pulse-coupled network of LIF, QIF or EIF neurons (nothing N x K is stored for the
    random graph: each neuron's K targets are redrawn from its seed when it spikes).

    Args:
        n: number of neurons (>= 2).
        k: out-degree of the random graph (1 <= k < n); with ``graph`` the mean out-degree is used
            for the scaling J = j0 / sqrt(K) unless ``k`` is given.
        model: "lif", "qif" or "eif" (EIF: exodus.events.EIFParams, homogeneous drive only).
        j0: coupling strength (> 0 inhibitory); J = j0 / sqrt(K).
        tau: membrane time constant in seconds.
        i_ext: external drive (units of the threshold). A number = homogeneous drive (phase queue);
            an array of shape (n,) = heterogeneous drive (next-spike-time queue). Default: the
            balance equation i_ext = tau sqrt(K) j0 nu (DESIGN §8).
        nu: target rate of the balance equation in Hz (only for the default i_ext).
        seed: seed of the random graph (0 <= seed < 2**64); also the default seed of the initial phases.
        graph: (indptr, indices) CSR arrays or a scipy.sparse matrix, row j = the targets of j;
            no self-connections, no duplicate targets.
        weights: per-synapse multipliers of J: shape (n, k) for the random graph (row j, r-th
            target in draw order), (nnz,) for a CSR graph.
        eif: EIFParams for model="eif".
    """

    def __init__(self, n: int, k: Optional[int] = None, *, model: str = "lif", j0: float = 1.0, tau: float = 0.01,
                 i_ext=None, nu: float = 1.0, seed: int = 1, graph=None, weights=None, eif=None):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        n = int(n)
        if n < 2:
            raise ValueError(f"a network needs n >= 2 neurons, got n = {n}")
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.n, self.model, self.seed = n, model, int(seed)
        self.tau = _positive_number("tau", tau)
        if isinstance(j0, bool) or not isinstance(j0, (int, float, np.integer, np.floating)) or not math.isfinite(j0):
            raise ValueError(f"j0 must be a finite number, got {j0!r}")
        self.j0 = float(j0)

        self.indptr = self.indices = None
        if graph is not None:
            self.indptr, self.indices = _check_csr(graph, n)
            mean_degree = self.indices.size / n
            if k is None:
                k = mean_degree
            if not k > 0:
                raise ValueError("the graph has no synapses")
            self.k = float(k)
        else:
            k = 100 if k is None else k
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise TypeError(f"k must be an int, got {type(k).__name__}")
            if not 1 <= int(k) < n:
                raise ValueError(f"k must satisfy 1 <= k < n (K distinct targets, no self-connection), got k = {k}, "
                                 f"n = {n}")
            self.k = int(k)
        self.coupling_j = self.j0 / math.sqrt(self.k)

        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype=np.float64)
            shape = (self.indices.size,) if graph is not None else (n, self.k)
            if weights.shape != shape:
                raise ValueError(f"weights must have shape {shape}, got {weights.shape}")
            if not np.all(np.isfinite(weights)):
                raise ValueError("weights must be finite")
        self.weights = weights

        if i_ext is None:
            _positive_number("nu", nu)
            i_ext = self.tau * math.sqrt(self.k) * self.j0 * nu
        if np.ndim(i_ext) == 0:
            self.heterogeneous = False
            self.i_ext = float(i_ext)
        else:
            self.heterogeneous = True
            self.i_ext = np.ascontiguousarray(i_ext, dtype=np.float64)
            if self.i_ext.shape != (n,):
                raise ValueError(f"i_ext must be a number or have shape ({n},), got {self.i_ext.shape}")
        drive = np.asarray(self.i_ext)
        if not np.all(np.isfinite(drive)):
            raise ValueError("i_ext must be finite")
        self.eif = None
        if model == "eif":
            from .eif import EIFParams, eif_table
            self.eif = eif if eif is not None else EIFParams()
            if self.heterogeneous:
                raise ValueError("model='eif' supports homogeneous drive only (one PTC table): pass a number as i_ext")
            self.eif_table = eif_table(self.eif, self.i_ext)
        elif eif is not None:
            raise ValueError("eif parameters given for a non-EIF model")
        if model in ("lif", "qif") and not np.all(drive > 0):
            bad = float(np.min(drive))
            raise ValueError(f"i_ext must be > 0 for {model.upper()} neurons: with i_ext = {bad} (at or below rheobase) "
                             "a neuron never reaches threshold, and an inhibitory network has no spikes at all")

    # ---- derived per-neuron quantities (DESIGN §8) --------------------------------------------
    @property
    def phase_th(self) -> float:
        return {"lif": 1.0, "qif": math.pi, "eif": self.eif_table.phase_th if self.eif else 0.0}[self.model]

    @property
    def phase_reset(self) -> float:
        return {"lif": 0.0, "qif": -math.pi, "eif": 0.0}[self.model]

    def omega_per_neuron(self) -> np.ndarray:
        """(n,) phase speed omega_i per unit tau."""
        drive = np.broadcast_to(np.asarray(self.i_ext, np.float64), (self.n,))
        if self.model == "lif":
            return 1.0 / np.log1p(1.0 / drive)
        if self.model == "qif":
            return 2.0 * np.sqrt(drive)
        return np.ones(self.n)

    def coupling_per_neuron(self) -> np.ndarray:
        """(n,) kick parameter of a unit-weight synapse onto neuron i: c = J / I_i (LIF),
        -2 J / omega_i (QIF), -J (EIF: a voltage step)."""
        drive = np.broadcast_to(np.asarray(self.i_ext, np.float64), (self.n,))
        if self.model == "lif":
            return self.coupling_j / (1.0 + drive)
        if self.model == "qif":
            return -2.0 * self.coupling_j / self.omega_per_neuron()
        return np.full(self.n, -self.coupling_j)

    @property
    def omega0(self) -> float:
        return float(self.omega_per_neuron()[0])

    def voltage_of_phase(self, phase: np.ndarray, neurons: np.ndarray) -> np.ndarray:
        """Voltage (units of the threshold) of ``neurons`` at phases ``phase``."""
        omega = self.omega_per_neuron()[neurons]
        if self.model == "lif":
            drive = 1.0 + np.broadcast_to(np.asarray(self.i_ext, np.float64), (self.n,))[neurons]
            return drive * (1.0 - np.exp(-phase / omega))
        if self.model == "qif":
            return omega / 2.0 * np.tan(phase / 2.0)
        return self.eif_table.voltage(phase)

    def targets_and_synapses(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Targets of presynaptic neuron j and their synapse indices (into weights.reshape(-1))."""
        if self.indptr is not None:
            lo, hi = int(self.indptr[j]), int(self.indptr[j + 1])
            return self.indices[lo:hi], np.arange(lo, hi)
        out = np.empty(self.k, np.int64)
        status = _native.load().exodus_events_targets(self.seed, self.n, self.k, int(j), out.ctypes.data)
        if status != 0:
            raise ValueError(f"invalid presynaptic neuron {j}")
        return out, j * self.k + np.arange(self.k)

    def initial_phases(self, seed: Optional[int] = None) -> np.ndarray:
        """(n,) deterministic initial phases, uniform between reset and threshold."""
        return uniform_phases(self.seed if seed is None else seed, self.n, self.phase_reset, self.phase_th)

    def with_params(self, **changes) -> "Network":
        """A copy with some constructor arguments changed (j0, i_ext, weights, ...)."""
        args = dict(n=self.n, k=self.k, model=self.model, j0=self.j0, tau=self.tau, i_ext=self.i_ext, seed=self.seed,
                    graph=None if self.indptr is None else (self.indptr, self.indices), weights=self.weights,
                    eif=self.eif)
        args.update(changes)
        return Network(**args)

    def _struct(self) -> tuple[_native.EventsNetwork, list]:
        keep = []  # arrays the struct points into
        omega = self.omega_per_neuron()
        coupling = self.coupling_per_neuron()
        drive = 1.0 + np.broadcast_to(np.asarray(self.i_ext, np.float64), (self.n,)).copy()
        keep += [omega, coupling, drive]
        s = _native.EventsNetwork()
        s.n, s.k = self.n, int(self.k) if self.indptr is None else 0
        s.model, s.heterogeneous, s.seed = _MODEL_ID[self.model], int(self.heterogeneous), self.seed
        s.csr_indptr, s.csr_indices = _ptr(self.indptr), _ptr(self.indices)
        s.weights = _ptr(self.weights)
        s.omega, s.coupling, s.drive = omega.ctypes.data, coupling.ctypes.data, drive.ctypes.data
        s.omega0, s.coupling0, s.drive0 = float(omega[0]), float(coupling[0]), float(drive[0])
        s.phase_th, s.phase_reset = self.phase_th, self.phase_reset
        if self.model == "eif":
            table = self.eif_table
            s.eif_v, s.eif_slope = table.v.ctypes.data, table.slope.ctypes.data
            s.eif_n, s.eif_phase_lo, s.eif_step = table.v.size, table.phase_lo, table.step
            keep += [table.v, table.slope]
        return s, keep

    def __repr__(self) -> str:
        drive = "heterogeneous" if self.heterogeneous else f"i_ext={self.i_ext:g}"
        graph = f"csr nnz={self.indices.size}" if self.indptr is not None else f"k={self.k}"
        return f"Network(n={self.n}, {graph}, model={self.model!r}, j0={self.j0:g}, tau={self.tau:g}, {drive})"


def _check_csr(graph, n: int) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(graph, "tocsr"):
        csr = graph.tocsr()
        if csr.shape != (n, n):
            raise ValueError(f"graph must be ({n}, {n}), got {csr.shape}")
        indptr, indices = csr.indptr, csr.indices
    else:
        try:
            indptr, indices = graph
        except (TypeError, ValueError):
            raise TypeError("graph must be (indptr, indices) CSR arrays or a scipy.sparse matrix") from None
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
        raise ValueError(f"graph indptr must be non-decreasing of shape ({n + 1},), from 0 to len(indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"graph indices must lie in [0, {n})")
    rows = np.repeat(np.arange(n), np.diff(indptr))
    if np.any(rows == indices):
        raise ValueError("graph has self-connections (a neuron cannot target itself)")
    if np.unique(rows * n + indices).size != indices.size:
        raise ValueError("graph has duplicate synapses (the same target twice in one row)")
    return indptr, indices


@dataclass
class Spikes:
    """Result of a simulation. times (S,) seconds, ascending; neurons (S,) int64 ids; counts (n,)
    spikes per neuron; duration in seconds (the requested duration, or the last spike time when
    the run stopped at n_spikes); voltage (n_times, n_recorded) at voltage_times (NaN after the end)."""

    times: np.ndarray
    neurons: np.ndarray
    counts: np.ndarray
    duration: float
    n_neurons: int
    voltage_times: Optional[np.ndarray] = None
    voltage: Optional[np.ndarray] = None
    phase0: Optional[np.ndarray] = None
    network: Optional[Network] = field(default=None, repr=False)
    wall_seconds: float = 0.0

    def rates(self) -> np.ndarray:
        """(n,) firing rate of every neuron in Hz (spike count / duration)."""
        return self.counts / self.duration if self.duration > 0 else np.zeros(self.n_neurons)

    def mean_rate(self) -> float:
        """Network mean rate in Hz."""
        return float(self.counts.sum() / (self.n_neurons * self.duration)) if self.duration > 0 else 0.0

    def torch(self):
        """(times, neurons) as torch tensors (float64, int64)."""
        import torch
        return torch.from_numpy(self.times), torch.from_numpy(self.neurons)


ProgressCallback = Callable[[dict], None]


def _print_progress(info: dict) -> None:
    print(f"\r[exodus.events] {info['spikes']:,} spikes, t = {info['time']:.4g} s, "
          f"{info['wall']:.1f} s wall, {info['us_per_spike']:.2f} us/spike", end="", file=sys.stderr, flush=True)


def simulate(network: Network, n_spikes: Optional[int] = None, duration: Optional[float] = None, *,
             phase0=None, init_seed: Optional[int] = None, record: bool = True, voltage_times=None,
             voltage_neurons=None, progress: Union[bool, ProgressCallback] = False,
             chunk_spikes: int = 1_000_000, threads: int = 1) -> Spikes:
    """Exact event-based simulation with the compiled priority queue (O(K) work per spike, amortised).

    Stops after ``n_spikes`` spikes or at ``duration`` seconds, whichever comes first (at least
    one must be given). ``phase0`` (n,) initial phases (default: uniform from ``init_seed``, which
    defaults to the network's seed). ``record=False`` keeps only the counts (O(N) memory).
    ``voltage_times`` (ascending, seconds) and ``voltage_neurons`` (default all) sample voltages.
    ``progress``: True prints to stderr after every ``chunk_spikes`` spikes, or a callable receiving
    {"spikes", "time", "wall", "us_per_spike"}. Deterministic for given network and seeds.
    ``threads=2`` runs a helper thread beside the simulating one (random graphs only; it draws
    the likely next spikers' targets ahead): the same spikes, bit for bit, in less wall time on a
    free second core (N = 1e6: 0.21 -> 0.17-0.18 us a spike) for about twice the CPU time. The
    simulator times blocks of spikes with and without the helper and keeps the faster way, so on
    a busy core it runs about as fast as ``threads=1``.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be an exodus.events.Network, got {type(network).__name__}")
    if n_spikes is None and duration is None:
        raise ValueError("give n_spikes and/or duration (the simulation needs a stopping point)")
    if n_spikes is not None:
        if isinstance(n_spikes, bool) or not isinstance(n_spikes, (int, np.integer)) or n_spikes < 0:
            raise ValueError(f"n_spikes must be a non-negative int, got {n_spikes!r}")
    max_spikes = int(n_spikes) if n_spikes is not None else None
    t_end = math.inf if duration is None else _positive_number("duration", duration) / network.tau
    if isinstance(chunk_spikes, bool) or not isinstance(chunk_spikes, (int, np.integer)) or chunk_spikes < 1:
        raise ValueError(f"chunk_spikes must be a positive int, got {chunk_spikes!r}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads not in (1, 2):
        raise ValueError(f"threads must be 1 or 2 (one helper thread at most), got {threads!r}")
    n = network.n
    phase0 = network.initial_phases(init_seed) if phase0 is None else np.array(phase0, dtype=np.float64)
    if phase0.shape != (n,) or not np.all(np.isfinite(phase0)):
        raise ValueError(f"phase0 must be a finite array of shape ({n},)")
    if np.any(phase0 >= network.phase_th) or (network.model == "qif" and np.any(phase0 <= -math.pi)):
        raise ValueError(f"phase0 must lie below the threshold phase {network.phase_th:g}"
                         + (" and above -pi" if network.model == "qif" else ""))
    samples_struct, voltage, sample_times = None, None, None
    if voltage_times is not None:
        sample_times = np.ascontiguousarray(voltage_times, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(sample_times)) or np.any(sample_times < 0) or np.any(np.diff(sample_times) < 0):
            raise ValueError("voltage_times must be finite, non-negative and ascending (seconds)")
        rec = (np.arange(n, dtype=np.int64) if voltage_neurons is None
               else np.ascontiguousarray(voltage_neurons, dtype=np.int64).reshape(-1))
        if rec.size and (rec.min() < 0 or rec.max() >= n):
            raise ValueError(f"voltage_neurons must lie in [0, {n})")
        voltage = np.full((sample_times.size, rec.size), np.nan)
        tau_times = sample_times / network.tau
        samples_struct = _native.EventsSamples(tau_times.ctypes.data, tau_times.size, 0, rec.ctypes.data, rec.size,
                                               voltage.ctypes.data)
    elif voltage_neurons is not None:
        raise ValueError("voltage_neurons needs voltage_times")

    library = _native.load()
    net_struct, keep = network._struct()
    keys = np.empty(int(library.exodus_events_key_count(n)), np.float64)
    phase = np.empty(n if network.heterogeneous else 1, np.float64)
    last_time = np.empty(n if network.heterogeneous else 1, np.float64)
    counts = np.zeros(n, np.int64)
    state = _native.EventsState(keys.ctypes.data, phase.ctypes.data, last_time.ctypes.data, counts.ctypes.data, 0.0, 0.0, 0.0, 0)
    status = library.exodus_events_init(ctypes.byref(net_struct), ctypes.byref(state), phase0.ctypes.data, 0.0)
    if status != 0:
        raise RuntimeError(f"exodus_events_init failed with status {status}")

    report = _print_progress if progress is True else (progress or None)
    times_parts, ids_parts = [], []
    done, status = 0, _native.OK_MAX_SPIKES
    start = _time.perf_counter()
    done_count = ctypes.c_int64(0)
    samples_ptr = ctypes.byref(samples_struct) if samples_struct is not None else None
    while max_spikes is None or done < max_spikes:
        batch = chunk_spikes if max_spikes is None else min(chunk_spikes, max_spikes - done)
        out_t = np.empty(batch, np.float64) if record else None
        out_id = np.empty(batch, np.int64) if record else None
        status = library.exodus_events_run(ctypes.byref(net_struct), ctypes.byref(state), batch, t_end, _ptr(out_t),
                                           _ptr(out_id), samples_ptr, int(threads), ctypes.byref(done_count))
        got = done_count.value
        if record:
            times_parts.append(out_t[:got])
            ids_parts.append(out_id[:got])
        done += got
        if report is not None:
            wall = _time.perf_counter() - start
            report({"spikes": done, "time": state.time * network.tau, "wall": wall,
                    "us_per_spike": 1e6 * wall / max(done, 1)})
        if status == _native.OK_END_TIME:
            break
        if status == _native.ERR_CROSSING:
            raise ValueError(f"spike {done}: an excitatory kick pushed a {network.model.upper()} neuron across "
                             f"threshold at t = {state.time * network.tau:.6g} s; supra-threshold excitation is not "
                             "supported (keep j0 * weights >= 0 or small)")
        if status == _native.ERR_EIF_RANGE:
            raise ValueError(f"spike {done}: inhibition pushed an EIF neuron below the table's lowest voltage "
                             f"v_low = {network.eif.v_low}; lower EIFParams.v_low")
        if status != _native.OK_MAX_SPIKES:
            raise RuntimeError(f"exodus_events_run failed with status {status} after {done} spikes")
    wall = _time.perf_counter() - start
    if report is _print_progress:
        print(file=sys.stderr)
    del keep
    times = (np.concatenate(times_parts) if times_parts else np.empty(0)) * network.tau
    ids = np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int64)
    stopped_by_time = status == _native.OK_END_TIME
    end = (t_end * network.tau if stopped_by_time else state.time * network.tau)
    return Spikes(times=times, neurons=ids, counts=counts, duration=end, n_neurons=n, voltage_times=sample_times,
                  voltage=voltage, phase0=phase0, network=network, wall_seconds=wall)
