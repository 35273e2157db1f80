// exodus — per-neuron, per-time-step rules of the two-state adaptive neuron (ALIF / adLIF).
//
// The single source of DESIGN.md §4 (and the per-neuron part of §5): the GPU drivers
// (kernels.cu) and the CPU drivers (cpu_adaptive.cpp) only loop over these functions; the
// plain-PyTorch twin (the oracle) is exodus/reference.py:adaptive_lif_ref.
//
// State v = v_{t-1}, w = w_{t-1}; parameters alpha, theta, rho and the couplings beta
// (threshold), gamma (current), zeta (membrane -> w), eta (spike -> w); c = 1 - alpha with
// norm_input, else 1. x is the layer's input at t plus the recurrent input M a_{t-1} (§5).
//   theta_t = theta + beta w_{t-1}
//   u_t     = c (x_t - gamma w_{t-1})
//   h_t     = alpha v_{t-1} + u_t
//   a_t     = S(h_t; theta_t),  r_t = reset(h_t, theta_t, a_t),  v_t = max(r_t, v_min)
//   w_t     = rho w_{t-1} + zeta h_t + eta a_t
// With `adaptive` false, w is never touched and the step is neuron.cuh's lif_forward_step
// exactly (same operations, same rounding).
//
// Exact reverse scan (DESIGN §4). V_t = dL/dv_t and W_t = dL/dw_t; what step t+1 hands back
// is carried in two numbers per neuron (both zero after the last step):
//   carry_v = alpha H_{t+1},   carry_w = rho W_{t+1} + beta Theta_{t+1} - c gamma H_{t+1}
// and step t computes
//   V_t = gv_t + carry_v,  W_t = gw_t + carry_w,  A_t = ga_t + eta W_t   (ga includes M^T c H_{t+1})
//   H_t     = A_t sigma_t + kappa_t rho^r_t V_t + zeta W_t                       dL/dh_t
//   Theta_t = -A_t sigma_t + kappa_t V_t dr_t/dtheta_t                           dL/dtheta_t
// dL/dx_t = c H_t; after step 0 the carries are dL/dv0 and dL/dw0.
#pragma once
#include "neuron.cuh"

// Per-neuron parameters, packed (7, N) in the kernels' parameter array in this order.
enum AdaptiveParam { P_ALPHA = 0, P_THETA, P_RHO, P_BETA, P_GAMMA, P_ZETA, P_ETA, NUM_ADAPTIVE_PARAMS };

struct AdaptiveParams {
  acc_t alpha, theta, rho, beta, gamma, zeta, eta;
};

// Parameters of neuron n from the packed (7, N) array.
EXODUS_HD AdaptiveParams load_adaptive_params(const acc_t* params, index_t N, index_t n) {
  return {params[P_ALPHA * N + n], params[P_THETA * N + n], params[P_RHO * N + n], params[P_BETA * N + n],
          params[P_GAMMA * N + n], params[P_ZETA * N + n], params[P_ETA * N + n]};
}

// Gradient partials of one neuron in the same order.
struct AdaptiveGrads {
  acc_t alpha = acc_t(0), theta = acc_t(0), rho = acc_t(0), beta = acc_t(0), gamma = acc_t(0),
        zeta = acc_t(0), eta = acc_t(0);
};

// theta_t: the threshold after adaptation (may be <= 0 for beta < 0: never clamped, see docs/api.md).
EXODUS_HD acc_t adaptive_threshold(const AdaptiveParams& p, acc_t w_prev, bool adaptive) {
  return adaptive ? p.theta + p.beta * w_prev : p.theta;
}

// w_t = rho w_{t-1} + zeta h_t + eta a_t: the forward's update of w.
EXODUS_HD acc_t adaptive_w_update(const AdaptiveParams& p, acc_t w_prev, acc_t h, acc_t a) {
  return p.rho * w_prev + p.zeta * h + p.eta * a;
}

// w_t from w_{t-1} and h_t alone (a_t recomputed from h_t and theta_t): the same operations as the
// forward, so a backward that keeps only checkpoints of w rebuilds every w_t bit for bit.
EXODUS_HD acc_t adaptive_w_from_h(const LifConfig& c, const AdaptiveParams& p, acc_t w_prev, acc_t h) {
  return adaptive_w_update(p, w_prev, h, spike_count(h, adaptive_threshold(p, w_prev, true), c.max_spikes));
}

// One forward step. v, w hold v_{t-1}, w_{t-1} on entry and v_t, w_t on exit; returns h_t and
// writes a_t to `spikes`.
EXODUS_HD acc_t adaptive_forward_step(const LifConfig& c, bool adaptive, acc_t x, const AdaptiveParams& p,
                                      acc_t& v, acc_t& w, acc_t& spikes) {
  const acc_t theta_t = adaptive_threshold(p, w, adaptive);
  const acc_t drive = adaptive ? x - p.gamma * w : x;
  const acc_t h = p.alpha * v + input_current(drive, p.alpha, c.norm_input);
  spikes = spike_count(h, theta_t, c.max_spikes);
  v = bound_membrane(reset_membrane(h, theta_t, spikes, c.reset), c.has_vmin, c.v_min);
  if (adaptive) w = adaptive_w_update(p, w, h, spikes);
  return h;
}

// One step of the reverse scan (see the header). h = h_t, v_prev = v_{t-1}, w_prev = w_{t-1};
// grad_spikes already includes the recurrent term M^T c H_{t+1}. Updates the carries, writes
// the recomputed a_t to `spikes`, accumulates the parameter gradients into `grads` when
// `need_grads`, and returns H_t. (A flag, not a nullable pointer: the GPU kernel keeps `grads` in
// registers only if its address is never taken.)
EXODUS_HD acc_t adaptive_backward_step(const LifConfig& c, bool adaptive, acc_t h, acc_t v_prev, acc_t w_prev,
                                       acc_t grad_spikes, acc_t grad_v, acc_t grad_w, const AdaptiveParams& p,
                                       acc_t& carry_v, acc_t& carry_w, acc_t& spikes, bool need_grads,
                                       AdaptiveGrads& grads) {
  const acc_t theta_t = adaptive_threshold(p, w_prev, adaptive);
  acc_t sigma = banded_sigma(c.surrogate, h, theta_t, c.p0, c.p1, c.p2, c.band);
  if (c.gradient == GRADIENT_SLAYER) sigma *= c.grad_scale;
  const acc_t a = spike_count(h, theta_t, c.max_spikes);
  const acc_t r = reset_membrane(h, theta_t, a, c.reset);
  const bool kappa = !c.has_vmin || r > c.v_min;  // a select, not a factor: 0 * NaN must stay 0
  const acc_t no_spike = a > acc_t(0) ? acc_t(0) : acc_t(1);
  const acc_t V = grad_v + carry_v;
  const acc_t W = adaptive ? grad_w + carry_w : acc_t(0);
  const acc_t A = adaptive ? grad_spikes + p.eta * W : grad_spikes;

  acc_t rho_r, dr_dtheta;
  reset_derivatives(c, h, theta_t, sigma, a, no_spike, rho_r, dr_dtheta);  // neuron.cuh, as for LIF
  acc_t H = A * sigma + (kappa ? rho_r * V : acc_t(0));
  if (adaptive) H += p.zeta * W;
  const acc_t Theta = (kappa ? V * dr_dtheta : acc_t(0)) - A * sigma;
  const acc_t gain = c.norm_input ? acc_t(1) - p.alpha : acc_t(1);

  if (need_grads) {
    grads.theta += Theta;
    grads.alpha += H * v_prev;
    // d c / d alpha = -1 with norm_input: the drive x_t - gamma w_{t-1} recovered from h and v_{t-1}
    if (c.norm_input) grads.alpha -= H * input_from_membranes(h, v_prev, p.alpha);
    if (adaptive) {
      grads.rho += W * w_prev;
      grads.zeta += W * h;
      grads.eta += W * a;
      grads.gamma -= gain * H * w_prev;
      grads.beta += Theta * w_prev;
    }
  }
  carry_v = p.alpha * H;
  carry_w = adaptive ? p.rho * W + p.beta * Theta - gain * p.gamma * H : acc_t(0);
  spikes = a;
  return H;
}
