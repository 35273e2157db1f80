// exodus — per-neuron, per-time-step rules of the LIF / IAF / ExpLeak neurons.
//
// These __host__ __device__ functions are the single source of the neuron math
// (DESIGN.md §1 and §2); the GPU drivers (kernels.cu) and the CPU drivers
// (cpu_drivers.cpp) only loop over them. The plain-PyTorch twin used as the
// oracle is exodus/reference.py.
//
// Forward (DESIGN §1), per neuron, state v = v_{t-1}:
//   u_t = x_t,  or (1 - alpha) x_t with norm_input
//   h_t = alpha v_{t-1} + u_t                                   pre-reset membrane
//   a_t = 1[h_t >= theta] * min(floor(h_t / theta), m)          (m = 1: single spike)
//   r_t = h_t - theta a_t  (subtract)  |  h_t (1 - 1[a_t > 0])  (zero)
//   v_t = max(r_t, v_min)                                       (with v_min)
//
// Exact backward (DESIGN §2), one reverse scan with lambda_T = 0:
//   mu_t     = gv_t + alpha lambda_{t+1}                         dL/dv_t
//   lambda_t = ga_t sigma_t + kappa_t rho_t mu_t                 dL/dh_t
// with kappa_t = 1[r_t > v_min], rho_t = dr_t/dh_t; and the parameter sums
//   dL/dalpha += lambda_t v_{t-1}  (- lambda_t x_t with norm_input)
//   dL/dtheta += -ga_t sigma_t + kappa_t mu_t dr_t/dtheta.
// SLAYER mode detaches the reset (rho = 1 | 1 - 1[a>0], dr/dtheta = -a | 0) and scales sigma.
#pragma once
#include "common.cuh"
#include "surrogates.cuh"

struct LifConfig {
  int reset;        // ResetMode
  int max_spikes;   // 1: single spike per bin, k > 1: at most k, 0: unlimited
  int has_vmin;     // lower bound on the post-reset membrane
  int norm_input;   // u = (1 - alpha) x
  acc_t v_min;
  int gradient;     // GradientMode (backward only)
  int surrogate;    // SurrogateKind (backward only)
  acc_t grad_scale; // SLAYER mode only
  acc_t p0, p1, p2; // surrogate parameters (see surrogates.cuh)
  acc_t band;       // surrogate truncation band (0: none)
};

EXODUS_HD acc_t input_current(acc_t x, acc_t alpha, int norm_input) {
  return norm_input ? (acc_t(1) - alpha) * x : x;
}

// a_t = S(h_t): number of spikes emitted in the bin.
EXODUS_HD acc_t spike_count(acc_t h, acc_t theta, int max_spikes) {
  if (max_spikes == 1) return h >= theta ? acc_t(1) : acc_t(0);
  acc_t count = EXODUS_MATH(floor)(h / theta);
  if (max_spikes > 1 && count > acc_t(max_spikes)) count = acc_t(max_spikes);
  return h >= theta ? count : acc_t(0);
}

// r_t: membrane after the reset.
// Zero reset is written h * (1 - 1[a > 0]) as in DESIGN §1 (so h = inf gives NaN, as in the reference).
EXODUS_HD acc_t reset_membrane(acc_t h, acc_t theta, acc_t a, int reset) {
  return reset == RESET_SUBTRACT ? h - theta * a : h * (acc_t(1) - (a > acc_t(0) ? acc_t(1) : acc_t(0)));
}

// v_t = max(r_t, v_min); a NaN membrane stays NaN.
EXODUS_HD acc_t bound_membrane(acc_t r, int has_vmin, acc_t v_min) {
  return (has_vmin && r <= v_min) ? v_min : r;
}

// Post-reset membrane v_t as a function of the saved pre-reset membrane h_t.
EXODUS_HD acc_t membrane_from_h(const LifConfig& c, acc_t h, acc_t theta) {
  const acc_t a = spike_count(h, theta, c.max_spikes);
  return bound_membrane(reset_membrane(h, theta, a, c.reset), c.has_vmin, c.v_min);
}

// One forward step. `v` holds v_{t-1} on entry and v_t on exit; returns h_t, writes a_t.
EXODUS_HD acc_t lif_forward_step(const LifConfig& c, acc_t x, acc_t alpha, acc_t theta, acc_t& v,
                                 acc_t& spikes) {
  const acc_t h = alpha * v + input_current(x, alpha, c.norm_input);
  spikes = spike_count(h, theta, c.max_spikes);
  v = bound_membrane(reset_membrane(h, theta, spikes, c.reset), c.has_vmin, c.v_min);
  return h;
}

// Input x_t recovered from the saved h_t and v_{t-1} (needed for dL/dalpha with norm_input only).
EXODUS_HD acc_t input_from_membranes(acc_t h, acc_t v_prev, acc_t alpha) {
  const acc_t gain = acc_t(1) - alpha;
  return gain != acc_t(0) ? (h - alpha * v_prev) / gain : acc_t(0);
}

// rho = dr_t/dh_t and dr_t/dtheta of the reset (DESIGN §2), sigma the (scaled) surrogate; SLAYER mode
// detaches the reset (rho = 1 | 1 - 1[a > 0], dr/dtheta = -a | 0).
EXODUS_HD void reset_derivatives(const LifConfig& c, acc_t h, acc_t theta, acc_t sigma, acc_t a, acc_t no_spike,
                                 acc_t& rho, acc_t& dr_dtheta) {
  if (c.gradient == GRADIENT_EXODUS) {
    rho = c.reset == RESET_SUBTRACT ? acc_t(1) - theta * sigma : no_spike - h * sigma;
    dr_dtheta = c.reset == RESET_SUBTRACT ? theta * sigma - a : h * sigma;
  } else {  // SLAYER: the reset is detached
    rho = c.reset == RESET_SUBTRACT ? acc_t(1) : no_spike;
    dr_dtheta = c.reset == RESET_SUBTRACT ? -a : acc_t(0);
  }
}

// One step of the reverse scan. Returns lambda_t = dL/dh_t given lambda_{t+1};
// accumulates dL/dalpha and dL/dtheta for this neuron. `s`: the neuron's surrogate constants
// (surrogate_neuron of its theta), computed once per scan by the drivers.
EXODUS_HD acc_t lif_backward_step_at(const LifConfig& c, const SurrogateNeuron& s, acc_t h, acc_t v_prev,
                                     acc_t grad_spikes, acc_t grad_v, acc_t lambda_next, acc_t alpha,
                                     acc_t& grad_alpha, acc_t& grad_theta) {
  const acc_t theta = s.theta;
  acc_t sigma = neuron_banded_sigma(c.surrogate, s, h, c.p0, c.p1, c.p2, c.band);
  if (c.gradient == GRADIENT_SLAYER) sigma *= c.grad_scale;
  const acc_t a = spike_count(h, theta, c.max_spikes);
  const acc_t r = reset_membrane(h, theta, a, c.reset);
  const bool kappa = !c.has_vmin || r > c.v_min;  // a select, not a factor: 0 * NaN must stay 0
  const acc_t no_spike = a > acc_t(0) ? acc_t(0) : acc_t(1);
  const acc_t mu = grad_v + alpha * lambda_next;
  acc_t rho, dr_dtheta;
  reset_derivatives(c, h, theta, sigma, a, no_spike, rho, dr_dtheta);
  const acc_t lambda = grad_spikes * sigma + (kappa ? rho * mu : acc_t(0));
  grad_theta += (kappa ? mu * dr_dtheta : acc_t(0)) - grad_spikes * sigma;
  grad_alpha += lambda * v_prev;
  grad_alpha -= c.norm_input ? lambda * input_from_membranes(h, v_prev, alpha) : acc_t(0);
  return lambda;
}

EXODUS_HD acc_t lif_backward_step(const LifConfig& c, acc_t h, acc_t v_prev, acc_t grad_spikes,
                                  acc_t grad_v, acc_t lambda_next, acc_t alpha, acc_t theta,
                                  acc_t& grad_alpha, acc_t& grad_theta) {
  return lif_backward_step_at(c, surrogate_neuron(c.surrogate, theta, c.p0, c.p1, c.band), h, v_prev, grad_spikes,
                              grad_v, lambda_next, alpha, grad_alpha, grad_theta);
}

// ExpLeak / synaptic current: v_t = alpha v_{t-1} + u_t (no spike, no reset).
EXODUS_HD acc_t leaky_forward_step(acc_t x, acc_t alpha, int norm_input, acc_t& v) {
  v = alpha * v + input_current(x, alpha, norm_input);
  return v;
}

// Reverse step of the leaky integrator: lambda_t = gv_t + alpha lambda_{t+1}.
EXODUS_HD acc_t leaky_backward_step(acc_t v, acc_t v_prev, acc_t grad_v, acc_t lambda_next,
                                    acc_t alpha, int norm_input, acc_t& grad_alpha) {
  const acc_t lambda = grad_v + alpha * lambda_next;
  grad_alpha += lambda * v_prev;
  grad_alpha -= norm_input ? lambda * input_from_membranes(v, v_prev, alpha) : acc_t(0);
  return lambda;
}

// Sparse reverse scan (DESIGN.md §6). With a truncated surrogate and no gradient on v, the scan
// between two "active" points of a neuron (sigma != 0, a spike, or a v_min clamp) only decays:
// lambda_t = alpha lambda_{t+1}. This step runs lif_backward_step at one active point t, given
// lambda_after = lambda_{t+1} (= alpha^{k - t - 1} lambda_k for the next active point k), and
// returns lambda_t; e = lambda_t - alpha lambda_{t+1} is the point's contribution to the filtered
// sums  dL/dW = sum e (x) s_hat,  dL/db = sum e c,  dL/dalpha = sum e (q - y)  (s_hat, c, q, y:
// input, ones, v_{t-1} and x filtered by alpha; see the sparse drivers).
// alpha^steps: how lambda decays over `steps` inactive points.
EXODUS_HD acc_t decay_over(acc_t alpha, index_t steps) { return EXODUS_MATH(pow)(alpha, acc_t(steps)); }

// Whether a neuron-step with pre-reset membrane h is an active point of the sparse scan: its
// (banded, scaled) surrogate is nonzero, v_min clamps it (kappa = 0, NaN included), or it spikes and
// the spike matters. With sigma = 0 a spike leaves lambda unchanged under the subtract reset
// (rho = 1); it only adds -mu a to dL/dtheta. So spikes are points for the zero reset (rho = 0
// there) or when dL/dtheta is needed (`with_theta`).
EXODUS_HD bool lif_active_point(const LifConfig& c, acc_t h, acc_t theta, bool with_theta) {
  acc_t sigma = banded_sigma(c.surrogate, h, theta, c.p0, c.p1, c.p2, c.band);
  if (c.gradient == GRADIENT_SLAYER) sigma *= c.grad_scale;
  const acc_t a = spike_count(h, theta, c.max_spikes);
  const bool kappa = !c.has_vmin || reset_membrane(h, theta, a, c.reset) > c.v_min;
  const bool spike_matters = a > acc_t(0) && (with_theta || c.reset == RESET_ZERO);
  return sigma != acc_t(0) || spike_matters || !kappa;
}

EXODUS_HD acc_t lif_sparse_point_step(const LifConfig& c, acc_t h, acc_t grad_spikes, acc_t lambda_after,
                                      acc_t alpha, acc_t theta, acc_t& grad_theta, acc_t& e) {
  acc_t unused_grad_alpha = acc_t(0);  // dL/dalpha comes from the filtered traces instead
  const acc_t lambda = lif_backward_step(c, h, acc_t(0), grad_spikes, acc_t(0), lambda_after, alpha, theta,
                                         unused_grad_alpha, grad_theta);
  e = lambda - alpha * lambda_after;
  return lambda;
}

// Forward-mode (online) step of DESIGN.md §7 at one neuron-step, after lif_forward_step gave h_t:
// the traces of v_t's derivatives, e_alpha = dv/dalpha, e_bias = dv/db, e_theta = dv/dtheta, advance
// from step t-1 to t, and the factor kappa_t rho_t of the weight trace, G_t = kappa rho (alpha G_{t-1} + g s_t),
// is returned (exactly 1 where the surrogate is 0 and no reset / clamp acts: the weight trace then only
// decays). x is the raw input x_t (used with norm_input), gain g = 1 - alpha with norm_input, else 1.
EXODUS_HD acc_t lif_trace_step(const LifConfig& c, acc_t h, acc_t v_prev, acc_t x, acc_t alpha, acc_t theta,
                               acc_t gain, acc_t& e_alpha, acc_t& e_bias, acc_t& e_theta) {
  acc_t sigma = banded_sigma(c.surrogate, h, theta, c.p0, c.p1, c.p2, c.band);
  if (c.gradient == GRADIENT_SLAYER) sigma *= c.grad_scale;
  const acc_t a = spike_count(h, theta, c.max_spikes);
  const acc_t r = reset_membrane(h, theta, a, c.reset);
  const bool kappa = !c.has_vmin || r > c.v_min;
  acc_t rho, dr_dtheta;
  reset_derivatives(c, h, theta, sigma, a, a > acc_t(0) ? acc_t(0) : acc_t(1), rho, dr_dtheta);
  const acc_t factor = kappa ? rho : acc_t(0);
  const acc_t dh_dalpha = v_prev + alpha * e_alpha - (c.norm_input ? x : acc_t(0));
  e_alpha = factor * dh_dalpha;
  e_bias = factor * (alpha * e_bias + gain);
  e_theta = kappa ? rho * alpha * e_theta + dr_dtheta : acc_t(0);
  return factor;
}
