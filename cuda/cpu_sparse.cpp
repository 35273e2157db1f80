// exodus — CPU drivers of the sparse backward of a Linear -> LIF block (DESIGN.md §6).
//
// The active points of a layer (truncated surrogate != 0, spikes, v_min clamps) are given in CSR
// order over (batch, time) rows: point i in [row_ptr[b T + t], row_ptr[b T + t + 1]) is neuron
// col[i] at step t of batch row b.
//
//   exodus_cpu_lif_sparse_backward  the reverse scan over the active points only; the per-point
//                                   update is lif_sparse_point_step (neuron.cuh), as in the GPU
//                                   driver exodus_lif_sparse_backward (kernels.cu)
//   exodus_cpu_sparse_weight_grad   dL/dW = sum_points e (x) s_hat,  dL/db = sum_points e c, with the
//                                   input filtered by the membrane, s_hat_t = alpha s_hat_{t-1} + s_t,
//                                   (and c_t = alpha c_{t-1} + 1) recomputed on the fly: O(B T N_in)
//                                   for the filter plus O(#points N_in) for the outer products
//   exodus_cpu_sparse_weight_grad_u8  the same, with the input packed into bytes (saved spikes)
//   exodus_cpu_sparse_pack_counts   s -> bytes when every value is a whole number in [0, 255]
//   exodus_cpu_sparse_point_indices the points' columns / (b, t, n) COO indices from the CSR rows
//
// Compiled by exodus/backends/cpu.py with -DEXODUS_SCALAR=<float|double>.
#include "cpu_common.h"

#include <vector>
#include "neuron.cuh"

namespace {
constexpr index_t kPointsAhead = 4;  // steps between the prefetch of a point's upstream gradient and its use
}

extern "C" void exodus_cpu_lif_sparse_backward(
    const index_t* row_ptr, const index_t* col, const acc_t* h, const acc_t* q, const acc_t* y,
    const scalar_t* grad_spikes, const acc_t* alpha, const acc_t* theta, acc_t* lambda_state, index_t* t_state,
    acc_t* e_out, acc_t* grad_v0, acc_t* grad_alpha, acc_t* grad_theta, const acc_t* grad_points,
    const acc_t* weight_t, const index_t* in_row_ptr, const index_t* in_col, acc_t* lambda_row, acc_t* grad_in,
    index_t B, index_t T, index_t N, index_t N_in, acc_t gain, int reset, int max_spikes, int has_vmin, acc_t v_min,
    int norm_input, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band,
    int num_threads) {
  (void)N_in;
  const LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  const index_t points = B > 0 ? row_ptr[B * T] : 0;
  if (num_threads < 1 || points < 4096) num_threads = 1;
  // One alpha for the layer (what the sparse block allows): alpha^k by table, each entry from
  // decay_over itself (the same bits), instead of a pow call per point (~30 % of this loop).
  bool shared_alpha = N > 0;
  for (index_t n = 1; n < N && shared_alpha; ++n) shared_alpha = alpha[n] == alpha[0];
  std::vector<acc_t> alpha_power(shared_alpha ? T + 1 : 0);
  for (index_t k = 0; k < index_t(alpha_power.size()); ++k) alpha_power[k] = decay_over(alpha[0], k);
  const acc_t* power = shared_alpha ? alpha_power.data() : nullptr;
  // The rescaled lambda row: chunks short enough that 1/alpha^chunk <= 2^20 (no overflow, any alpha).
  const bool rescaled = shared_alpha && grad_in != nullptr && alpha[0] > acc_t(0) && alpha[0] < acc_t(1);
  index_t chunk = 1;
  while (rescaled && chunk < 64 && chunk < T && alpha_power[chunk + 1] >= acc_t(1.0 / 1048576.0)) ++chunk;
  std::vector<acc_t> inverse_power(rescaled ? chunk + 1 : 0);
  for (index_t k = 0; k < index_t(inverse_power.size()); ++k) inverse_power[k] = acc_t(1) / alpha_power[k];
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1 && B > 1)
  for (index_t b = 0; b < B; ++b) {
    acc_t* lam = lambda_state + b * N;
    index_t* last = t_state + b * N;
    for (index_t n = 0; n < N; ++n) {
      lam[n] = acc_t(0);
      last[n] = T;
      if (grad_alpha) grad_alpha[b * N + n] = acc_t(0);
      if (grad_theta) grad_theta[b * N + n] = acc_t(0);
    }
    // lambda_t of every neuron (sampled dL/ds only). With one alpha it is kept rescaled, cur[n] =
    // lambda_n(t) / alpha^(t_ref - t), so that the steps without a point of n cost nothing: the
    // row is multiplied by alpha^chunk once per chunk steps (t_ref moves down) instead of by alpha
    // at every step (an O(B T N) pass, ~20 % of this loop at 0.4 % active).
    acc_t* cur = grad_in ? lambda_row + b * N : nullptr;
    if (cur) std::fill(cur, cur + N, acc_t(0));
    index_t t_ref = T - 1;
    for (index_t t = T - 1; t >= 0; --t) {
      const index_t row = b * T + t;
      // The dense upstream gradient is read at the points only: scattered cache misses (59 % of
      // this loop's time at 0.4 % active before this prefetch of the points kPointsAhead steps on).
      if (grad_spikes && !grad_points && t >= kPointsAhead) {
        const index_t ahead = row - kPointsAhead;
        for (index_t i = row_ptr[ahead]; i < row_ptr[ahead + 1]; ++i) __builtin_prefetch(grad_spikes + ahead * N + col[i]);
      }
      if (cur && rescaled && t_ref - t == chunk) {
        for (index_t n = 0; n < N; ++n) cur[n] *= power[chunk];
        t_ref -= chunk;
      } else if (cur && !rescaled) {
        for (index_t n = 0; n < N; ++n) cur[n] *= alpha[n];
      }
      for (index_t i = row_ptr[row]; i < row_ptr[row + 1]; ++i) {
        const index_t n = col[i];
        const acc_t a_n = alpha[n];
        const index_t gap = last[n] - t - 1;
        const acc_t after = last[n] < T ? (power ? power[gap] : decay_over(a_n, gap)) * lam[n] : acc_t(0);
        const acc_t ga = grad_points ? grad_points[i] : grad_spikes ? static_cast<acc_t>(grad_spikes[row * N + n]) : acc_t(0);
        acc_t g_theta = acc_t(0), e = acc_t(0);
        lam[n] = lif_sparse_point_step(c, h[i], ga, after, a_n, theta[n], g_theta, e);
        last[n] = t;
        e_out[i] = e;
        if (grad_theta) grad_theta[b * N + n] += g_theta;
        if (grad_alpha) grad_alpha[b * N + n] += e * (norm_input ? q[i] - y[i] : q[i]);
        if (cur) cur[n] = rescaled ? lam[n] * inverse_power[t_ref - t] : lam[n];
      }
      if (cur) {  // dL/ds_t = gain W^T lambda_t at the input's own active points
        const acc_t scale = rescaled ? gain * power[t_ref - t] : gain;
        index_t i = in_row_ptr[row];
        for (; i + 4 <= in_row_ptr[row + 1]; i += 4) {  // four points of the row share the lambda row
          const acc_t* rows[4] = {weight_t + in_col[i] * N, weight_t + in_col[i + 1] * N,
                                  weight_t + in_col[i + 2] * N, weight_t + in_col[i + 3] * N};
          acc_t sums[4];
          exodus_cpu::dot4(rows, cur, N, sums);
          for (int r = 0; r < 4; ++r) grad_in[i + r] = scale * sums[r];
        }
        for (; i < in_row_ptr[row + 1]; ++i) grad_in[i] = scale * exodus_cpu::dot(weight_t + in_col[i] * N, cur, N);
      }
    }
    for (index_t n = 0; n < N; ++n)
      grad_v0[b * N + n] = last[n] < T ? (power ? power[last[n] + 1] : decay_over(alpha[n], last[n] + 1)) * lam[n]
                                       : acc_t(0);
  }
}

// grad_w (P, N_out, N_in) and grad_b (P, N_out) (null: not needed): per-thread partial sums (slot =
// OpenMP thread), all P zeroed here and summed by the caller. alpha: the layer's one membrane decay.
namespace {
// In: the input element type (the math dtype, or bytes when the block saved its spikes packed).
template <typename In>
void sparse_weight_grad(
    const In* s, const index_t* row_ptr, const index_t* col, const acc_t* e, acc_t alpha, acc_t* grad_w,
    acc_t* grad_b, index_t B, index_t T, index_t N_in, index_t N_out, index_t partials, int num_threads) {
  num_threads = exodus_cpu::partial_sum_threads(num_threads, partials, B * T * N_in);
  std::fill(grad_w, grad_w + partials * N_out * N_in, acc_t(0));  // every slot: fewer threads may run
  if (grad_b) std::fill(grad_b, grad_b + partials * N_out, acc_t(0));
#pragma omp parallel num_threads(num_threads) if (num_threads > 1)
  {
    const index_t slot = exodus_cpu::partial_slot();
    acc_t* gw = grad_w + slot * N_out * N_in;
    acc_t* gb = grad_b ? grad_b + slot * N_out : nullptr;
    std::vector<acc_t> s_hat(N_in);
#pragma omp for schedule(dynamic, 1)
    for (index_t b = 0; b < B; ++b) {
      std::fill(s_hat.begin(), s_hat.end(), acc_t(0));
      acc_t ones_hat = acc_t(0);
      for (index_t t = 0; t < T; ++t) {
        const In* s_t = s + (b * T + t) * N_in;
        acc_t* sh = s_hat.data();
        for (index_t j = 0; j < N_in; ++j) sh[j] = alpha * sh[j] + static_cast<acc_t>(s_t[j]);
        ones_hat = alpha * ones_hat + acc_t(1);
        const index_t row = b * T + t;
        for (index_t i = row_ptr[row]; i < row_ptr[row + 1]; ++i) {
          const acc_t e_i = e[i];
          acc_t* w_row = gw + col[i] * N_in;
          for (index_t j = 0; j < N_in; ++j) w_row[j] += e_i * sh[j];
          if (gb) gb[col[i]] += e_i * ones_hat;
        }
      }
    }
  }
}
}  // namespace

extern "C" void exodus_cpu_sparse_weight_grad(
    const scalar_t* s, const index_t* row_ptr, const index_t* col, const acc_t* e, acc_t alpha, acc_t* grad_w,
    acc_t* grad_b, index_t B, index_t T, index_t N_in, index_t N_out, index_t partials, int num_threads) {
  sparse_weight_grad(s, row_ptr, col, e, alpha, grad_w, grad_b, B, T, N_in, N_out, partials, num_threads);
}

// The same with the input packed into bytes (exodus_cpu_sparse_pack_counts).
extern "C" void exodus_cpu_sparse_weight_grad_u8(
    const unsigned char* s, const index_t* row_ptr, const index_t* col, const acc_t* e, acc_t alpha, acc_t* grad_w,
    acc_t* grad_b, index_t B, index_t T, index_t N_in, index_t N_out, index_t partials, int num_threads) {
  sparse_weight_grad(s, row_ptr, col, e, alpha, grad_w, grad_b, B, T, N_in, N_out, partials, num_threads);
}

// Columns (and optionally 3-D COO indices) of points given in CSR order over the (b, t) rows of a
// (B, T, N) layer: point i of row r = b T + t is the flat index flat[i] = r N + col[i]. One pass,
// a subtraction per point instead of torch's int64 div/mod. col (nnz,) and/or coo (3, nnz) = (b, t, n)
// rows (either may be null).
extern "C" void exodus_cpu_sparse_point_indices(const index_t* row_ptr, const index_t* flat, index_t* col,
                                                index_t* coo, index_t B, index_t T, index_t N, int num_threads) {
  const index_t rows = B * T, nnz = rows > 0 ? row_ptr[rows] : 0;
  if (num_threads < 1 || nnz < (index_t(1) << 16)) num_threads = 1;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
  for (index_t r = 0; r < rows; ++r) {
    const index_t b = r / T, t = r - b * T;
    for (index_t i = row_ptr[r]; i < row_ptr[r + 1]; ++i) {
      const index_t n = flat[i] - r * N;
      if (col) col[i] = n;
      if (coo) {
        coo[i] = b;
        coo[nnz + i] = t;
        coo[2 * nnz + i] = n;
      }
    }
  }
}

// Packs s (n values) into bytes when every value is a whole number in [0, 255] (spikes, or spike counts of
// multi-spike bins): out[i] = s[i] and *packed = 1; otherwise *packed = 0 and out is garbage. One pass.
extern "C" void exodus_cpu_sparse_pack_counts(const scalar_t* s, unsigned char* out, int* packed, index_t n,
                                              int num_threads) {
  if (num_threads < 1 || n < (index_t(1) << 16)) num_threads = 1;
  int bad = 0;
#pragma omp parallel for simd schedule(static) reduction(| : bad) num_threads(num_threads) if (num_threads > 1)
  for (index_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(s[i]);
    const bool in_range = v >= acc_t(0) && v <= acc_t(255);  // false for NaN
    const unsigned char byte = static_cast<unsigned char>(in_range ? v : acc_t(0));
    out[i] = byte;
    bad |= !in_range || static_cast<acc_t>(byte) != v;  // fractions, NaN, values outside [0, 255]
  }
  *packed = bad ? 0 : 1;
}

extern "C" void exodus_cpu_lif_sparse_active(
    const acc_t* h, const acc_t* theta, unsigned char* mask, index_t B, index_t T, index_t N, int reset,
    int max_spikes, int has_vmin, acc_t v_min, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1,
    acc_t p2, acc_t band, int with_theta, int num_threads) {
  const LifConfig c = {reset, max_spikes, has_vmin, 0, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  const index_t rows = B * T;
  if (num_threads < 1 || rows * N < (index_t(1) << 15)) num_threads = 1;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
  for (index_t row = 0; row < rows; ++row)
    for (index_t n = 0; n < N; ++n) mask[row * N + n] = lif_active_point(c, h[row * N + n], theta[n], with_theta != 0) ? 1 : 0;
}
