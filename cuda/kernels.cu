// exodus — __global__ drivers: one thread per (batch, neuron), the time loop inside.
//
// Tensors are (B, T, N) contiguous, element (b, t, n) at b*T*N + t*N + n, so
// neighbouring threads (neighbouring n) touch neighbouring addresses at every t.
// Per-neuron parameters alpha, theta are (N,); states v0 and the per-neuron
// parameter-gradient partials are (B, N) (summed over the batch by the caller).
// The launch plan (names, grid, block, argument list) is built by
// exodus/backends/launch.py, shared by the cupy backend and the host emulation.
#include "neuron.cuh"
#include "adaptive.cuh"

#define EXODUS_THREAD_INDEX ((index_t)blockIdx.x * (index_t)blockDim.x + (index_t)threadIdx.x)

extern "C" __global__ void exodus_lif_forward(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ alpha, const acc_t* __restrict__ theta,
    const acc_t* __restrict__ v0, scalar_t* __restrict__ spikes, scalar_t* __restrict__ v_out,
    acc_t* __restrict__ h_out, index_t B, index_t T, index_t N, int reset, int max_spikes,
    int has_vmin, acc_t v_min, int norm_input, int v_trace) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  const acc_t a_n = alpha[n], th_n = theta[n];
  acc_t v = v0[tid];
  index_t i = b * T * N + n;
  for (index_t t = 0; t < T; ++t, i += N) {
    acc_t s;
    h_out[i] = lif_forward_step(c, to_acc(x[i]), a_n, th_n, v, s);
    spikes[i] = from_acc(s);
    if (v_trace) v_out[i] = from_acc(v);
  }
  if (!v_trace) v_out[tid] = from_acc(v);
}

// v_out is the membrane trace (B, T, N) with v_trace, else only the final membrane (B, N).
// The backward's grad_v has the same layout. grad_spikes / grad_v may be null (that output
// did not reach the loss); grad_alpha / grad_theta may be null (not needed: dL/dalpha is then
// skipped with the recomputation of v_{t-1} it needs).
extern "C" __global__ void exodus_lif_backward(
    const acc_t* __restrict__ h, const scalar_t* __restrict__ grad_spikes,
    const scalar_t* __restrict__ grad_v, const acc_t* __restrict__ alpha,
    const acc_t* __restrict__ theta, const acc_t* __restrict__ v0, scalar_t* __restrict__ grad_x,
    acc_t* __restrict__ grad_v0, acc_t* __restrict__ grad_alpha, acc_t* __restrict__ grad_theta,
    index_t B, index_t T, index_t N, int reset, int max_spikes, int has_vmin, acc_t v_min,
    int norm_input, int v_trace, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1,
    acc_t p2, acc_t band) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  const acc_t a_n = alpha[n], th_n = theta[n];
  const SurrogateNeuron s_n = surrogate_neuron(c.surrogate, th_n, p0, p1, band);
  acc_t lambda = acc_t(0), g_alpha = acc_t(0), g_theta = acc_t(0);
  if (T > 0) {
    index_t i = b * T * N + (T - 1) * N + n;
    acc_t h_t = h[i];
    for (index_t t = T - 1; t >= 0; --t, i -= N) {
      const acc_t h_prev = t > 0 ? h[i - N] : acc_t(0);
      const acc_t v_prev = !grad_alpha ? acc_t(0) : t > 0 ? membrane_from_h(c, h_prev, th_n) : v0[tid];
      const acc_t ga = grad_spikes ? to_acc(grad_spikes[i]) : acc_t(0);
      const acc_t gv = !grad_v ? acc_t(0) : v_trace ? to_acc(grad_v[i]) : t == T - 1 ? to_acc(grad_v[tid]) : acc_t(0);
      lambda = lif_backward_step_at(c, s_n, h_t, v_prev, ga, gv, lambda, a_n, g_alpha, g_theta);
      grad_x[i] = from_acc(c.norm_input ? (acc_t(1) - a_n) * lambda : lambda);
      h_t = h_prev;
    }
  }
  // Without steps and without the trace the "final membrane" is v0 itself.
  grad_v0[tid] = (T == 0 && !v_trace && grad_v) ? to_acc(grad_v[tid]) : a_n * lambda;
  if (grad_alpha) grad_alpha[tid] = g_alpha;
  if (grad_theta) grad_theta[tid] = g_theta;
}

extern "C" __global__ void exodus_leaky_forward(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ alpha, const acc_t* __restrict__ v0,
    scalar_t* __restrict__ v_out, index_t B, index_t T, index_t N, int norm_input) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  const acc_t a_n = alpha[n];
  acc_t v = v0[tid];
  index_t i = b * T * N + n;
  for (index_t t = 0; t < T; ++t, i += N) v_out[i] = from_acc(leaky_forward_step(to_acc(x[i]), a_n, norm_input, v));
}

extern "C" __global__ void exodus_leaky_backward(
    const scalar_t* __restrict__ v_out, const scalar_t* __restrict__ grad_v,
    const acc_t* __restrict__ alpha, const acc_t* __restrict__ v0, scalar_t* __restrict__ grad_x,
    acc_t* __restrict__ grad_v0, acc_t* __restrict__ grad_alpha, index_t B, index_t T, index_t N,
    int norm_input) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  const acc_t a_n = alpha[n];
  acc_t lambda = acc_t(0), g_alpha = acc_t(0);
  index_t i = b * T * N + (T - 1) * N + n;
  for (index_t t = T - 1; t >= 0; --t, i -= N) {
    const acc_t v_prev = !grad_alpha ? acc_t(0) : t > 0 ? to_acc(v_out[i - N]) : v0[tid];
    lambda = leaky_backward_step(to_acc(v_out[i]), v_prev, to_acc(grad_v[i]), lambda, a_n, norm_input, g_alpha);
    grad_x[i] = from_acc(norm_input ? (acc_t(1) - a_n) * lambda : lambda);
  }
  grad_v0[tid] = a_n * lambda;
  if (grad_alpha) grad_alpha[tid] = g_alpha;  // may be null, as in exodus_lif_backward
}

// ---- two-state adaptive neuron (adaptive.cuh), optionally recurrent --------------------------
// Both drivers run the steps [t_begin, t_end) of a (B, T, N) sequence and keep the per-neuron
// state in (B, N) buffers, read at the start and written at the end: a feed-forward layer is one
// launch over [0, T); a recurrent layer (DESIGN §5) is one launch per step, the (B, N) x (N, N)
// product M a_{t-1} (forward) or c H_{t+1} M (backward) computed between launches (cuBLAS via
// torch) and passed in `rec` / `grad_rec` (null: no recurrent term).
// params: (7, N) packed as AdaptiveParam. With adaptive = 0, w is never read or written (its
// pointers may be null) and the neuron is the LIF of neuron.cuh.
// Outputs: spikes (B, T, N); v_out / w_out the state traces (B, T, N) or null; h_save and
// w_save (B, T, N) the two elements per neuron-step saved for the backward (w_save null when
// not adaptive).
extern "C" __global__ void exodus_adaptive_forward(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ rec, const acc_t* __restrict__ params,
    acc_t* __restrict__ v_state, acc_t* __restrict__ w_state, scalar_t* __restrict__ spikes,
    scalar_t* __restrict__ v_out, scalar_t* __restrict__ w_out, acc_t* __restrict__ h_save,
    acc_t* __restrict__ w_save, index_t B, index_t T, index_t N, index_t t_begin, index_t t_end, int reset,
    int max_spikes, int has_vmin, acc_t v_min, int norm_input, int adaptive) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  const AdaptiveParams p = load_adaptive_params(params, N, n);
  const acc_t extra = rec ? rec[tid] : acc_t(0);
  acc_t v = v_state[tid], w = adaptive ? w_state[tid] : acc_t(0);
  index_t i = b * T * N + t_begin * N + n;
  for (index_t t = t_begin; t < t_end; ++t, i += N) {
    acc_t s;
    const acc_t input = rec ? to_acc(x[i]) + extra : to_acc(x[i]);
    h_save[i] = adaptive_forward_step(c, adaptive != 0, input, p, v, w, s);
    spikes[i] = from_acc(s);
    if (v_out) v_out[i] = from_acc(v);
    if (adaptive) {
      w_save[i] = w;
      if (w_out) w_out[i] = from_acc(w);
    }
  }
  v_state[tid] = v;
  if (adaptive) w_state[tid] = w;
}

// Reverse steps t_end - 1 down to t_begin. carry_v / carry_w (B, N): the carries of
// adaptive.cuh, read at the start and written at the end (dL/dv0, dL/dw0 after step 0);
// the gradient of the final state enters as their initial value. grad_spikes / grad_v /
// grad_w: (B, T, N) or null. grad_params: (7, P, N) partial sums, accumulated (+=), or null (then
// v_{t-1} is not recomputed); each slot of P is written by one thread at a time: here slot = batch
// row (P = B), in the CPU driver slot = OpenMP thread. prev_spikes (B, T, N) or null: the recomputed
// a_t written at step t + 1, i.e. the spikes each step's recurrent input saw (step 0, a0, is the
// caller's), so that dL/dM = sum over (b, t) of dL/dx_t (x) prev_spikes_t is one matrix product.
extern "C" __global__ void exodus_adaptive_backward(
    const acc_t* __restrict__ h_save, const acc_t* __restrict__ w_save, const scalar_t* __restrict__ grad_spikes,
    const scalar_t* __restrict__ grad_v, const scalar_t* __restrict__ grad_w, const acc_t* __restrict__ grad_rec,
    const acc_t* __restrict__ params, const acc_t* __restrict__ v0, const acc_t* __restrict__ w0,
    scalar_t* __restrict__ grad_x, scalar_t* __restrict__ prev_spikes, acc_t* __restrict__ carry_v,
    acc_t* __restrict__ carry_w, acc_t* __restrict__ grad_params, index_t B, index_t T, index_t N,
    index_t t_begin, index_t t_end, index_t partials, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input,
    int adaptive, int gradient, int surrogate, acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band) {
  const index_t tid = EXODUS_THREAD_INDEX;
  if (tid >= B * N) return;
  const index_t b = tid / N, n = tid - b * N;
  LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  const AdaptiveParams p = load_adaptive_params(params, N, n);
  const bool adapt = adaptive != 0;
  const acc_t extra = grad_rec ? grad_rec[tid] : acc_t(0);
  AdaptiveGrads g;
  acc_t cv = carry_v[tid], cw = adapt ? carry_w[tid] : acc_t(0);
  const index_t row0 = b * T * N + n;
  for (index_t t = t_end - 1; t >= t_begin; --t) {
    const index_t i = row0 + t * N;
    const acc_t w_prev = !adapt ? acc_t(0) : t > 0 ? w_save[i - N] : w0[tid];
    acc_t v_prev = acc_t(0);
    if (grad_params) {
      if (t > 0) {
        const acc_t w_prev2 = !adapt ? acc_t(0) : t > 1 ? w_save[i - 2 * N] : w0[tid];
        v_prev = membrane_from_h(c, h_save[i - N], adaptive_threshold(p, w_prev2, adapt));
      } else {
        v_prev = v0[tid];
      }
    }
    acc_t ga = grad_spikes ? to_acc(grad_spikes[i]) : acc_t(0);
    ga += extra;
    const acc_t gv = grad_v ? to_acc(grad_v[i]) : acc_t(0);
    const acc_t gw = grad_w ? to_acc(grad_w[i]) : acc_t(0);
    acc_t s;
    const acc_t H = adaptive_backward_step(c, adapt, h_save[i], v_prev, w_prev, ga, gv, gw, p, cv, cw, s,
                                           grad_params != nullptr, g);
    grad_x[i] = from_acc(c.norm_input ? (acc_t(1) - p.alpha) * H : H);
    if (prev_spikes && t + 1 < T) prev_spikes[i + N] = from_acc(s);
  }
  carry_v[tid] = cv;
  if (adapt) carry_w[tid] = cw;
  if (grad_params) {  // slot b of P = B
    const index_t PN = partials * N, i = b * N + n;
    grad_params[P_ALPHA * PN + i] += g.alpha;
    grad_params[P_THETA * PN + i] += g.theta;
    grad_params[P_RHO * PN + i] += g.rho;
    grad_params[P_BETA * PN + i] += g.beta;
    grad_params[P_GAMMA * PN + i] += g.gamma;
    grad_params[P_ZETA * PN + i] += g.zeta;
    grad_params[P_ETA * PN + i] += g.eta;
  }
}

// Recurrent forward fused into one launch (DESIGN §5): one block per batch row, one thread per
// neuron (N <= 1024, blockDim.x >= N). The spikes of step t-1 live in shared memory; each thread
// sums its recurrent input M a_{t-1} = sum_j a_{t-1}[j] M[n, j] over the neurons j that spiked, in
// ascending j (event-driven: the cost is the spike count times N, not N^2). weight_t is M
// transposed, (N, N) row-major: weight_t[j N + n] = M[n, j], so a warp reads contiguous memory.
// a_state (B, N): spikes before step t_begin in, spikes of step t_end - 1 out. The CPU driver
// sums in the same order, so both give the same bits; torch's matrix product (the reference)
// may round differently. Other arguments as exodus_adaptive_forward.
#define EXODUS_MAX_RECURRENT_NEURONS 1024

extern "C" __global__ void exodus_adaptive_recurrent_forward(
    const scalar_t* __restrict__ x, const acc_t* __restrict__ weight_t, acc_t* __restrict__ a_state,
    const acc_t* __restrict__ params, acc_t* __restrict__ v_state, acc_t* __restrict__ w_state,
    scalar_t* __restrict__ spikes, scalar_t* __restrict__ v_out, scalar_t* __restrict__ w_out,
    acc_t* __restrict__ h_save, acc_t* __restrict__ w_save, index_t B, index_t T, index_t N, index_t t_begin,
    index_t t_end, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input, int adaptive) {
  __shared__ acc_t previous[EXODUS_MAX_RECURRENT_NEURONS];
  const index_t b = blockIdx.x, n = threadIdx.x;
  const bool active = b < B && n < N;  // every thread of the block reaches the barriers
  LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, 0, 0, acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  AdaptiveParams p = {acc_t(0), acc_t(1), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  acc_t v = acc_t(0), w = acc_t(0);
  if (active) {
    p = load_adaptive_params(params, N, n);
    v = v_state[b * N + n];
    w = adaptive ? w_state[b * N + n] : acc_t(0);
    previous[n] = a_state[b * N + n];
  }
  __syncthreads();
  for (index_t t = t_begin; t < t_end; ++t) {
    acc_t rec = acc_t(0), s = acc_t(0);
    if (active) {
      for (index_t j = 0; j < N; ++j) {
        const acc_t a = previous[j];
        if (a != acc_t(0)) rec += a * weight_t[j * N + n];
      }
    }
    __syncthreads();  // all reads of a_{t-1} done before a_t is written
    if (active) {
      const index_t i = (b * T + t) * N + n;
      h_save[i] = adaptive_forward_step(c, adaptive != 0, to_acc(x[i]) + rec, p, v, w, s);
      spikes[i] = from_acc(s);
      if (v_out) v_out[i] = from_acc(v);
      if (adaptive) {
        w_save[i] = w;
        if (w_out) w_out[i] = from_acc(w);
      }
      previous[n] = s;
    }
    __syncthreads();
  }
  if (active) {
    v_state[b * N + n] = v;
    if (adaptive) w_state[b * N + n] = w;
    a_state[b * N + n] = previous[n];
  }
}

// Sparse reverse scan of a LIF layer over its active points only (DESIGN.md §6). One block per
// batch row b; the points of row b are in CSR order over (b, t) rows: point i in
// [row_ptr[b T + t], row_ptr[b T + t + 1]) is neuron col[i] at step t, with its saved h, q (v_{t-1}
// filtered by alpha) and y (x filtered by alpha; norm_input only, else null). grad_spikes is the
// dense (B, T, N) gradient (null: none). lambda_state / t_state (B, N): the last visited lambda and
// its step (scratch). Writes e (nnz); grad_v0 (B, N); per-(b, n) partial sums grad_alpha / grad_theta
// (null: not needed). The threads of a block take the points of one step together (distinct
// neurons), then synchronise before the step below.
extern "C" __global__ void exodus_lif_sparse_backward(
    const index_t* __restrict__ row_ptr, const index_t* __restrict__ col, const acc_t* __restrict__ h,
    const acc_t* __restrict__ q, const acc_t* __restrict__ y, const scalar_t* __restrict__ grad_spikes,
    const acc_t* __restrict__ alpha, const acc_t* __restrict__ theta, acc_t* __restrict__ lambda_state,
    index_t* __restrict__ t_state, acc_t* __restrict__ e_out, acc_t* __restrict__ grad_v0,
    acc_t* __restrict__ grad_alpha, acc_t* __restrict__ grad_theta, const acc_t* __restrict__ grad_points,
    const acc_t* __restrict__ weight_t, const index_t* __restrict__ in_row_ptr, const index_t* __restrict__ in_col,
    acc_t* __restrict__ lambda_row, acc_t* __restrict__ grad_in, index_t B, index_t T, index_t N, index_t N_in,
    acc_t gain, int reset, int max_spikes, int has_vmin, acc_t v_min, int norm_input, int gradient, int surrogate,
    acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band) {
  (void)N_in;  // the rows of weight_t are N long; N_in is part of the shared CPU / GPU signature
  const index_t b = blockIdx.x;
  if (b >= B) return;
  const LifConfig c = {reset, max_spikes, has_vmin, norm_input, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  for (index_t n = threadIdx.x; n < N; n += blockDim.x) {
    lambda_state[b * N + n] = acc_t(0);
    t_state[b * N + n] = T;
    if (grad_alpha) grad_alpha[b * N + n] = acc_t(0);
    if (grad_theta) grad_theta[b * N + n] = acc_t(0);
    if (grad_in) lambda_row[b * N + n] = acc_t(0);
  }
  __syncthreads();
  for (index_t t = T - 1; t >= 0; --t) {
    const index_t row = b * T + t;
    if (grad_in) {  // lambda_row: lambda_t of every neuron (decayed; the points below overwrite theirs)
      for (index_t n = threadIdx.x; n < N; n += blockDim.x) lambda_row[b * N + n] *= alpha[n];
      __syncthreads();
    }
    for (index_t i = row_ptr[row] + threadIdx.x; i < row_ptr[row + 1]; i += blockDim.x) {
      const index_t n = col[i], s = b * N + n;
      const acc_t a_n = alpha[n];
      const acc_t after = t_state[s] < T ? decay_over(a_n, t_state[s] - t - 1) * lambda_state[s] : acc_t(0);
      const acc_t ga = grad_points ? grad_points[i] : grad_spikes ? to_acc(grad_spikes[row * N + n]) : acc_t(0);
      acc_t g_theta = acc_t(0), e = acc_t(0);
      lambda_state[s] = lif_sparse_point_step(c, h[i], ga, after, a_n, theta[n], g_theta, e);
      t_state[s] = t;
      e_out[i] = e;
      if (grad_theta) grad_theta[s] += g_theta;
      if (grad_alpha) grad_alpha[s] += e * (norm_input ? q[i] - y[i] : q[i]);
      if (grad_in) lambda_row[s] = lambda_state[s];
    }
    __syncthreads();
    if (grad_in) {  // dL/ds_t = gain W^T lambda_t, only at the input's own active points (in_row_ptr, in_col)
      for (index_t i = in_row_ptr[row] + threadIdx.x; i < in_row_ptr[row + 1]; i += blockDim.x) {
        const acc_t* w_j = weight_t + in_col[i] * N;
        acc_t sum = acc_t(0);
        for (index_t n = 0; n < N; ++n) sum += w_j[n] * lambda_row[b * N + n];
        grad_in[i] = gain * sum;
      }
      __syncthreads();
    }
  }
  // dL/dv0 = alpha lambda_0, and lambda_0 = alpha^k lambda_k for the first active point k.
  for (index_t n = threadIdx.x; n < N; n += blockDim.x) {
    const index_t s = b * N + n;
    grad_v0[s] = t_state[s] < T ? decay_over(alpha[n], t_state[s] + 1) * lambda_state[s] : acc_t(0);
  }
}

// mask (B, T, N) = 1 where a neuron-step is an active point of the sparse scan (lif_active_point).
extern "C" __global__ void exodus_lif_sparse_active(
    const acc_t* __restrict__ h, const acc_t* __restrict__ theta, unsigned char* __restrict__ mask, index_t B,
    index_t T, index_t N, int reset, int max_spikes, int has_vmin, acc_t v_min, int gradient, int surrogate,
    acc_t grad_scale, acc_t p0, acc_t p1, acc_t p2, acc_t band, int with_theta) {
  const index_t i = EXODUS_THREAD_INDEX;
  if (i >= B * T * N) return;
  const LifConfig c = {reset, max_spikes, has_vmin, 0, v_min, gradient, surrogate, grad_scale, p0, p1, p2, band};
  mask[i] = lif_active_point(c, h[i], theta[i % N], with_theta != 0) ? 1 : 0;
}
