// exodus — CPU drivers over the step functions of adaptive.cuh (ALIF / adLIF, recurrent LIF).
//
// Same contract as exodus_adaptive_forward / exodus_adaptive_backward in kernels.cu (same
// parameter order, plus a thread count): steps [t_begin, t_end) of a (B, T, N) sequence, the
// per-neuron state in (B, N) buffers read at the start and written at the end, so a recurrent
// layer calls them once per step with the recurrent term in `rec` / `grad_rec`.
// Time-outer, neurons-inner over (batch, neuron-tile) work items as in cpu_drivers.cpp; the
// options that decide the inner loop's work are template parameters.
//
// Compiled by exodus/backends/cpu.py with -DEXODUS_SCALAR=<float|double>.
#include "cpu_common.h"
#include "adaptive.cuh"

namespace {
using namespace exodus_cpu;

// The forward specialises on reset, single-spike mode and adaptation (8 variants); v_min and
// norm_input stay runtime values (selects in the vectorised loop).
template <bool SUBTRACT, bool SINGLE, bool ADAPT>
struct ForwardSpecialised {
  static constexpr bool adaptive = ADAPT;
  static LifConfig apply(LifConfig c) {
    c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
    if (SINGLE) c.max_spikes = 1;
    return c;
  }
};

template <typename F>
void dispatch_forward(const LifConfig& c, bool adaptive, F&& f) {
  with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
    with_bool(c.max_spikes == 1, [&](auto single) {
      with_bool(adaptive, [&](auto adapt) {
        f(ForwardSpecialised<decltype(subtract)::value, decltype(single)::value, decltype(adapt)::value>{});
      });
    });
  });
}

// The backward specialises on surrogate kind, reset and adaptation (24 variants); gradient
// mode, spike mode, v_min and norm_input stay runtime values (selects in the vectorised loop).
template <int KIND, bool SUBTRACT, bool ADAPT>
struct BackwardSpecialised {
  static constexpr bool adaptive = ADAPT;
  static LifConfig apply(LifConfig c) {
    c.surrogate = KIND;
    c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
    return c;
  }
};

template <typename F>
void dispatch_backward(const LifConfig& c, bool adaptive, F&& f) {
  with_kind_from<0>(c.surrogate, [&](auto kind) {
    with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
      with_bool(adaptive, [&](auto adapt) {
        f(BackwardSpecialised<decltype(kind)::value, decltype(subtract)::value, decltype(adapt)::value>{});
      });
    });
  });
}

}  // namespace

extern "C" void exodus_cpu_adaptive_forward(
    const scalar_t* x, const acc_t* rec, const acc_t* params, acc_t* v_state, acc_t* w_state, scalar_t* spikes,
    scalar_t* v_out, scalar_t* w_out, acc_t* h_save, acc_t* w_save, index_t B, index_t T, index_t N,
    index_t t_begin, index_t t_end, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input,
    int adaptive, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  dispatch_forward(config, adaptive != 0, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
    for_each_tile(B, t_end - t_begin, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);  // local: its constant fields fold away
      const acc_t* const prm = params + n0;  // a local pointer (not the captured one): the loops vectorise
      acc_t* v = v_state + b * N + n0;
      acc_t* const rows = scratch_rows<acc_t, 0>(2 * len);  // w without adaptation; zero recurrent input
      std::fill(rows, rows + 2 * len, acc_t(0));
      acc_t* w = ADAPT ? w_state + b * N + n0 : rows;
      const acc_t* extra = rec ? rec + b * N + n0 : rows + len;
      for (index_t t = t_begin; t < t_end; ++t) {
        const index_t row = (b * T + t) * N + n0;
        const scalar_t* x_t = x + row;
        acc_t* h_t = h_save + row;
        scalar_t* s_t = spikes + row;
#pragma omp simd
        for (index_t k = 0; k < len; ++k) {
          acc_t s;
          const acc_t input = rec ? to_acc(x_t[k]) + extra[k] : to_acc(x_t[k]);
          h_t[k] = adaptive_forward_step(c, ADAPT, input, load_adaptive_params(prm, N, k), v[k], w[k], s);
          s_t[k] = from_acc(s);
        }
        if (v_out)
          for (index_t k = 0; k < len; ++k) v_out[row + k] = from_acc(v[k]);
        if (ADAPT) {
          for (index_t k = 0; k < len; ++k) w_save[row + k] = w[k];
          if (w_out)
            for (index_t k = 0; k < len; ++k) w_out[row + k] = from_acc(w[k]);
        }
      }
    });
  });
}

extern "C" void exodus_cpu_adaptive_backward(
    const acc_t* h_save, const acc_t* w_save, const scalar_t* grad_spikes, const scalar_t* grad_v,
    const scalar_t* grad_w, const acc_t* grad_rec, const acc_t* params, const acc_t* v0, const acc_t* w0,
    scalar_t* grad_x, scalar_t* prev_spikes, acc_t* carry_v, acc_t* carry_w, acc_t* grad_params, index_t B,
    index_t T, index_t N, index_t t_begin, index_t t_end, index_t partials, int reset, int max_spikes,
    int has_vmin, acc_t v_min, int norm_input, int adaptive, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band,
    int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  // Parameter-gradient partials: slot = OpenMP thread (the batch sum happens in a small (7, P, N)
  // array that stays in cache when the driver is called once per step).
  num_threads = partial_sum_threads(num_threads, partials, B * (t_end - t_begin) * N);
  // Single-step launches (the recurrent backward) run on one thread: measured on a 2-core Xeon at
  // (64, 1000, 512), one thread took 0.38 s for the 1000 steps and two threads 11.6 s (a parallel
  // region per step with parameter gradients; not understood, see docs/benchmarks.md). The BLAS
  // product between the steps still uses all threads.
  if (t_end - t_begin < 4) num_threads = 1;
  dispatch_backward(config, adaptive != 0, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
    for_each_tile(B, t_end - t_begin, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);
      const acc_t* const prm = params + n0;  // a local pointer (not the captured one): the loops vectorise
      const bool need_params = grad_params != nullptr;
      // Parameter-gradient partials, one row of len per parameter (AdaptiveParam order).
      // Scratch rows: v_{t-1}, w_{t-1}, w_{t-2}, carry_w without adaptation, a_t, zeros.
      constexpr int kRows = 6;
      acc_t* const rows = scratch_rows<acc_t, 1>(kRows * len);
      std::fill(rows, rows + kRows * len, acc_t(0));
      acc_t* const v_prev = rows;
      acc_t* const w_prev = rows + len;
      acc_t* const w_prev2 = rows + 2 * len;
      acc_t* const spikes_row = rows + 4 * len;
      const acc_t* const zeros_acc = rows + 5 * len;
      scalar_t* const zeros = scratch_rows<scalar_t, 2>(len);
      std::fill(zeros, zeros + len, from_acc(acc_t(0)));
      const index_t slot = partial_slot();
      acc_t* g_row[NUM_ADAPTIVE_PARAMS];
      for (int q = 0; q < NUM_ADAPTIVE_PARAMS; ++q)
        g_row[q] = need_params ? grad_params + (q * partials + slot) * N + n0 : nullptr;
      acc_t* cv = carry_v + b * N + n0;
      acc_t* cw = ADAPT ? carry_w + b * N + n0 : rows + 3 * len;
      const acc_t* extra = grad_rec ? grad_rec + b * N + n0 : zeros_acc;
      const acc_t* w0_row = ADAPT ? w0 + b * N + n0 : zeros_acc;
      for (index_t t = t_end - 1; t >= t_begin; --t) {
        const index_t row = (b * T + t) * N + n0;
        const scalar_t* gs = grad_spikes ? grad_spikes + row : zeros;
        const scalar_t* gv = grad_v ? grad_v + row : zeros;
        const scalar_t* gw = grad_w ? grad_w + row : zeros;
        if (ADAPT) {
          const acc_t* src = t > 0 ? w_save + row - N : w0_row;
          for (index_t k = 0; k < len; ++k) w_prev[k] = src[k];
        }
        if (need_params) {
          if (t > 0) {
            if (ADAPT) {
              const acc_t* src2 = t > 1 ? w_save + row - 2 * N : w0_row;
              for (index_t k = 0; k < len; ++k) w_prev2[k] = src2[k];
            }
            const acc_t* h_prev = h_save + row - N;
#pragma omp simd
            for (index_t k = 0; k < len; ++k)
              v_prev[k] = membrane_from_h(c, h_prev[k], adaptive_threshold(load_adaptive_params(prm, N, k), w_prev2[k], ADAPT));
          } else {
            for (index_t k = 0; k < len; ++k) v_prev[k] = v0[b * N + n0 + k];
          }
        }
        const acc_t* h_t = h_save + row;
        scalar_t* gx = grad_x + row;
        if (need_params) {
#pragma omp simd
          for (index_t k = 0; k < len; ++k) {
            const AdaptiveParams pk = load_adaptive_params(prm, N, k);
            AdaptiveGrads gk;  // a local copy, so that the loop vectorises (structure of arrays in memory)
            gk.alpha = g_row[P_ALPHA][k]; gk.theta = g_row[P_THETA][k]; gk.rho = g_row[P_RHO][k];
            gk.beta = g_row[P_BETA][k]; gk.gamma = g_row[P_GAMMA][k]; gk.zeta = g_row[P_ZETA][k];
            gk.eta = g_row[P_ETA][k];
            const acc_t H = adaptive_backward_step(c, ADAPT, h_t[k], v_prev[k], w_prev[k],
                                                   to_acc(gs[k]) + extra[k], to_acc(gv[k]), to_acc(gw[k]),
                                                   pk, cv[k], cw[k], spikes_row[k], true, gk);
            g_row[P_ALPHA][k] = gk.alpha; g_row[P_THETA][k] = gk.theta; g_row[P_RHO][k] = gk.rho;
            g_row[P_BETA][k] = gk.beta; g_row[P_GAMMA][k] = gk.gamma; g_row[P_ZETA][k] = gk.zeta;
            g_row[P_ETA][k] = gk.eta;
            gx[k] = from_acc(c.norm_input ? (acc_t(1) - pk.alpha) * H : H);
          }
        } else {
#pragma omp simd
          for (index_t k = 0; k < len; ++k) {
            AdaptiveGrads unused;
            const AdaptiveParams pk = load_adaptive_params(prm, N, k);
            const acc_t H = adaptive_backward_step(c, ADAPT, h_t[k], v_prev[k], w_prev[k],
                                                   to_acc(gs[k]) + extra[k], to_acc(gv[k]), to_acc(gw[k]),
                                                   pk, cv[k], cw[k], spikes_row[k], false, unused);
            gx[k] = from_acc(c.norm_input ? (acc_t(1) - pk.alpha) * H : H);
          }
        }
        if (prev_spikes && t + 1 < T)  // a_t is the spikes step t + 1's recurrent input saw
          for (index_t k = 0; k < len; ++k) prev_spikes[row + N + k] = from_acc(spikes_row[k]);
      }
    });
  });
}

// Recurrent forward in one call (same contract as exodus_adaptive_recurrent_forward in kernels.cu):
// one work item per batch row; at each step the recurrent input is summed over the neurons that
// spiked at t-1, in ascending order (the GPU kernel's order: both give the same bits), one
// vectorised row update rec += a_j * weight_t[j, :] per spike.
extern "C" void exodus_cpu_adaptive_recurrent_forward(
    const scalar_t* x, const acc_t* weight_t, acc_t* a_state, const acc_t* params, acc_t* v_state, acc_t* w_state,
    scalar_t* spikes, scalar_t* v_out, scalar_t* w_out, acc_t* h_save, acc_t* w_save, index_t B, index_t T,
    index_t N, index_t t_begin, index_t t_end, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input,
    int adaptive, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (num_threads < 1 || B * (t_end - t_begin) * N < kMinParallelWork) num_threads = 1;
  dispatch_forward(config, adaptive != 0, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (B > 1 && num_threads > 1)
    for (index_t b = 0; b < B; ++b) {
      const LifConfig c = decltype(spec)::apply(config);
      const acc_t* const prm = params;
      acc_t* const rows = scratch_rows<acc_t, 3>(2 * N);  // recurrent input; w without adaptation
      acc_t* const rec = rows;
      acc_t* const w = ADAPT ? w_state + b * N : rows + N;
      if (!ADAPT) std::fill(w, w + N, acc_t(0));
      acc_t* const v = v_state + b * N;
      acc_t* const previous = a_state + b * N;
      for (index_t t = t_begin; t < t_end; ++t) {
        std::fill(rec, rec + N, acc_t(0));
        for (index_t j = 0; j < N; ++j) {
          const acc_t a = previous[j];
          if (a == acc_t(0)) continue;
          const acc_t* const column = weight_t + j * N;
#pragma omp simd
          for (index_t k = 0; k < N; ++k) rec[k] += a * column[k];
        }
        const index_t row = (b * T + t) * N;
        const scalar_t* x_t = x + row;
        acc_t* h_t = h_save + row;
        scalar_t* s_t = spikes + row;
#pragma omp simd
        for (index_t k = 0; k < N; ++k) {
          acc_t s;
          h_t[k] = adaptive_forward_step(c, ADAPT, to_acc(x_t[k]) + rec[k], load_adaptive_params(prm, N, k), v[k],
                                         w[k], s);
          s_t[k] = from_acc(s);
          previous[k] = s;
        }
        if (v_out)
          for (index_t k = 0; k < N; ++k) v_out[row + k] = from_acc(v[k]);
        if (ADAPT) {
          for (index_t k = 0; k < N; ++k) w_save[row + k] = w[k];
          if (w_out)
            for (index_t k = 0; k < N; ++k) w_out[row + k] = from_acc(w[k]);
        }
      }
    }
  });
}
