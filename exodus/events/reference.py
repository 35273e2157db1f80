"""The oracle of exodus.events: a plain O(N)-per-spike exact event simulator in numpy.

Independent of the compiled simulator: it keeps every neuron's true phase, advances all of
them at every spike (O(N)), finds the next spiker with argmax / argmin over all neurons, and writes
the closed-form phase transition curves in their textbook form (DESIGN.md §8). The random graph
is re-implemented here from its spec (cuda/cpu_events.cpp, top comment) in numpy.

It is also the "O(N) vectorised numpy event simulator" of benchmarks/events_scaling.py.
"""
from __future__ import annotations

import math

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INIT_SALT = np.uint64(0xD1B54A32D192ED03)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def fmix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    return z ^ (z >> _S31)


_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def mulhi(x: np.ndarray, r: np.uint64) -> np.ndarray:
    """floor(x r / 2**64) for uint64 x (the high word of the 128-bit product, from 32-bit halves)."""
    xh, xl = x >> _S32, x & _M32
    rh, rl = r >> _S32, r & _M32
    hl, lh, ll = xh * rl, xl * rh, xl * rl
    carry = ((hl & _M32) + (lh & _M32) + (ll >> _S32)) >> _S32
    return xh * rh + (hl >> _S32) + (lh >> _S32) + carry


def random_targets(seed: int, n: int, k: int, j: int) -> np.ndarray:
    """The k distinct targets (int64, draw order) of presynaptic neuron j, no self-connection."""
    key = fmix(np.array([seed], np.uint64) ^ fmix(np.array([j + 1], np.uint64) * GOLDEN))
    draws = 2 * k + 16
    while True:
        m = np.arange(1, draws + 1, dtype=np.uint64)
        cand = mulhi(fmix(key + m * GOLDEN), np.uint64(n - 1)).astype(np.int64)
        target = cand + (cand >= j)
        _, first = np.unique(target, return_index=True)
        if first.size >= k:
            return target[np.sort(first)[:k]]
        draws *= 2


def uniform_phases(seed: int, n: int, low: float, high: float) -> np.ndarray:
    """n phases uniform in [low, high) from a counter-based hash of (seed, i): deterministic."""
    key = fmix(np.array([seed], np.uint64) ^ _INIT_SALT)
    x = fmix(key + np.arange(1, n + 1, dtype=np.uint64) * GOLDEN)
    u = (x >> _S11).astype(np.float64) * 2.0 ** -53
    return low + (high - low) * u


def lif_ptc_ref(phase, c, omega):
    """LIF phase transition curve phi+ = -omega ln(exp(-phi/omega) + c) (DESIGN §8); NaN where an
    excitatory kick (c < 0) overshoots V = I."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return -omega * np.log(np.exp(-phase / omega) + c)


def qif_ptc_ref(phase, c):
    """QIF phase transition curve phi+ = 2 atan(tan(phi/2) + c) (DESIGN §8)."""
    return 2.0 * np.arctan(np.tan(phase / 2.0) + c)


def simulate_reference(network, n_spikes: int, duration: float = math.inf, phase0=None,
                       voltage_times=None, voltage_neurons=None):
    """Exact simulation, O(N) per spike. Same arguments and result type as exodus.events.simulate
    (times in seconds). Supports LIF, QIF (homogeneous and heterogeneous drive) and EIF (its
    phase table evaluated and inverted in numpy by bisection), random or CSR graphs, weights."""
    from .network import Spikes  # result type only

    net = network
    n = net.n
    omega = net.omega_per_neuron()
    coupling = net.coupling_per_neuron()
    phase = (net.initial_phases() if phase0 is None else np.array(phase0, np.float64)).copy()
    phase0 = phase.copy()
    t_end = duration / net.tau
    samples = None if voltage_times is None else np.asarray(voltage_times, np.float64) / net.tau
    rec = np.arange(n) if voltage_neurons is None else np.asarray(voltage_neurons, np.int64)
    voltage = None if samples is None else np.full((samples.size, rec.size), np.nan)
    next_sample = 0

    def write_samples(t_now, t_limit, inclusive):
        nonlocal next_sample
        while next_sample < (0 if samples is None else samples.size) and (
                samples[next_sample] < t_limit or (inclusive and samples[next_sample] == t_limit)):
            p = phase[rec] + omega[rec] * (samples[next_sample] - t_now)
            voltage[next_sample] = net.voltage_of_phase(p, rec)
            next_sample += 1

    times, ids = [], []
    t = 0.0
    for _ in range(n_spikes):
        if net.heterogeneous:
            wait = (net.phase_th - phase) / omega
            j = int(np.argmin(wait))
            dt = wait[j]
        else:
            j = int(np.argmax(phase))
            dt = (net.phase_th - phase[j]) / net.omega0
        if t + dt > t_end:
            write_samples(t, t_end, True)
            break
        write_samples(t, t + dt, False)
        t = t + dt
        phase += omega * dt
        phase[j] = net.phase_th
        if net.indptr is None:
            targets = random_targets(net.seed, n, net.k, j)
            synapses = j * net.k + np.arange(net.k)
        else:
            targets = net.indices[net.indptr[j]:net.indptr[j + 1]]
            synapses = np.arange(net.indptr[j], net.indptr[j + 1])
        w = np.ones(targets.size) if net.weights is None else net.weights.reshape(-1)[synapses]
        c = coupling[targets] * w
        if net.model == "lif":
            phase[targets] = lif_ptc_ref(phase[targets], c, omega[targets])
            if np.any(~(phase[targets] < net.phase_th)):
                raise ValueError("an excitatory kick pushed a LIF neuron across threshold (not supported)")
        elif net.model == "qif":
            phase[targets] = qif_ptc_ref(phase[targets], c)
        else:  # EIF: the voltage kick through the table, phi+ = phase_of(V(phi) - J w)
            phase[targets] = net.eif_table.phase_of(net.eif_table.voltage(phase[targets]) + c)
            if np.any(~(phase[targets] < net.phase_th)):
                raise ValueError("an EIF neuron left the table (kick across v_peak or below v_low)")
        phase[j] = net.phase_reset
        times.append(t)
        ids.append(j)
    times = np.array(times, np.float64) * net.tau
    ids = np.array(ids, np.int64)
    counts = np.bincount(ids, minlength=n)
    end = duration if (len(times) < n_spikes and math.isfinite(duration)) else (float(times[-1]) if len(times) else 0.0)
    return Spikes(times=times, neurons=ids, counts=counts, duration=end, n_neurons=n,
                  voltage_times=None if samples is None else samples * net.tau, voltage=voltage, phase0=phase0,
                  network=net)
