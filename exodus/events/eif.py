"""Exponential integrate-and-fire neurons through a precomputed phase table (DESIGN.md §8).

EIF (time in units of tau, voltages in units of the LIF threshold):

    dV/dt = F(V) = -V + delta_t exp((V - v_t) / delta_t) + I,   I = 1 + i_ext,

reset v_reset, spike when V reaches v_peak. With no closed form, the phase (time since reset of
a free neuron, omega = 1) is tabulated: phi(V) = int_{v_reset}^{V} dV' / F(V') by 8-point
Gauss-Legendre quadrature on a fine voltage grid, then V at uniform phase nodes by Newton on
that integral. Between nodes V(phi) is the cubic Hermite interpolant with the exact slopes F(V)
(cuda/events_neurons.h evaluates the same interpolant and inverts it exactly), so the simulated
neuron is the interpolated one; tests/test_events.py measures the table against the ODE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class EIFParams:
    """delta_t: slope factor; v_t: soft threshold; v_reset; v_peak: spike cut-off; v_low: the
    lowest voltage the table covers (inhibition below it stops the simulation with an error);
    n_nodes: table size."""
    delta_t: float = 0.1
    v_t: float = 1.0
    v_reset: float = 0.0
    v_peak: float = 1.5
    v_low: float = -4.0
    n_nodes: int = 8192

    def __post_init__(self):
        if not self.delta_t > 0:
            raise ValueError(f"delta_t must be > 0, got {self.delta_t}")
        if not self.v_low < self.v_reset < self.v_peak:
            raise ValueError("EIF voltages must satisfy v_low < v_reset < v_peak")
        if self.v_peak <= self.v_t:
            raise ValueError("v_peak must lie above the soft threshold v_t")
        if int(self.n_nodes) < 16:
            raise ValueError("n_nodes must be >= 16")


_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


class EIFTable:
    """V at phases phase_lo + m step (m < n), slopes dV/dphi, threshold phase phase_th."""

    def __init__(self, params: EIFParams, i_ext: float):
        self.params = p = params
        self.drive = 1.0 + float(i_ext)
        if not p.delta_t - p.v_t + self.drive > 0:
            raise ValueError(f"i_ext = {i_ext} is below the EIF rheobase (i_ext > v_t - delta_t - 1 = "
                             f"{p.v_t - p.delta_t - 1:g}): the neuron never spikes")
        # Phase of a fine voltage grid (denser near v_peak, where 1/F changes fastest).
        grid = np.concatenate([np.linspace(p.v_low, p.v_reset, 2001)[:-1], np.linspace(p.v_reset, p.v_peak, 8001)])
        phase = np.concatenate([[0.0], np.cumsum(self._integral(grid[:-1], grid[1:]))])
        phase -= phase[2000]  # grid[2000] = v_reset: phase 0
        self.phase_lo, self.phase_th = float(phase[0]), float(phase[-1])
        n = int(p.n_nodes)
        self.step = (self.phase_th - self.phase_lo) / (n - 1)
        nodes = self.phase_lo + self.step * np.arange(n)
        k = np.clip(np.searchsorted(phase, nodes, side="right") - 1, 0, grid.size - 2)
        v = np.interp(nodes, phase, grid)
        for _ in range(30):  # Newton on phi(V) = node
            residual = phase[k] + self._integral(grid[k], v) - nodes
            update = residual * self.rhs(v)
            v = np.clip(v - update, grid[k], grid[k + 1])
            if np.max(np.abs(update)) < 1e-15:
                break
        v[0], v[-1] = p.v_low, p.v_peak
        self.v = np.ascontiguousarray(v)
        self.slope = np.ascontiguousarray(self.rhs(v))

    def rhs(self, v):
        """F(V) = dV/dt."""
        p = self.params
        return -v + p.delta_t * np.exp((v - p.v_t) / p.delta_t) + self.drive

    def _integral(self, a, b):
        """int_a^b dV / F(V), elementwise (8-point Gauss-Legendre)."""
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        mid, half = (a + b) / 2, (b - a) / 2
        points = mid[..., None] + half[..., None] * _GL_X
        return half * np.sum(_GL_W / self.rhs(points), axis=-1)

    def exact_phase(self, v):
        """phi(V) from the quadrature directly (no table): the reference for the table tests."""
        p = self.params
        v = np.asarray(v, np.float64)
        edges = np.linspace(0.0, 1.0, 65)
        a = p.v_reset + (v[..., None] - p.v_reset) * edges[:-1]
        b = p.v_reset + (v[..., None] - p.v_reset) * edges[1:]
        return np.sum(self._integral(a, b), axis=-1)

    # --- the interpolant, in numpy (same formulas as cuda/events_neurons.h) ---------------------
    def voltage(self, phase):
        """V(phase) of the Hermite interpolant (NaN outside the table)."""
        phase = np.asarray(phase, np.float64)
        x = (phase - self.phase_lo) / self.step
        m = np.clip(np.floor(x).astype(np.int64), 0, self.v.size - 2)
        s = x - m
        h00, h10, h01, h11 = 2 * s ** 3 - 3 * s ** 2 + 1, s ** 3 - 2 * s ** 2 + s, -2 * s ** 3 + 3 * s ** 2, s ** 3 - s ** 2
        out = (h00 * self.v[m] + h10 * self.step * self.slope[m] + h01 * self.v[m + 1]
               + h11 * self.step * self.slope[m + 1])
        return np.where((x >= 0) & (x <= self.v.size - 1), out, np.nan)

    def phase_of(self, v):
        """Phase of voltage v on the interpolant (bisection), NaN below, +inf above the table."""
        v = np.asarray(v, np.float64)
        m = np.clip(np.searchsorted(self.v, v, side="right") - 1, 0, self.v.size - 2)
        lo, hi = np.zeros_like(v), np.ones_like(v)
        for _ in range(64):
            mid = (lo + hi) / 2
            below = self.voltage(self.phase_lo + (m + mid) * self.step) <= v
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out = self.phase_lo + (m + (lo + hi) / 2) * self.step
        return np.where(v < self.v[0], np.nan, np.where(v >= self.v[-1], np.inf, out))


@lru_cache(maxsize=16)
def _table(params: EIFParams, i_ext: float) -> EIFTable:
    return EIFTable(params, i_ext)


def eif_table(params: EIFParams, i_ext: float) -> EIFTable:
    """The (cached) phase table of an EIF neuron with drive 1 + i_ext."""
    if not isinstance(params, EIFParams):
        raise TypeError(f"eif must be an exodus.events.EIFParams, got {type(params).__name__}")
    return _table(params, float(i_ext))
