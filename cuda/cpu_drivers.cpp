// exodus — CPU drivers over the step functions of neuron.cuh.
//
// Time-outer, neurons-inner: each work item is one batch row (or a block of its
// neurons); its state lives in a small array and at each time step the inner loop
// walks contiguous neurons, so the compiler vectorises it. Options are turned
// into compile-time constants (template parameters) so the inner loop has no
// option branches. Tiles are spread over `num_threads` OpenMP threads.
//
// Compiled by exodus/backends/cpu.py with -DEXODUS_SCALAR=<float|double>.
#include "cpu_common.h"
#include "neuron.cuh"

namespace {
using namespace exodus_cpu;

// The option fields the inner loops branch on, as compile-time constants: `apply`
// overwrites them in a config, so after inlining the branches fold away.
template <bool SUBTRACT, bool SINGLE, bool VMIN, bool NORM>
struct Specialised {
  static LifConfig apply(LifConfig c) {
    c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
    if (SINGLE) c.max_spikes = 1;
    c.has_vmin = VMIN;
    c.norm_input = NORM;
    return c;
  }
};

// Calls f(Specialised<...>{}) for the options in `c`; f is a generic lambda, so it is
// instantiated once per combination.
template <typename F>
void dispatch_options(const LifConfig& c, F&& f) {
  with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
    with_bool(c.max_spikes == 1, [&](auto single) {
      with_bool(c.has_vmin != 0, [&](auto vmin) {
        with_bool(c.norm_input != 0, [&](auto norm) {
          f(Specialised<decltype(subtract)::value, decltype(single)::value, decltype(vmin)::value,
                        decltype(norm)::value>{});
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
                                       int v_trace, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  dispatch_options(config, [&](auto spec) {
    const bool streaming = use_streaming(B * T * N, sizeof(acc_t));
    for_each_tile(B, T, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);  // local: its constant fields fold away
      std::vector<acc_t> v(len);
      RowSink<acc_t> h_sink(streaming, len);
      RowSink<scalar_t> s_sink(streaming, len), v_sink(streaming && v_trace, len);
      for (index_t k = 0; k < len; ++k) v[k] = v0[b * N + n0 + k];
      for (index_t t = 0; t < T; ++t) {
        const index_t row = (b * T + t) * N + n0;
        acc_t* h_row = h_sink.row(h_out + row);
        scalar_t* s_row = s_sink.row(spikes + row);
        if (v_trace) {
          scalar_t* v_row = v_sink.row(v_out + row);
#pragma omp simd
          for (index_t k = 0; k < len; ++k) {
            acc_t s;
            h_row[k] = lif_forward_step(c, to_acc(x[row + k]), alpha[n0 + k], theta[n0 + k], v[k], s);
            s_row[k] = from_acc(s);
            v_row[k] = from_acc(v[k]);
          }
          v_sink.flush(v_out + row, len);
        } else {
#pragma omp simd
          for (index_t k = 0; k < len; ++k) {
            acc_t s;
            h_row[k] = lif_forward_step(c, to_acc(x[row + k]), alpha[n0 + k], theta[n0 + k], v[k], s);
            s_row[k] = from_acc(s);
          }
        }
        h_sink.flush(h_out + row, len);
        s_sink.flush(spikes + row, len);
      }
      if (!v_trace)
        for (index_t k = 0; k < len; ++k) v_out[b * N + n0 + k] = from_acc(v[k]);
      if (streaming) stream_fence();
    });
  });
}

// The backward specialises on what decides its control flow and cost: surrogate kind,
// gradient mode, reset and single-spike mode (48 variants; multi-spike bins need a division
// per step); v_min and norm_input stay runtime values that the compiler turns into selects.
// LEAN (24 more variants, exodus gradient and single spikes only): the common training case of
// no v_min, no norm_input, no truncation band and no dL/dv, with (PARAMS) or without the
// dL/dalpha, dL/dtheta sums. Those terms are then compile-time zeros: the loop loses their
// selects, the zero-row loads, the masked division of norm_input's dL/dalpha term and, without
// PARAMS, the dead sums (measured: 0.68-0.73x the general loop's time without PARAMS).
template <int KIND, bool SLAYER, bool SUBTRACT, bool SINGLE, bool LEAN, bool PARAMS>
struct BackwardSpecialised {
  static constexpr bool lean = LEAN;
  static constexpr bool params = PARAMS;
  static LifConfig apply(LifConfig c) {
    c.surrogate = KIND;
    c.gradient = SLAYER ? GRADIENT_SLAYER : GRADIENT_EXODUS;
    c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
    if (SINGLE) c.max_spikes = 1;
    if (LEAN) {
      c.has_vmin = 0;
      c.norm_input = 0;
      c.band = acc_t(0);
    }
    return c;
  }
};


// lean: the caller checked the LEAN condition that is not in LifConfig (no dL/dv); params: dL/dalpha
// or dL/dtheta is wanted.
template <typename F>
void dispatch_backward(const LifConfig& c, bool lean, bool params, F&& f) {
  lean = lean && !c.has_vmin && !c.norm_input && c.band == acc_t(0) && c.gradient == GRADIENT_EXODUS &&
         c.max_spikes == 1;
  with_kind_from<0>(c.surrogate, [&](auto kind) {
    if (lean) {
      with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
        with_bool(params, [&](auto with_params) {
          f(BackwardSpecialised<decltype(kind)::value, false, decltype(subtract)::value, true, true,
                                decltype(with_params)::value>{});
        });
      });
      return;
    }
    with_bool(c.gradient == GRADIENT_SLAYER, [&](auto slayer) {
      with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
        with_bool(c.max_spikes == 1, [&](auto single) {
          f(BackwardSpecialised<decltype(kind)::value, decltype(slayer)::value, decltype(subtract)::value,
                                decltype(single)::value, false, true>{});
        });
      });
    });
  });
}

extern "C" void exodus_cpu_lif_backward(
    const acc_t* h, const scalar_t* grad_spikes, const scalar_t* grad_v, const acc_t* alpha,
    const acc_t* theta, const acc_t* v0, scalar_t* grad_x, acc_t* grad_v0, acc_t* grad_alpha,
    acc_t* grad_theta, index_t B, index_t T, index_t N, int reset, int max_spikes, int has_vmin,
    acc_t v_min, int norm_input, int v_trace, int gradient, int surrogate, acc_t grad_scale, acc_t p0,
    acc_t p1, acc_t p2, acc_t band, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  dispatch_backward(config, !grad_v, grad_alpha || grad_theta, [&](auto spec) {
    constexpr bool lean = decltype(spec)::lean, params = decltype(spec)::params;
    // dL/dx written over the saved h: its rows were just read (cached), plain stores are cheaper there.
    const bool in_place = static_cast<const void*>(grad_x) == static_cast<const void*>(h);
    const bool streaming = !in_place && use_streaming(B * T * N, sizeof(scalar_t));
    for_each_tile(B, T, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);  // local: its constant fields fold away
      RowSink<scalar_t> gx_sink(streaming, len);
      std::vector<acc_t> lambda(len, acc_t(0)), g_alpha(len, acc_t(0)), g_theta(len, acc_t(0));
      std::vector<acc_t> v_prev(len, acc_t(0));
      const std::vector<scalar_t> zeros(len, from_acc(acc_t(0)));
      const acc_t* a = alpha + n0;
      const acc_t* th = theta + n0;
      // The neurons' surrogate constants (SurrogateNeuron), one array per field.
      std::vector<acc_t> inv_width(len), scale(len), band_theta(len);
      for (index_t k = 0; k < len; ++k) {
        const SurrogateNeuron s = surrogate_neuron(c.surrogate, th[k], c.p0, c.p1, c.band);
        inv_width[k] = s.inv_width;
        scale[k] = s.scale;
        band_theta[k] = s.band_theta;
      }
      for (index_t t = T - 1; t >= 0; --t) {
        const index_t row = (b * T + t) * N + n0;
        // Rows of this step; absent gradients read a row of zeros, so the inner loop has no branches.
        const scalar_t* gs = grad_spikes ? grad_spikes + row : zeros.data();
        const scalar_t* gv = !grad_v ? zeros.data()
                             : v_trace ? grad_v + row
                             : t == T - 1 ? grad_v + b * N + n0 : zeros.data();
        if (!grad_alpha) {
          // v_{t-1} only enters dL/dalpha: v_prev stays zero.
        } else if (t > 0) {
          const acc_t* h_prev = h + row - N;
#pragma omp simd
          for (index_t k = 0; k < len; ++k) v_prev[k] = membrane_from_h(c, h_prev[k], th[k]);
        } else {
          for (index_t k = 0; k < len; ++k) v_prev[k] = v0[b * N + n0 + k];
        }
        const acc_t* h_t = h + row;
        scalar_t* gx = gx_sink.row(grad_x + row);
        if (t > 0) {  // the next step's rows
          prefetch_row_start(h_t - N, len);
          if (grad_spikes) prefetch_row_start(gs - N, len);
        }
#pragma omp simd
        for (index_t k = 0; k < len; ++k) {
          const SurrogateNeuron s = {th[k], inv_width[k], scale[k], band_theta[k]};
          if constexpr (lean && !params) {  // dL/dv = 0; the parameter sums are dead
            acc_t unused_alpha = acc_t(0), unused_theta = acc_t(0);
            lambda[k] = lif_backward_step_at(c, s, h_t[k], acc_t(0), to_acc(gs[k]), acc_t(0), lambda[k], a[k],
                                             unused_alpha, unused_theta);
          } else {
            lambda[k] = lif_backward_step_at(c, s, h_t[k], v_prev[k], to_acc(gs[k]), lean ? acc_t(0) : to_acc(gv[k]),
                                             lambda[k], a[k], g_alpha[k], g_theta[k]);
          }
          gx[k] = from_acc(c.norm_input ? (acc_t(1) - a[k]) * lambda[k] : lambda[k]);
        }
        gx_sink.flush(grad_x + row, len);
      }
      if (streaming) stream_fence();
      for (index_t k = 0; k < len; ++k) {
        const index_t i = b * N + n0 + k;
        grad_v0[i] = (T == 0 && !v_trace && grad_v) ? to_acc(grad_v[i]) : a[k] * lambda[k];
        if (grad_alpha) grad_alpha[i] = g_alpha[k];
        if (grad_theta) grad_theta[i] = g_theta[k];
      }
    });
  });
}

extern "C" void exodus_cpu_leaky_forward(const scalar_t* x, const acc_t* alpha, const acc_t* v0,
                                         scalar_t* v_out, index_t B, index_t T, index_t N,
                                         int norm_input, int num_threads) {
  const bool streaming = use_streaming(B * T * N, sizeof(scalar_t));
  for_each_tile(B, T, N, num_threads, [&](index_t b, index_t n0, index_t len) {
    std::vector<acc_t> v(len);
    RowSink<scalar_t> v_sink(streaming, len);
    for (index_t k = 0; k < len; ++k) v[k] = v0[b * N + n0 + k];
    for (index_t t = 0; t < T; ++t) {
      const index_t row = (b * T + t) * N + n0;
      scalar_t* v_row = v_sink.row(v_out + row);
#pragma omp simd
      for (index_t k = 0; k < len; ++k)
        v_row[k] = from_acc(leaky_forward_step(to_acc(x[row + k]), alpha[n0 + k], norm_input, v[k]));
      v_sink.flush(v_out + row, len);
    }
    if (streaming) stream_fence();
  });
}

extern "C" void exodus_cpu_leaky_backward(const scalar_t* v_out, const scalar_t* grad_v,
                                          const acc_t* alpha, const acc_t* v0, scalar_t* grad_x,
                                          acc_t* grad_v0, acc_t* grad_alpha, index_t B, index_t T,
                                          index_t N, int norm_input, int num_threads) {
  const bool streaming = use_streaming(B * T * N, sizeof(scalar_t));
  for_each_tile(B, T, N, num_threads, [&](index_t b, index_t n0, index_t len) {
    std::vector<acc_t> lambda(len, acc_t(0)), g_alpha(len, acc_t(0));
    RowSink<scalar_t> gx_sink(streaming, len);
    for (index_t t = T - 1; t >= 0; --t) {
      const index_t row = (b * T + t) * N + n0;
      scalar_t* gx = gx_sink.row(grad_x + row);
      if (t > 0) {  // the next step's rows
        prefetch_row_start(v_out + row - N, len);
        prefetch_row_start(grad_v + row - N, len);
      }
#pragma omp simd
      for (index_t k = 0; k < len; ++k) {
        const acc_t v_prev = !grad_alpha ? acc_t(0) : t > 0 ? to_acc(v_out[row - N + k]) : v0[b * N + n0 + k];
        lambda[k] = leaky_backward_step(to_acc(v_out[row + k]), v_prev, to_acc(grad_v[row + k]),
                                        lambda[k], alpha[n0 + k], norm_input, g_alpha[k]);
        gx[k] = from_acc(norm_input ? (acc_t(1) - alpha[n0 + k]) * lambda[k] : lambda[k]);
      }
      gx_sink.flush(grad_x + row, len);
    }
    if (streaming) stream_fence();
    for (index_t k = 0; k < len; ++k) {
      grad_v0[b * N + n0 + k] = alpha[n0 + k] * lambda[k];
      if (grad_alpha) grad_alpha[b * N + n0 + k] = g_alpha[k];
    }
  });
}

// sigma(h[i]; theta[i]) of surrogate `kind` through the kernels' own code path (surrogate_neuron,
// neuron_banded_sigma), vectorised like the backward loop; for the tests (exp accuracy, twin formulas).
extern "C" void exodus_cpu_surrogate_sigma(const acc_t* h, const acc_t* theta, acc_t* out, index_t n, int kind,
                                           acc_t p0, acc_t p1, acc_t p2, acc_t band) {
  with_kind_from<0>(kind, [&](auto k) {
    constexpr int KIND = decltype(k)::value;
#pragma omp simd
    for (index_t i = 0; i < n; ++i) {
      const SurrogateNeuron s = surrogate_neuron(KIND, theta[i], p0, p1, band);
      out[i] = neuron_banded_sigma(KIND, s, h[i], p0, p1, p2, band);
    }
  });
}
