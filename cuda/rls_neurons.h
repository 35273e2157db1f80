// exodus.rls — the math of the FORCE-trained E/I LIF network (DESIGN.md §9), written once as
// inline functions: the compiled simulation loop (cpu_rls.cpp) calls them, and
// exodus/rls/reference.py spells out the same expressions in the same order (the tests compare
// the two bit for bit in float64 and float32).
//
// Units: time in ms, currents and voltages in units of the threshold distance.
#pragma once
#include <cstdint>

namespace exodus_rls {

// Exponential synaptic filter of one step (DESIGN §9): u += (-dt u + q) / tau, where q is the
// charge that arrived in the previous step (a spike of weight J adds J, so the integral of
// the current is J). The filtered spike trains r use the same rule with q = 0 or 1.
template <typename T>
inline T synaptic_filter(T u, T charge, T dt, T inv_tau) {
  return u + (-dt * u + charge) * inv_tau;
}

// Membrane step: v += dt/tau_m (X + u - v), with mem_rate = dt/tau_m (DESIGN §9).
template <typename T>
inline T membrane_step(T v, T external, T current, T mem_rate) {
  return v + mem_rate * ((external + current) - v);
}

// Upper-packed column-major symmetric storage (LAPACK 'U'): element (i, j), i <= j, sits at
// i + j (j + 1) / 2; column j is contiguous, P[0..j, j].
inline int64_t packed_column(int64_t j) { return j * (j + 1) / 2; }
inline int64_t packed_size(int64_t n) { return n * (n + 1) / 2; }

// One RLS step of one neuron (DESIGN §9), P upper-packed (n x n), w (n), x = its inputs r (n):
//   k = P x ;  c = 1 / (1 + x^T k) ;  P <- P - c k k^T ;
//   e = w^T x + u_static - u_target ;  w <- w - e c k   (classic; normalized == 0: w <- w - e k).
// k is scratch (n). Returns x^T k. P stays symmetric by construction (only one triangle is
// stored); the downdate is the exact Sherman-Morrison form, which keeps P positive definite in
// exact arithmetic (c > 0 because x^T P x >= 0).
template <typename T>
inline T rls_neuron_step(T* P, T* w, const T* x, T* k, int64_t n, T u_static, T u_target, bool normalized) {
  for (int64_t i = 0; i < n; ++i) k[i] = T(0);
  // k = P x from the packed upper triangle: column j adds P[0..j-1, j] x_j to k[0..j-1] and
  // P[0..j, j] . x[0..j] to k[j].
  for (int64_t j = 0; j < n; ++j) {
    const T* col = P + packed_column(j);
    const T xj = x[j];
    T dot = T(0);
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < j; ++i) {
      k[i] += col[i] * xj;
      dot += col[i] * x[i];
    }
    k[j] += col[j] * xj + dot;
  }
  T xk = T(0), wx = T(0);
  for (int64_t i = 0; i < n; ++i) {
    xk += x[i] * k[i];
    wx += w[i] * x[i];
  }
  const T c = T(1) / (T(1) + xk);
  for (int64_t j = 0; j < n; ++j) {
    T* col = P + packed_column(j);
    const T ckj = c * k[j];
#pragma omp simd
    for (int64_t i = 0; i <= j; ++i) col[i] -= ckj * k[i];
  }
  const T e = (wx + u_static) - u_target;
  const T step = normalized ? e * c : e;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] -= step * k[i];
  return xk;
}

}  // namespace exodus_rls
