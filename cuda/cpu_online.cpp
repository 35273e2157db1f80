// exodus — CPU driver of the online (forward-mode) traces of a Linear -> LIF block (DESIGN.md §7).
//
// Over one chunk of T steps (global steps t0 .. t0 + T - 1), per batch row, with the block's one
// membrane decay alpha and input gain g (1 - alpha with norm_input, else 1):
//   s_hat_t = alpha s_hat_{t-1} + g s_t                      presynaptic trace, shared by the neurons
//   G_t     = kappa rho (alpha G_{t-1} + g s_t) = s_hat_t + D_t  weight trace dv_t/dW[n, :]
//   D_t     = (f - 1) s_hat_t + f alpha D_{t-1},  f = kappa_t rho_t (lif_trace_step)
// D changes only where f != 1 (surrogate nonzero, resets that act, clamps); elsewhere it decays, so a
// row is stored with the step of its last update (stamp) and decayed on the next one:
// D_{t-1} = alpha^{t-1-stamp} D_stored. The per-neuron traces dv/dalpha, dv/db, dv/dtheta advance in
// lif_trace_step; the membrane is recomputed with lif_forward_step (bitwise as in the forward kernels).
//
// Compiled by exodus/backends/cpu.py with -DEXODUS_SCALAR=<float|double>.
#include "cpu_common.h"
#include "neuron.cuh"

// x (B, T, N): the block's input current W s + b; s (B, T, N_in); v_start (B, N): v before the chunk;
// s_hat (B, N_in), dev (B, N, N_in), stamp (B, N), e_alpha / e_bias / e_theta (B, N): in/out; v_end (B, N) out.
extern "C" void exodus_cpu_lif_online_advance(
    const scalar_t* x, const scalar_t* s, const acc_t* v_start, const acc_t* theta, acc_t* s_hat, acc_t* dev,
    index_t* stamp, acc_t* e_alpha, acc_t* e_bias, acc_t* e_theta, acc_t* v_end, index_t B, index_t T, index_t N,
    index_t N_in, index_t t0, acc_t alpha, acc_t gain, int reset, int max_spikes, int has_vmin, acc_t v_min,
    int norm_input, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band,
    int num_threads) {
  const LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  if (num_threads < 1 || B * T * (N + N_in) < (index_t(1) << 15)) num_threads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1 && B > 1)
  for (index_t b = 0; b < B; ++b) {
    acc_t* sh = s_hat + b * N_in;
    acc_t* v = v_end + b * N;
    for (index_t n = 0; n < N; ++n) v[n] = v_start[b * N + n];
    for (index_t t = 0; t < T; ++t) {
      const scalar_t* s_t = s + (b * T + t) * N_in;
      for (index_t j = 0; j < N_in; ++j) sh[j] = alpha * sh[j] + gain * static_cast<acc_t>(s_t[j]);
      const index_t now = t0 + t;
      for (index_t n = 0; n < N; ++n) {
        const index_t k = b * N + n;
        const acc_t x_t = static_cast<acc_t>(x[(b * T + t) * N + n]);
        const acc_t v_prev = v[n];
        acc_t spikes = acc_t(0);
        const acc_t h = lif_forward_step(c, x_t, alpha, theta[n], v[n], spikes);
        const acc_t f = lif_trace_step(c, h, v_prev, x_t, alpha, theta[n], gain, e_alpha[k], e_bias[k], e_theta[k]);
        if (f != acc_t(1)) {
          acc_t* d = dev + k * N_in;
          const acc_t carry = f * decay_over(alpha, now - stamp[k]);  // f alpha D_{t-1}
          const acc_t fresh = f - acc_t(1);
          for (index_t j = 0; j < N_in; ++j) d[j] = fresh * sh[j] + carry * d[j];
          stamp[k] = now;
        }
      }
    }
  }
}
