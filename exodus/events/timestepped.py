"""A time-stepped torch simulation of the same LIF network (not exact: for the tests' error check
and the benchmark's comparison).

Per step of dt (units of tau): V <- I + (V - I) exp(-dt) (exact between kicks), neurons with
V >= 1 spike at the end of the step, their targets receive V -= J w at once, spikers reset to 0.
Spike times are therefore late by up to dt (error O(dt), also through the delayed kicks).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import _native
from .network import Network, Spikes


def targets_of_many(network: Network, presynaptic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, synapse ids), flat, of all neurons in ``presynaptic`` (random graph: one native call)."""
    presynaptic = np.ascontiguousarray(presynaptic, np.int64)
    if network.indptr is not None:
        parts = [network.targets_and_synapses(j) for j in presynaptic]
        if not parts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    k = network.k
    out = np.empty((presynaptic.size, k), np.int64)
    status = _native.load().exodus_events_targets_many(network.seed, network.n, k, presynaptic.ctypes.data,
                                                       presynaptic.size, out.ctypes.data)
    if status != 0:
        raise ValueError("invalid presynaptic neuron ids")
    return out.reshape(-1), (presynaptic[:, None] * k + np.arange(k)).reshape(-1)


def simulate_timestepped(network: Network, duration: float, dt: float, phase0=None) -> Spikes:
    """Time-stepped LIF simulation for ``duration`` seconds with step ``dt`` (units of tau)."""
    if network.model != "lif":
        raise ValueError("the time-stepped simulation is implemented for LIF networks")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    n = network.n
    phase0 = network.initial_phases() if phase0 is None else np.asarray(phase0, np.float64)
    drive = torch.from_numpy(1.0 + np.broadcast_to(np.asarray(network.i_ext, np.float64), (n,)).copy())
    omega = torch.from_numpy(network.omega_per_neuron())
    v = drive * (1.0 - torch.exp(-torch.from_numpy(phase0) / omega))
    decay = math.exp(-dt)
    weights = None if network.weights is None else torch.from_numpy(network.weights.reshape(-1))
    steps = int(round(duration / network.tau / dt))
    times, ids = [], []
    for step in range(1, steps + 1):
        v = drive + (v - drive) * decay
        spiking = torch.nonzero(v >= 1.0).reshape(-1)
        if spiking.numel():
            targets, synapses = targets_of_many(network, spiking.numpy())
            kick = torch.full((targets.size,), network.coupling_j, dtype=torch.float64)
            if weights is not None:
                kick = kick * weights[torch.from_numpy(synapses)]
            v.index_add_(0, torch.from_numpy(targets), -kick)
            v[spiking] = 0.0
            times.append(np.full(spiking.numel(), step * dt))
            ids.append(spiking.numpy().copy())
    t = np.concatenate(times) * network.tau if times else np.empty(0)
    neurons = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return Spikes(times=t, neurons=neurons, counts=np.bincount(neurons, minlength=n), duration=steps * dt * network.tau,
                  n_neurons=n, phase0=phase0, network=network)
