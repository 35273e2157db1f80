// exodus — CPU drivers over the step functions of adaptive.cuh (ALIF / adLIF, recurrent LIF).
//
// Same contract as exodus_adaptive_forward / exodus_adaptive_backward in kernels.cu (same
// parameter order, plus a thread count): steps [t_begin, t_end) of a (B, T, N) sequence, the
// per-neuron state in (B, N) buffers read at the start and written at the end, so a recurrent
// layer calls them once per step with the recurrent term in `rec` / `grad_rec`.
// Time-outer, neurons-inner over (batch, neuron-tile) work items as in cpu_drivers.cpp; the
// options that decide the inner loop's work are template parameters. CPU only:
// exodus_cpu_adaptive_recurrent_forward and exodus_cpu_adaptive_recurrent_backward run a whole
// recurrent layer in one call (the GPU backward launches once per step with cuBLAS in between).
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
// LEAN (24 more): exodus gradient, single spikes, no v_min, no truncation band and no dL/dv,
// dL/dw: those terms become compile-time zeros (as the LIF backward's LEAN variants). norm_input
// stays a runtime value here (adLIF uses it; its only costly term, a division, feeds dL/dalpha).
template <int KIND, bool SUBTRACT, bool ADAPT, bool LEAN>
struct BackwardSpecialised {
  static constexpr bool adaptive = ADAPT;
  static constexpr bool lean = LEAN;
  static LifConfig apply(LifConfig c) {
    c.surrogate = KIND;
    c.reset = SUBTRACT ? RESET_SUBTRACT : RESET_ZERO;
    if (LEAN) {
      c.gradient = GRADIENT_EXODUS;
      c.max_spikes = 1;
      c.has_vmin = 0;
      c.band = acc_t(0);
    }
    return c;
  }
};

// lean: the caller checked the LEAN condition that is not in LifConfig (no dL/dv, dL/dw).
template <typename F>
void dispatch_backward(const LifConfig& c, bool adaptive, bool lean, F&& f) {
  lean = lean && c.gradient == GRADIENT_EXODUS && c.max_spikes == 1 && !c.has_vmin && c.band == acc_t(0);
  with_kind_from<0>(c.surrogate, [&](auto kind) {
    with_bool(c.reset == RESET_SUBTRACT, [&](auto subtract) {
      with_bool(adaptive, [&](auto adapt) {
        with_bool(lean, [&](auto is_lean) {
          f(BackwardSpecialised<decltype(kind)::value, decltype(subtract)::value, decltype(adapt)::value,
                                decltype(is_lean)::value>{});
        });
      });
    });
  });
}

// The CPU forward keeps w only at checkpoints (the GPU kernels keep every w_t): before chunk c of
// kWEvery steps, [cK, cK + K), the two values w_{cK-2} and w_{cK-1}, rows 2c and 2c + 1 of a
// (B, w_checkpoint_rows(T), N) array (rows 0 and 1: w0, both). The backward rebuilds each chunk's w from them and the saved h (adaptive_w_from_h, the
// forward's own operations): one saved element per neuron-step instead of two.
constexpr index_t kWEvery = 32;

index_t w_checkpoint_rows(index_t T) { return 2 * ((T + kWEvery - 1) / kWEvery); }

// Row of w_t in the checkpoint array, or -1 if w_t is not kept (w_{-1} = w0 goes to rows 0 and 1).
inline index_t w_checkpoint_row(index_t t, index_t rows) {
  const index_t r = (t + 2) % kWEvery;
  const index_t row = r == 0 ? 2 * ((t + 2) / kWEvery) : r == 1 ? 2 * ((t + 1) / kWEvery) + 1 : -1;
  return row < rows ? row : -1;
}

}  // namespace

// Rows of the CPU forward's w checkpoint array for T steps (exodus/backends/cpu.py sizes it).
extern "C" index_t exodus_cpu_adaptive_w_checkpoint_rows(index_t T) { return w_checkpoint_rows(T); }

extern "C" void exodus_cpu_adaptive_forward(
    const scalar_t* x, const acc_t* rec, const acc_t* params, acc_t* v_state, acc_t* w_state, scalar_t* spikes,
    scalar_t* v_out, scalar_t* w_out, acc_t* h_save, acc_t* w_save, index_t B, index_t T, index_t N,
    index_t t_begin, index_t t_end, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input,
    int adaptive, int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  const index_t checkpoints = w_checkpoint_rows(T);
  dispatch_forward(config, adaptive != 0, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
    for_each_tile(B, t_end - t_begin, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);  // local: its constant fields fold away
      const acc_t* const prm = params + n0;  // a local pointer (not the captured one): the loops vectorise
      acc_t* v = v_state + b * N + n0;
      acc_t* const rows = scratch_rows<acc_t, 0>(2 * len);  // w without adaptation; zero recurrent input
      std::fill(rows, rows + 2 * len, acc_t(0));
      acc_t* w = ADAPT ? w_state + b * N + n0 : rows;
      if (ADAPT && t_begin == 0)  // w_{-1} = w0: rows 0 and 1 of the checkpoints
        for (index_t k = 0; k < len; ++k)
          w_save[b * checkpoints * N + n0 + k] = w_save[(b * checkpoints + 1) * N + n0 + k] = w[k];
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
          const index_t kept = w_checkpoint_row(t, checkpoints);
          if (kept >= 0)
            for (index_t k = 0; k < len; ++k) w_save[(b * checkpoints + kept) * N + n0 + k] = w[k];
          if (w_out)
            for (index_t k = 0; k < len; ++k) w_out[row + k] = from_acc(w[k]);
        }
      }
    });
  });
}

namespace {
// Pointers and sizes of one reverse scan: the arguments both backward drivers share.
struct ReverseScan {
  const acc_t* h_save;
  const acc_t* w_save;
  const scalar_t* grad_spikes;
  const scalar_t* grad_v;
  const scalar_t* grad_w;
  const acc_t* params;
  const acc_t* v0;  // (w0 reaches the scan through rows 0 and 1 of the w checkpoints)
  scalar_t* grad_x;
  scalar_t* prev_spikes;
  acc_t* carry_v;
  acc_t* carry_w;
  acc_t* grad_params;
  index_t T, N, partials;
};

// Scratch rows (len each) of one work item: v_{t-1}, carry_w without adaptation, a_t, zeros (math
// dtype). Only the carry_w row and the zeros keep their values between steps (both stay zero).
enum ReverseRow { R_V_PREV = 0, R_CARRY_W, R_SPIKES, R_ZEROS, kReverseRows };

acc_t* reverse_scratch(index_t len, scalar_t*& zeros) {
  acc_t* const rows = scratch_rows<acc_t, 1>(kReverseRows * len);
  std::fill(rows, rows + kReverseRows * len, acc_t(0));
  zeros = scratch_rows<scalar_t, 2>(len);
  std::fill(zeros, zeros + len, from_acc(acc_t(0)));
  return rows;
}

// Step t of the reverse scan for batch row b, neurons [n0, n0 + len): the loop body of both
// backward drivers. extra: dL/da_t's recurrent term M^T c H_{t+1} of these neurons (or zeros).
// w_prev, w_prev2: w_{t-1} and w_{t-2} of these neurons (rebuild_w; zeros without adaptation).
// Inlined into each driver's specialised loop, where the option fields of c are constants.
template <bool ADAPT, bool LEAN>
__attribute__((always_inline)) inline void reverse_step_row(const LifConfig& c, const ReverseScan& s, index_t b, index_t t, index_t n0, index_t len,
                      acc_t* const rows, const scalar_t* const zeros, const acc_t* const extra, index_t slot,
                      const acc_t* const w_prev, const acc_t* const w_prev2) {
  const index_t T = s.T, N = s.N;
  const acc_t* const prm = s.params + n0;  // local pointers (not the struct's): the loops vectorise
  const acc_t* const h_save = s.h_save;
  const bool need_params = s.grad_params != nullptr;
  acc_t* const v_prev = rows + R_V_PREV * len;
  acc_t* const spikes_row = rows + R_SPIKES * len;
  acc_t* g_row[NUM_ADAPTIVE_PARAMS];
  for (int q = 0; q < NUM_ADAPTIVE_PARAMS; ++q)
    g_row[q] = need_params ? s.grad_params + (q * s.partials + slot) * N + n0 : nullptr;
  acc_t* const cv = s.carry_v + b * N + n0;
  acc_t* const cw = ADAPT ? s.carry_w + b * N + n0 : rows + R_CARRY_W * len;
  const index_t row = (b * T + t) * N + n0;
  const scalar_t* const gs = s.grad_spikes ? s.grad_spikes + row : zeros;
  const scalar_t* const gv = s.grad_v ? s.grad_v + row : zeros;
  const scalar_t* const gw = s.grad_w ? s.grad_w + row : zeros;
  if (t > 0) {  // the next step's rows (see prefetch_row_start)
    prefetch_row_start(h_save + row - N, len);
    if (s.grad_spikes) prefetch_row_start(gs - N, len);
  }
  if (need_params) {
    if (t > 0) {
      const acc_t* h_prev = h_save + row - N;
#pragma omp simd
      for (index_t k = 0; k < len; ++k)
        v_prev[k] = membrane_from_h(c, h_prev[k], adaptive_threshold(load_adaptive_params(prm, N, k), w_prev2[k], ADAPT));
    } else {
      const acc_t* const v0_row = s.v0 + b * N + n0;
      for (index_t k = 0; k < len; ++k) v_prev[k] = v0_row[k];
    }
  }
  const acc_t* h_t = h_save + row;
  scalar_t* gx = s.grad_x + row;
  if (need_params) {
#pragma omp simd
    for (index_t k = 0; k < len; ++k) {
      const AdaptiveParams pk = load_adaptive_params(prm, N, k);
      AdaptiveGrads gk;  // a local copy, so that the loop vectorises (structure of arrays in memory)
      gk.alpha = g_row[P_ALPHA][k]; gk.theta = g_row[P_THETA][k]; gk.rho = g_row[P_RHO][k];
      gk.beta = g_row[P_BETA][k]; gk.gamma = g_row[P_GAMMA][k]; gk.zeta = g_row[P_ZETA][k];
      gk.eta = g_row[P_ETA][k];
      const acc_t H = adaptive_backward_step(c, ADAPT, h_t[k], v_prev[k], w_prev[k],
                                             to_acc(gs[k]) + extra[k], LEAN ? acc_t(0) : to_acc(gv[k]),
                                             LEAN ? acc_t(0) : to_acc(gw[k]), pk, cv[k], cw[k], spikes_row[k],
                                             true, gk);
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
                                             to_acc(gs[k]) + extra[k], LEAN ? acc_t(0) : to_acc(gv[k]),
                                             LEAN ? acc_t(0) : to_acc(gw[k]), pk, cv[k], cw[k], spikes_row[k],
                                             false, unused);
      gx[k] = from_acc(c.norm_input ? (acc_t(1) - pk.alpha) * H : H);
    }
  }
  if (s.prev_spikes && t + 1 < T)  // a_t is the spikes step t + 1's recurrent input saw
    for (index_t k = 0; k < len; ++k) s.prev_spikes[row + N + k] = from_acc(spikes_row[k]);
}

// Rebuilds w_{t0-2} .. w_{t1-2} of batch row b, neurons [n0, n0 + len), into rows 0 .. t1 - t0 of
// w (len each) for the chunk [t0, t1) (t0 a multiple of kWEvery): from the checkpoints before the
// chunk and the saved h. Step t then reads w_{t-1}, w_{t-2} at rows t - t0 + 1,
// t - t0.
__attribute__((always_inline)) inline void rebuild_w(const LifConfig& c, const ReverseScan& s, index_t b, index_t t0,
                                                      index_t t1, index_t n0, index_t len, acc_t* const w) {
  const index_t N = s.N, checkpoints = w_checkpoint_rows(s.T);
  const acc_t* const prm = s.params + n0;
  const acc_t* const before = s.w_save + (b * checkpoints + 2 * (t0 / kWEvery)) * N + n0;  // w_{t0-2}, w_{t0-1}
  std::copy(before, before + len, w);
  std::copy(before + N, before + N + len, w + len);
  for (index_t t = t0; t + 1 < t1; ++t) {
    const acc_t* const h_t = s.h_save + (b * s.T + t) * N + n0;
    const acc_t* const prev = w + (t - t0 + 1) * len;
    acc_t* const next = w + (t - t0 + 2) * len;
#pragma omp simd
    for (index_t k = 0; k < len; ++k) next[k] = adaptive_w_from_h(c, load_adaptive_params(prm, N, k), prev[k], h_t[k]);
  }
}
}  // namespace

extern "C" void exodus_cpu_adaptive_backward(
    const acc_t* h_save, const acc_t* w_save, const scalar_t* grad_spikes, const scalar_t* grad_v,
    const scalar_t* grad_w, const acc_t* grad_rec, const acc_t* params, const acc_t* v0, const acc_t* w0,
    scalar_t* grad_x, scalar_t* prev_spikes, acc_t* carry_v, acc_t* carry_w, acc_t* grad_params, index_t B,
    index_t T, index_t N, index_t t_begin, index_t t_end, index_t partials, int reset, int max_spikes,
    int has_vmin, acc_t v_min, int norm_input, int adaptive, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band,
    int num_threads) {
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  (void)w0;  // the GPU kernel's argument: here w0 is rows 0 and 1 of the w checkpoints
  const ReverseScan scan = {h_save, w_save, grad_spikes, grad_v, grad_w, params, v0, grad_x, prev_spikes,
                            carry_v, carry_w, grad_params, T, N, partials};
  // Parameter-gradient partials: slot = OpenMP thread (the batch sum happens in a small (7, P, N)
  // array that stays in cache when the driver is called once per step).
  num_threads = partial_sum_threads(num_threads, partials, B * (t_end - t_begin) * N);
  dispatch_backward(config, adaptive != 0, !grad_v && !grad_w, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
    for_each_tile(B, t_end - t_begin, N, num_threads, [&](index_t b, index_t n0, index_t len) {
      const LifConfig c = decltype(spec)::apply(config);
      scalar_t* zeros;
      acc_t* const rows = reverse_scratch(len, zeros);
      const acc_t* extra = grad_rec ? grad_rec + b * N + n0 : rows + R_ZEROS * len;
      const index_t slot = partial_slot();
      const acc_t* const zeros_acc = rows + R_ZEROS * len;
      acc_t* const w = ADAPT ? scratch_rows<acc_t, 4>((kWEvery + 1) * len) : nullptr;
      for (index_t t1 = t_end; t1 > t_begin;) {  // chunks of kWEvery steps, last first
        const index_t t0 = (t1 - 1) / kWEvery * kWEvery, stop = std::max(t0, t_begin);
        if (ADAPT) rebuild_w(c, scan, b, t0, t1, n0, len, w);
        for (index_t t = t1 - 1; t >= stop; --t)
          reverse_step_row<ADAPT, decltype(spec)::lean>(c, scan, b, t, n0, len, rows, zeros, extra, slot,
                                  ADAPT ? w + (t - t0 + 1) * len : zeros_acc, ADAPT ? w + (t - t0) * len : zeros_acc);
        t1 = stop;
      }
    });
  });
}

// ---- recurrent backward in one call ------------------------------------------------------
// The reverse scan of DESIGN §5 with its dense product inside: at step t, dL/da_t gains
// M^T c H_{t+1} = (dL/dx_{t+1} M)^T. Each thread owns a range of neuron columns for the whole
// scan: it keeps its columns of M packed in panels (N x cols, in its own L2 cache for N = 512),
// computes their recurrent term from the full row dL/dx_{t+1}, runs the reverse step of its
// neurons for every batch row, and adds dL/dM over the spikes a_{t-1} into its columns of dL/dM^T.
// One barrier per step: step t reads every column of dL/dx_{t+1}.
namespace {
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
typedef acc_t gemm_vector __attribute__((vector_size(kVectorBytes)));
constexpr index_t kLanes = kVectorBytes / sizeof(acc_t);
constexpr index_t kPanel = 2 * kLanes;  // columns per packed panel: two vectors
constexpr int kRowBlock = 6;            // batch rows per register block (12 accumulators)

// out[r][0, kPanel) = sum_k g[r][k] panel[k][0, kPanel) for R rows (an R x kPanel register block).
// FMA contraction is allowed here only: the product's rounding is BLAS-like, not the neuron rules'.
template <int R>
__attribute__((optimize("fp-contract=fast"))) void panel_block(const acc_t* const* g, const acc_t* panel, index_t K,
                                                               acc_t* const* out) {
  gemm_vector acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = gemm_vector{};
  for (index_t k = 0; k < K; ++k) {
    gemm_vector m0, m1;
    __builtin_memcpy(&m0, panel + k * kPanel, sizeof m0);
    __builtin_memcpy(&m1, panel + k * kPanel + kLanes, sizeof m1);
    for (int r = 0; r < R; ++r) {
      const acc_t x = g[r][k];
      acc[r][0] += x * m0;
      acc[r][1] += x * m1;
    }
  }
  for (int r = 0; r < R; ++r) {
    __builtin_memcpy(out[r], &acc[r][0], sizeof acc[r][0]);
    __builtin_memcpy(out[r] + kLanes, &acc[r][1], sizeof acc[r][1]);
  }
}

template <int R>
void panel_rows(int rows, const acc_t* const* g, const acc_t* panel, index_t K, acc_t* const* out) {
  if constexpr (R > 1) {
    if (rows < R) return panel_rows<R - 1>(rows, g, panel, K, out);
  }
  panel_block<R>(g, panel, K, out);
}

// rec[b][0, width) = sum_k grad_x[b, t + 1, k] M[k, c0 + j] for the packed panels of M's columns
// [c0, c0 + width); rec rows are padded to whole panels.
void recurrent_term(const scalar_t* next, index_t row_stride, index_t B, index_t N, const acc_t* panels,
                    index_t num_panels, acc_t* rec, index_t rec_stride) {
  const acc_t* g[kRowBlock];
  acc_t* out[kRowBlock];
  for (index_t b0 = 0; b0 < B; b0 += kRowBlock) {
    const int rows = static_cast<int>(std::min<index_t>(kRowBlock, B - b0));
    for (int r = 0; r < rows; ++r) g[r] = next + (b0 + r) * row_stride;
    for (index_t p = 0; p < num_panels; ++p) {
      for (int r = 0; r < rows; ++r) out[r] = rec + (b0 + r) * rec_stride + p * kPanel;
      panel_rows<kRowBlock>(rows, g, panels + p * N * kPanel, N, out);
    }
  }
}
}  // namespace

// Returns 0, or 1 if a thread's scratch (its panels of M, the recurrent term and the rebuilt w, all
// O(N^2 / threads + B K N / threads)) could not be allocated: then no thread runs the scan (the caller
// raises MemoryError; an exception must not leave the parallel region).
extern "C" int exodus_cpu_adaptive_recurrent_backward(
    const acc_t* h_save, const acc_t* w_save, const scalar_t* grad_spikes, const scalar_t* grad_v,
    const scalar_t* grad_w, const acc_t* weight, const scalar_t* spikes, const acc_t* a0, const acc_t* params,
    const acc_t* v0, scalar_t* grad_x, acc_t* carry_v, acc_t* carry_w, acc_t* grad_params,
    acc_t* grad_weight_t, index_t B, index_t T, index_t N, index_t partials, int reset, int max_spikes,
    int has_vmin, acc_t v_min, int norm_input, int adaptive, int gradient, int surrogate, acc_t grad_scale, acc_t p0,
    acc_t p1, acc_t p2, acc_t band, int num_threads) {
  static_assert(std::is_same<scalar_t, acc_t>::value, "the CPU kernels store in the math dtype");
  const LifConfig config = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  const ReverseScan scan = {h_save, w_save, grad_spikes, grad_v, grad_w, params, v0, grad_x, nullptr,
                            carry_v, carry_w, grad_params, T, N, partials};
  const index_t total_panels = (N + kPanel - 1) / kPanel;
  num_threads = partial_sum_threads(num_threads, grad_params ? partials : num_threads, B * T * N);
  num_threads = static_cast<int>(std::max<index_t>(1, std::min<index_t>(num_threads, total_panels)));
  int failed = 0;
  dispatch_backward(config, adaptive != 0, !grad_v && !grad_w, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
    {
      const LifConfig c = decltype(spec)::apply(config);
      const index_t slot = partial_slot();
#if defined(_OPENMP)
      const index_t threads = omp_in_parallel() ? omp_get_num_threads() : 1;
#else
      const index_t threads = 1;
#endif
      const index_t p_begin = total_panels * slot / threads, p_end = total_panels * (slot + 1) / threads;
      const index_t c0 = p_begin * kPanel, c1 = std::min(N, p_end * kPanel), width = c1 - c0;
      const index_t num_panels = p_end - p_begin, padded = num_panels * kPanel;
      const index_t chunk_rows = (kWEvery + 1) * width;  // rebuilt w of one batch row
      // This thread's columns of M in panels: panels[p][k][q] = M[k, c0 + p kPanel + q] (zero past N).
      std::vector<acc_t> panels, rec, w;
      acc_t* rows = nullptr;
      scalar_t* zeros = nullptr;
      try {
        panels.assign(static_cast<size_t>(num_panels * N * kPanel), acc_t(0));
        rec.assign(static_cast<size_t>(std::max<index_t>(B * padded, 1)), acc_t(0));
        w.assign(ADAPT ? static_cast<size_t>(std::max<index_t>(B * chunk_rows, 1)) : 0, acc_t(0));
        rows = reverse_scratch(std::max<index_t>(width, 1), zeros);
      } catch (...) {
#pragma omp atomic write
        failed = 1;
      }
#pragma omp barrier
      int give_up;
#pragma omp atomic read
      give_up = failed;
      if (!give_up) {
      for (index_t p = 0; p < num_panels; ++p)
        for (index_t k = 0; k < N; ++k)
          for (index_t q = 0; q < kPanel && c0 + p * kPanel + q < c1; ++q)
            panels[(p * N + k) * kPanel + q] = weight[k * N + c0 + p * kPanel + q];
      if (grad_weight_t) std::fill(grad_weight_t + c0 * N, grad_weight_t + c1 * N, acc_t(0));
      const acc_t* const zeros_acc = rows + R_ZEROS * std::max<index_t>(width, 1);
      for (index_t t1 = T; t1 > 0;) {  // chunks of kWEvery steps, last first
        const index_t t0 = (t1 - 1) / kWEvery * kWEvery;
        if (ADAPT && width > 0)
          for (index_t b = 0; b < B; ++b) rebuild_w(c, scan, b, t0, t1, c0, width, w.data() + b * chunk_rows);
        for (index_t t = t1 - 1; t >= t0; --t) {
          if (width > 0) {
            if (t + 1 < T) recurrent_term(grad_x + (t + 1) * N, T * N, B, N, panels.data(), num_panels, rec.data(), padded);
            for (index_t b = 0; b < B; ++b) {
              const acc_t* const wb = w.data() + b * chunk_rows;
              reverse_step_row<ADAPT, decltype(spec)::lean>(c, scan, b, t, c0, width, rows, zeros,
                                      t + 1 < T ? rec.data() + b * padded : zeros_acc, slot,
                                      ADAPT ? wb + (t - t0 + 1) * width : zeros_acc,
                                      ADAPT ? wb + (t - t0) * width : zeros_acc);
            }
          }
#pragma omp barrier
        }
        t1 = t0;
      }
      panels = std::vector<acc_t>();  // M's panels are not needed any more: dL/dM^T's columns get the cache
      // dL/dM[i, j] = sum over (b, t) of dL/dx_t[i] a_{t-1}[j], over the spikes (DESIGN §5): this
      // thread sums the rows j of dL/dM^T of its own neurons (it scans only their spikes).
      if (grad_weight_t && width > 0) {
        for (index_t b = 0; b < B; ++b)
          for (index_t t = 0; t < T; ++t) {
            const scalar_t* const a = t > 0 ? spikes + (b * T + t - 1) * N : nullptr;
            const scalar_t* const g_t = grad_x + (b * T + t) * N;
            for (index_t j = c0; j < c1; ++j) {
              const acc_t a_j = a ? to_acc(a[j]) : a0[b * N + j];
              if (a_j == acc_t(0)) continue;
              acc_t* __restrict__ out = grad_weight_t + j * N;
#pragma omp simd
              for (index_t i = 0; i < N; ++i) out[i] += a_j * to_acc(g_t[i]);
            }
          }
      }
      }  // !give_up
    }
  });
  return failed;
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
  const index_t checkpoints = w_checkpoint_rows(T);
  dispatch_forward(config, adaptive != 0, [&](auto spec) {
    constexpr bool ADAPT = decltype(spec)::adaptive;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (B > 1 && num_threads > 1)
    for (index_t b = 0; b < B; ++b) {
      const LifConfig c = decltype(spec)::apply(config);
      const acc_t* const prm = params;
      acc_t* const rows = scratch_rows<acc_t, 3>(2 * N);  // recurrent input; w without adaptation
      acc_t* const rec = rows;
      acc_t* const w = ADAPT ? w_state + b * N : rows + N;
      if (ADAPT && t_begin == 0)  // w_{-1} = w0: rows 0 and 1 of the checkpoints
        for (index_t k = 0; k < N; ++k) w_save[b * checkpoints * N + k] = w_save[(b * checkpoints + 1) * N + k] = w[k];
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
          const index_t kept = w_checkpoint_row(t, checkpoints);
          if (kept >= 0)
            for (index_t k = 0; k < N; ++k) w_save[(b * checkpoints + kept) * N + k] = w[k];
          if (w_out)
            for (index_t k = 0; k < N; ++k) w_out[row + k] = from_acc(w[k]);
        }
      }
    }
  });
}
