// exodus.rls — compiled simulation loop and batched RLS update of the E/I LIF network
// (DESIGN.md §9). Built by exodus/rls/_native.py with -DEXODUS_SCALAR=<float|double>; the math is
// in rls_neurons.h, the plain reference in exodus/rls/reference.py.
//
// Per step t (1-based, time t dt), in the order of the reference:
//   1. every neuron: filter the charges of step t-1 into u_exc, u_inh, u_plastic and the spike
//      flag of step t-1 into r; u = u_exc + u_inh (+ u_plastic); v update unless refractory;
//      spike if v > threshold (reset, refractory for refractory_steps steps);
//   2. every neuron that spiked, in ascending order: add its static out-weights (CSR) to the
//      postsynaptic charges (excitatory presynaptic cell -> in_exc, inhibitory -> in_inh) and
//      its plastic out-weights (read from the trained (N, 2L) weight matrix through the
//      out-slot list) to in_plastic.
// Only the spikes drive the synaptic input: no dense products.
#include "rls_neurons.h"

#include <cstdint>
#include <cstring>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef EXODUS_SCALAR
#error "compile with -DEXODUS_SCALAR=float or double"
#endif

using scalar = EXODUS_SCALAR;
using exodus_rls::membrane_step;
using exodus_rls::synaptic_filter;

extern "C" {

// Read-only description of the network (mirrored by ctypes in exodus/rls/_native.py).
struct RlsNetwork {
  int64_t n_cells, n_exc;
  const int64_t* static_ptr;      // (N+1) CSR row pointers by presynaptic cell
  const int32_t* static_post;     // (nnz) postsynaptic cells
  const scalar* static_weight;    // (nnz)
  const int64_t* plastic_ptr;     // (N+1) CSR by presynaptic cell, or null: no plastic input
  const int32_t* plastic_post;    // (N*2L) postsynaptic cells
  const int64_t* plastic_slot;    // (N*2L) post * 2L + s: index into plastic_weight
  const scalar* plastic_weight;   // (N, 2L) trained weights, row = postsynaptic cell
  const scalar* x_bal;            // (N) constant external input
  const scalar* x_stim;           // (stim_rows, N) stimulus, or null
  int64_t stim_first_step, stim_rows;  // x_stim row t - stim_first_step is added at step t
  scalar dt, mem_rate, threshold, v_reset, inv_tau_exc, inv_tau_inh, inv_tau_plastic;
  int64_t refractory_steps;
};

// Dynamic state, updated in place.
struct RlsState {
  scalar *v, *u_exc, *u_inh, *u_plastic, *r, *in_exc, *in_inh, *in_plastic, *u_static;
  uint8_t* spiked;       // spike flags of the last step
  int32_t* refractory;   // steps left in the refractory period
  int64_t* spike_count;
};

// Optional recordings: u_total (rows, N) at steps first_step + m every (m < rows); per-neuron
// sums of u and u^2 (double) over steps >= sum_first_step.
struct RlsRecord {
  scalar* u_total;
  int64_t first_step, every, rows;
  double* u_sum;
  double* u_sq_sum;
  int64_t sum_first_step;
};

}  // extern "C"

// Step 1 for all neurons. Compile-time Plastic / Stim so the loop has no invariant branches;
// restrict pointers so it vectorises (checked with -fopt-info-vec).
template <bool Plastic, bool Stim>
static void neuron_updates(const RlsNetwork& net, RlsState& s, const scalar* __restrict__ stim,
                           scalar* __restrict__ record) {
  const int64_t n = net.n_cells;
  const scalar dt = net.dt, mem_rate = net.mem_rate, thr = net.threshold, v_reset = net.v_reset;
  const scalar ie = net.inv_tau_exc, ii = net.inv_tau_inh, ip = net.inv_tau_plastic;
  const int32_t refractory_steps = int32_t(net.refractory_steps);
  scalar* __restrict__ v = s.v;
  scalar* __restrict__ u_exc = s.u_exc;
  scalar* __restrict__ u_inh = s.u_inh;
  scalar* __restrict__ u_pl = s.u_plastic;
  scalar* __restrict__ r = s.r;
  scalar* __restrict__ in_exc = s.in_exc;
  scalar* __restrict__ in_inh = s.in_inh;
  scalar* __restrict__ in_pl = s.in_plastic;
  scalar* __restrict__ u_static = s.u_static;
  uint8_t* __restrict__ spiked = s.spiked;
  int32_t* __restrict__ refractory = s.refractory;
  const scalar* __restrict__ x_bal = net.x_bal;
  const bool recording = record != nullptr;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const scalar ue = synaptic_filter(u_exc[i], in_exc[i], dt, ie);
    const scalar ui = synaptic_filter(u_inh[i], in_inh[i], dt, ii);
    u_exc[i] = ue;
    u_inh[i] = ui;
    in_exc[i] = scalar(0);
    in_inh[i] = scalar(0);
    const scalar us = ue + ui;
    u_static[i] = us;
    scalar u = us;
    if (Plastic) {
      const scalar up = synaptic_filter(u_pl[i], in_pl[i], dt, ip);
      u_pl[i] = up;
      in_pl[i] = scalar(0);
      u = us + up;
      r[i] = synaptic_filter(r[i], scalar(spiked[i]), dt, ip);
    }
    if (recording) record[i] = u;
    const scalar x = Stim ? x_bal[i] + stim[i] : x_bal[i];
    const int32_t left = refractory[i];
    const bool active = left <= 0;
    const scalar v_old = v[i];
    const scalar v_new = membrane_step(v_old, x, u, mem_rate);
    const bool spike = active && v_new > thr;
    v[i] = spike ? v_reset : (active ? v_new : v_old);
    refractory[i] = spike ? refractory_steps : (active ? 0 : left - 1);
    spiked[i] = spike ? 1 : 0;
  }
}

extern "C" {

// Simulate steps [step_begin, step_end). Returns 0, or -1 on inconsistent arguments.
int exodus_rls_simulate(const RlsNetwork* net, RlsState* s, const RlsRecord* rec, int64_t step_begin,
                        int64_t step_end, int threads) {
  (void)threads;  // the per-step work is a few microseconds: one thread (see docs/rls.md)
  if (net == nullptr || s == nullptr || net->n_cells < 0 || step_end < step_begin) return -1;
  const int64_t n = net->n_cells;
  const bool plastic = net->plastic_ptr != nullptr;
  std::vector<int64_t> fired;
  fired.reserve(64);
  for (int64_t t = step_begin; t < step_end; ++t) {
    const scalar* stim = nullptr;
    if (net->x_stim != nullptr && t >= net->stim_first_step && t < net->stim_first_step + net->stim_rows)
      stim = net->x_stim + (t - net->stim_first_step) * n;
    scalar* record = nullptr;
    if (rec != nullptr && rec->u_total != nullptr && t >= rec->first_step && (t - rec->first_step) % rec->every == 0 &&
        (t - rec->first_step) / rec->every < rec->rows)
      record = rec->u_total + ((t - rec->first_step) / rec->every) * n;
    const bool summing = rec != nullptr && rec->u_sum != nullptr && t >= rec->sum_first_step;
    // 1. neuron updates
    if (plastic) {
      if (stim != nullptr) neuron_updates<true, true>(*net, *s, stim, record);
      else neuron_updates<true, false>(*net, *s, stim, record);
    } else {
      if (stim != nullptr) neuron_updates<false, true>(*net, *s, stim, record);
      else neuron_updates<false, false>(*net, *s, stim, record);
    }
    if (summing) {
      for (int64_t i = 0; i < n; ++i) {
        const double u = double(s->u_static[i]) + (plastic ? double(s->u_plastic[i]) : 0.0);
        rec->u_sum[i] += u;
        rec->u_sq_sum[i] += u * u;
      }
    }
    // 2. spike-driven charges for the next step
    fired.clear();
    // cells that spiked, ascending; eight flags per test (spikes are sparse: a few per step)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t word;
      std::memcpy(&word, s->spiked + i, 8);
      if (word == 0) continue;
      for (int64_t m = i; m < i + 8; ++m)
        if (s->spiked[m]) fired.push_back(m);
    }
    for (; i < n; ++i)
      if (s->spiked[i]) fired.push_back(i);
    for (const int64_t pre : fired) {
      s->spike_count[pre] += 1;
      scalar* target = pre < net->n_exc ? s->in_exc : s->in_inh;
      const int64_t b = net->static_ptr[pre], e = net->static_ptr[pre + 1];
      const int32_t* post = net->static_post;
      const scalar* weight = net->static_weight;
      // A cell's postsynaptic cells are distinct (drawn without replacement), so the
      // scatter-adds of one spike do not conflict: vectorised with gather / scatter.
#pragma omp simd
      for (int64_t m = b; m < e; ++m) target[post[m]] += weight[m];
      if (plastic) {
        const int64_t pb = net->plastic_ptr[pre], pe = net->plastic_ptr[pre + 1];
        const int32_t* plastic_post = net->plastic_post;
        const int64_t* slot = net->plastic_slot;
        const scalar* pw = net->plastic_weight;
        scalar* in_pl = s->in_plastic;
#pragma omp simd
        for (int64_t m = pb; m < pe; ++m) in_pl[plastic_post[m]] += pw[slot[m]];
      }
    }
  }
  return 0;
}

// One RLS update of every neuron (DESIGN §9), batched over neurons. P (N, blocked_size(n))
// block-packed P_base (rls_neurons.h); factors (N, capacity, nb B) and coef (N, capacity) the
// pending deferred downdates, the first `pending` of them in use (the same count for every
// neuron: they all update together); w (N, n); inputs (N, n) presynaptic cells of each
// neuron's plastic weights; r (N) filtered spike trains; u_static (N); u_target (N); xk_out (N)
// receives x^T P x, or is null. The caller's pending count becomes (pending + 1) % capacity.
// OpenMP over neurons in chunks of 16 taken dynamically (on a shared machine a thread that
// loses its core then holds up at most one chunk); each neuron's P_base (21 KiB in float32 at
// n = 90) stays in L1 between the product and a flush.
int exodus_rls_update(int64_t n_cells, int64_t n, scalar* P, scalar* factors, scalar* coef, int64_t pending,
                      int64_t capacity, scalar* w, const int64_t* inputs, const scalar* r, const scalar* u_static,
                      const scalar* u_target, int normalized, scalar* xk_out, int threads) {
  if (n_cells < 0 || n <= 0 || capacity < 1 || pending < 0 || pending >= capacity || P == nullptr ||
      factors == nullptr || coef == nullptr || w == nullptr || inputs == nullptr)
    return -1;
  const int64_t stride = exodus_rls::blocked_size<scalar>(n);
  constexpr int64_t B = exodus_rls::Block<scalar>::size;
  const int64_t padded = (n + B - 1) / B * B;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
#endif
  {
    std::vector<scalar> x(padded, scalar(0)), k(padded);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 16)
#endif
    for (int64_t i = 0; i < n_cells; ++i) {
      // Ask for the next neuron's P while this one is computed (measured: 11 % faster per
      // update at N = 10k, 2L = 90, P streamed from memory).
      if (i + 1 < n_cells) {
        const char* next = reinterpret_cast<const char*>(P + (i + 1) * stride);
        for (int64_t byte = 0; byte < stride * int64_t(sizeof(scalar)); byte += 64) __builtin_prefetch(next + byte, 0, 3);
      }
      const int64_t* in = inputs + i * n;
      for (int64_t j = 0; j < n; ++j) x[j] = r[in[j]];
      const scalar xk = exodus_rls::rls_neuron_step(P + i * stride, factors + i * capacity * padded, coef + i * capacity,
                                                    pending, capacity, w + i * n, x.data(), k.data(), n, u_static[i],
                                                    u_target[i], normalized != 0);
      if (xk_out != nullptr) xk_out[i] = xk;
    }
  }
  (void)threads;
  return 0;
}

// Apply the first `pending` deferred downdates of every neuron to P (the caller then sets its
// pending count to 0).
int exodus_rls_flush(int64_t n_cells, int64_t n, scalar* P, const scalar* factors, const scalar* coef, int64_t pending,
                     int64_t capacity, int threads) {
  if (n_cells < 0 || n <= 0 || capacity < 1 || pending < 0 || pending > capacity || P == nullptr) return -1;
  if (pending == 0) return 0;
  const int64_t stride = exodus_rls::blocked_size<scalar>(n);
  constexpr int64_t B = exodus_rls::Block<scalar>::size;
  const int64_t padded = (n + B - 1) / B * B;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads > 0 ? threads : 1)
#endif
  for (int64_t i = 0; i < n_cells; ++i)
    exodus_rls::blocked_downdate(P + i * stride, factors + i * capacity * padded, coef + i * capacity, pending, n);
  (void)threads;
  return 0;
}

}  // extern "C"
