// exodus — CPU drivers over the step functions of neuron.cuh.
//
// Time-outer, neurons-inner: each work item is one (batch, block of neurons)
// tile; its state lives in small arrays and at each time step the inner loop
// walks contiguous neurons, so the compiler vectorises it. Options are turned
// into compile-time constants (template parameters) so the inner loop has no
// option branches. Tiles are spread over `num_threads` OpenMP threads.
//
// Compiled by exodus/backends/cpu.py with -DEXODUS_SCALAR=<float|double>.
#include "neuron.cuh"

#include <algorithm>
#include <type_traits>

namespace {

constexpr index_t kTile = 256;

template <typename F>
void with_bool(bool value, F&& f) {
  if (value) f(std::true_type{}); else f(std::false_type{});
}

template <typename Body>
void for_each_tile(index_t B, index_t N, int num_threads, Body body) {
  const index_t tiles_per_row = (N + kTile - 1) / kTile;
  const index_t items = B * tiles_per_row;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (items > 1 && num_threads > 1)
  for (index_t item = 0; item < items; ++item) {
    const index_t b = item / tiles_per_row;
    const index_t n0 = (item - b * tiles_per_row) * kTile;
    body(b, n0, std::min(kTile, N - n0));
  }
}

// Fix the option fields the inner loops branch on as compile-time constants.
template <bool SUBTRACT, bool SINGLE, bool VMIN, bool NORM>
LifConfig specialise(LifConfig c) {
  c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
  if (SINGLE) c.max_spikes = 1;
  c.has_vmin = VMIN;
  c.norm_input = NORM;
  return c;
}

template <typename F>
void dispatch_options(const LifConfig& c, F&& f) {
  with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
    with_bool(c.max_spikes == 1, [&](auto single) {
      with_bool(c.has_vmin != 0, [&](auto vmin) {
        with_bool(c.norm_input != 0, [&](auto norm) {
          f(specialise<decltype(subtract)::value, decltype(single)::value, decltype(vmin)::value,
                       decltype(norm)::value>(c));
        });
      });
    });
  });
}

}  // namespace

extern "C" void exodus_cpu_lif_forward(const scalar_t* x, const acc_t* alpha, const acc_t* theta,
                                       const acc_t* v0, scalar_t* spikes, scalar_t* v_out,
                                       acc_t* h_out, index_t B, index_t T, index_t N, int reset,
                                       int max_spikes, int has_vmin, acc_t v_min, int norm_input,
                                       int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0)};
  dispatch_options(config, [&](const LifConfig c) {
    for_each_tile(B, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      acc_t v[kTile];
      for (index_t k = 0; k < len; ++k) v[k] = v0[b * N + n0 + k];
      for (index_t t = 0; t < T; ++t) {
        const index_t row = (b * T + t) * N + n0;
#pragma omp simd
        for (index_t k = 0; k < len; ++k) {
          acc_t s;
          h_out[row + k] = lif_forward_step(c, to_acc(x[row + k]), alpha[n0 + k], theta[n0 + k], v[k], s);
          spikes[row + k] = from_acc(s);
          v_out[row + k] = from_acc(v[k]);
        }
      }
    });
  });
}

extern "C" void exodus_cpu_lif_backward(
    const acc_t* h, const scalar_t* grad_spikes, const scalar_t* grad_v, const acc_t* alpha,
    const acc_t* theta, const acc_t* v0, scalar_t* grad_x, acc_t* grad_v0, acc_t* grad_alpha,
    acc_t* grad_theta, index_t B, index_t T, index_t N, int reset, int max_spikes, int has_vmin,
    acc_t v_min, int norm_input, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1,
    acc_t p2, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2};
  dispatch_options(config, [&](const LifConfig c) {
    for_each_tile(B, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      acc_t lambda[kTile], g_alpha[kTile], g_theta[kTile];
      for (index_t k = 0; k < len; ++k) lambda[k] = g_alpha[k] = g_theta[k] = acc_t(0);
      for (index_t t = T - 1; t >= 0; --t) {
        const index_t row = (b * T + t) * N + n0;
        for (index_t k = 0; k < len; ++k) {
          const acc_t v_prev = t > 0 ? membrane_from_h(c, h[row - N + k], theta[n0 + k]) : v0[b * N + n0 + k];
          const acc_t ga = grad_spikes ? to_acc(grad_spikes[row + k]) : acc_t(0);
          const acc_t gv = grad_v ? to_acc(grad_v[row + k]) : acc_t(0);
          lambda[k] = lif_backward_step(c, h[row + k], v_prev, ga, gv, lambda[k], alpha[n0 + k],
                                        theta[n0 + k], g_alpha[k], g_theta[k]);
          grad_x[row + k] = from_acc(c.norm_input ? (acc_t(1) - alpha[n0 + k]) * lambda[k] : lambda[k]);
        }
      }
      for (index_t k = 0; k < len; ++k) {
        grad_v0[b * N + n0 + k] = alpha[n0 + k] * lambda[k];
        grad_alpha[b * N + n0 + k] = g_alpha[k];
        grad_theta[b * N + n0 + k] = g_theta[k];
      }
    });
  });
}

extern "C" void exodus_cpu_leaky_forward(const scalar_t* x, const acc_t* alpha, const acc_t* v0,
                                         scalar_t* v_out, index_t B, index_t T, index_t N,
                                         int norm_input, int num_threads) {
  for_each_tile(B, N, num_threads, [&](index_t b, index_t n0, index_t len) {
    acc_t v[kTile];
    for (index_t k = 0; k < len; ++k) v[k] = v0[b * N + n0 + k];
    for (index_t t = 0; t < T; ++t) {
      const index_t row = (b * T + t) * N + n0;
#pragma omp simd
      for (index_t k = 0; k < len; ++k)
        v_out[row + k] = from_acc(leaky_forward_step(to_acc(x[row + k]), alpha[n0 + k], norm_input, v[k]));
    }
  });
}

extern "C" void exodus_cpu_leaky_backward(const scalar_t* v_out, const scalar_t* grad_v,
                                          const acc_t* alpha, const acc_t* v0, scalar_t* grad_x,
                                          acc_t* grad_v0, acc_t* grad_alpha, index_t B, index_t T,
                                          index_t N, int norm_input, int num_threads) {
  for_each_tile(B, N, num_threads, [&](index_t b, index_t n0, index_t len) {
    acc_t lambda[kTile], g_alpha[kTile];
    for (index_t k = 0; k < len; ++k) lambda[k] = g_alpha[k] = acc_t(0);
    for (index_t t = T - 1; t >= 0; --t) {
      const index_t row = (b * T + t) * N + n0;
#pragma omp simd
      for (index_t k = 0; k < len; ++k) {
        const acc_t v_prev = t > 0 ? to_acc(v_out[row - N + k]) : v0[b * N + n0 + k];
        lambda[k] = leaky_backward_step(to_acc(v_out[row + k]), v_prev, to_acc(grad_v[row + k]),
                                        lambda[k], alpha[n0 + k], norm_input, g_alpha[k]);
        grad_x[row + k] = from_acc(norm_input ? (acc_t(1) - alpha[n0 + k]) * lambda[k] : lambda[k]);
      }
    }
    for (index_t k = 0; k < len; ++k) {
      grad_v0[b * N + n0 + k] = alpha[n0 + k] * lambda[k];
      grad_alpha[b * N + n0 + k] = g_alpha[k];
    }
  });
}
