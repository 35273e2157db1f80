// exodus.events — phase math of pulse-coupled neurons (DESIGN.md §8, SparseProp, Engelken 2023),
// written once as inline functions: the heap simulator (cpu_events.cpp) calls them. The Python
// oracle (exodus/events/reference.py) re-derives the same closed forms independently in numpy.
//
// Time is in units of the membrane time constant tau. Between spikes every neuron's phase grows
// linearly at its speed omega; a presynaptic spike moves the phase of each target through the
// phase transition curve (PTC) of a voltage kick V -> V - J w (J > 0 is inhibitory).
#pragma once
#include <cmath>
#include <cstdint>

namespace exodus_events {

enum Model : int32_t { LIF = 0, QIF = 1, EIF = 2 };

// ---- LIF: tau dV/dt = -V + I, I = 1 + i_ext, threshold 1, reset 0 (DESIGN §8) ----------------
// V(phi) = I (1 - exp(-phi/omega)), phase in (-inf, 1], omega = 1 / ln(1 + 1/i_ext).
inline double lif_omega(double i_ext) { return 1.0 / std::log1p(1.0 / i_ext); }

inline double lif_voltage(double phase, double drive, double omega) { return -drive * std::expm1(-phase / omega); }

// PTC phi+ = -omega ln(exp(-phi/omega) + c), c = J w / I, written as phi - omega log1p(c exp(phi/omega))
// (no cancellation for small c). Excitation (c < 0) can cross the threshold: the result is then
// >= 1 or NaN, and the simulator reports it.
inline double lif_ptc(double phase, double c, double omega) {
  return phase - omega * std::log1p(c * std::exp(phase / omega));
}

// The same PTC in exponential coordinates psi = exp(-phi/omega) = 1 - V/I (the simulator's
// homogeneous LIF heap): a kick is psi+ = psi + c, and a common phase advance dPhi multiplies
// every psi by exp(-dPhi/omega), so with a global factor the per-target work is one addition.
inline double lif_psi_of_phase(double phase, double omega) { return std::exp(-phase / omega); }
inline double lif_phase_of_psi(double psi, double omega) { return -omega * std::log(psi); }
inline double lif_ptc_psi(double psi, double c) { return psi + c; }

// ---- QIF: tau dV/dt = V^2 + i_ext, spike at V = +inf, reset to -inf ------------------------------
// V(phi) = (omega/2) tan(phi/2), phase in (-pi, pi], omega = 2 sqrt(i_ext);
// PTC phi+ = 2 atan(tan(phi/2) + c), c = -2 J w / omega (DESIGN §8). Never crosses pi.
inline double qif_omega(double i_ext) { return 2.0 * std::sqrt(i_ext); }

inline double qif_voltage(double phase, double omega) { return 0.5 * omega * std::tan(0.5 * phase); }

inline double qif_ptc(double phase, double c) { return 2.0 * std::atan(std::tan(0.5 * phase) + c); }

// ---- EIF: tau dV/dt = -V + delta_T exp((V - v_T)/delta_T) + I, reset v_r, spike at v_peak ----
// No closed form: V(phi) is tabulated at phases phi_m = phase_lo + m h (m = 0 .. n-1) with its
// slope dV/dphi (computed in Python by integrating the ODE), phase 0 at v_r, threshold phase at
// v_peak, omega = 1 (phase = time since reset for a free neuron). Between nodes V is the cubic
// Hermite interpolant, which is monotone here (dV/dphi > 0 everywhere on the table); the PTC is
// phi+ = phase_of(V(phi) - J w), with phase_of the exact inverse of that interpolant (bisection
// over nodes, then safeguarded Newton inside the cell).
struct EifTable {
  const double* v;      // (n,) V at the nodes
  const double* slope;  // (n,) dV/dphi at the nodes
  int64_t n;
  double phase_lo;      // phase of node 0
  double step;          // node spacing h
};

inline double eif_hermite(const EifTable& t, int64_t m, double s) {  // V at phase_lo + (m + s) h
  const double s2 = s * s, s3 = s2 * s;
  const double h00 = 2 * s3 - 3 * s2 + 1, h10 = s3 - 2 * s2 + s, h01 = -2 * s3 + 3 * s2, h11 = s3 - s2;
  return h00 * t.v[m] + h10 * t.step * t.slope[m] + h01 * t.v[m + 1] + h11 * t.step * t.slope[m + 1];
}

inline double eif_hermite_slope(const EifTable& t, int64_t m, double s) {  // dV/dphi there
  const double s2 = s * s;
  const double d00 = 6 * s2 - 6 * s, d10 = 3 * s2 - 4 * s + 1, d01 = -6 * s2 + 6 * s, d11 = 3 * s2 - 2 * s;
  return (d00 * t.v[m] + d01 * t.v[m + 1]) / t.step + d10 * t.slope[m] + d11 * t.slope[m + 1];
}

// V(phase); NaN outside the table.
inline double eif_voltage(const EifTable& t, double phase) {
  const double x = (phase - t.phase_lo) / t.step;
  if (!(x >= 0.0) || x > double(t.n - 1)) return NAN;
  int64_t m = int64_t(x);
  if (m >= t.n - 1) m = t.n - 2;
  return eif_hermite(t, m, x - double(m));
}

// Phase of voltage v; NaN below the table (the kick pushed V under its lowest voltage), +inf above.
inline double eif_phase(const EifTable& t, double v) {
  if (!(v >= t.v[0])) return NAN;
  if (v >= t.v[t.n - 1]) return INFINITY;
  int64_t lo = 0, hi = t.n - 1;  // v[lo] <= v < v[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (t.v[mid] <= v) lo = mid; else hi = mid;
  }
  double a = 0.0, b = 1.0, s = (v - t.v[lo]) / (t.v[hi] - t.v[lo]);
  for (int it = 0; it < 60; ++it) {
    const double f = eif_hermite(t, lo, s) - v;
    if (f == 0.0) break;
    if (f < 0.0) a = s; else b = s;
    const double d = eif_hermite_slope(t, lo, s) * t.step;
    double next = d > 0.0 ? s - f / d : 0.5 * (a + b);
    if (!(next > a && next < b)) next = 0.5 * (a + b);
    if (std::fabs(next - s) <= 1e-16 * (1.0 + std::fabs(s))) { s = next; break; }
    s = next;
  }
  return t.phase_lo + (double(lo) + s) * t.step;
}

// PTC of a kick dv (= -J w): phi+ = phase_of(V(phi) + dv).
inline double eif_ptc(const EifTable& t, double phase, double dv) { return eif_phase(t, eif_voltage(t, phase) + dv); }

}  // namespace exodus_events
