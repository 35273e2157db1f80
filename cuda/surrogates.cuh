// exodus — surrogate derivatives sigma(h; theta) = d a / d h used in the backward pass.
//
// DESIGN.md §1: in the backward pass  da_t/dh_t := sigma_t  and  da_t/dtheta := -sigma_t.
// Every surrogate is written here once; exodus/surrogate.py holds the plain-PyTorch twin
// of each formula (the oracle) and the parameter packing (p0, p1, p2, band) passed to kernels.
//
//   SingleExponential(w, k):    k/(theta w) * exp(-|h - theta| / (theta w))
//   PeriodicExponential(w, k):  k/(theta w) * exp(-d / (theta w)),  d = distance of h to the
//                               nearest spike level {theta, 2 theta, ...}  (theta - h below theta)
//   Heaviside(window):          1[h >= theta - window] / theta
//   Gaussian(mu, s, k):         k/(sqrt(2 pi) s) * exp(-(h - theta - mu)^2 / (2 s^2))
//   FastSigmoid(slope, k):      k / (1 + slope |h - theta|)^2        (SuperSpike)
//   ATan(a):                    (a/2) / (1 + (pi/2 * a * (h - theta))^2)
//
// Truncated(base, band) (Perez-Nieves & Goodman 2021; DESIGN.md §6): the base surrogate inside
// the band |h - theta| < band * theta and exactly 0 outside (band = 0: no truncation). The zeros
// are what lets the sparse backward skip the inactive neuron-steps.
#pragma once
#include "common.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define EXODUS_MATH(f) f
#else
#define EXODUS_MATH(f) std::f
#endif

// exp of the surrogates' arguments, which are never positive (-|h - theta| / (theta w), -z^2 / (2 s^2))
// or NaN. CPU float builds: an inlined exp, so that the vectorised backward loop makes no call (a
// libmvec call clobbers every vector register: the loop spilled its live values around it). At most
// 1 ulp from the correctly rounded exp over the normal range, gradual underflow below, 0 below -104,
// NaN kept (tests/test_surrogates.py). Double builds and the GPU use the math library's exp.
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <cstdint>
#include <cstring>
EXODUS_HD float exodus_expf_nonpositive(float x) {
  // exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (Cody-Waite, two parts), |r| <= ln2/2;
  // exp(r) by Cephes' degree-6 polynomial. 2^k in two factors so that k down to -150 stays normal
  // until the last product (one rounding into the subnormals). A NaN x stays NaN through r.
  const float xc = x < -104.0f ? -104.0f : x;
  const float shifter = 12582912.0f;  // 1.5 2^23: adding it rounds to an integer
  const float kf = (xc * 1.44269504088896341f + shifter) - shifter;
  float r = xc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = (p * r2 + r) + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);  // NaN: any k (e is NaN)
  const int32_t k1 = k / 2, k2 = k - k1;
  const int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  const float result = (e * s1) * s2;
  return x < -104.0f ? 0.0f : result;
}
EXODUS_HD float exodus_exp(float x) { return exodus_expf_nonpositive(x); }
EXODUS_HD double exodus_exp(double x) { return std::exp(x); }
#define EXODUS_EXP(x) exodus_exp(x)
#else
#define EXODUS_EXP(x) exp(x)
#endif

// Per-neuron constants of the surrogate: theta and the parameters are fixed for a whole scan, so the
// drivers compute these once per neuron and the per-step evaluation needs no division where the
// formula allows it (the products and quotients are the same, so sigma is bit for bit the same).
struct SurrogateNeuron {
  acc_t theta;
  acc_t inv_width;   // 1 / (theta w)  (the exponential kinds)
  acc_t scale;       // k / (theta w)  (exponential kinds), 1 / theta (Heaviside)
  acc_t band_theta;  // band theta: the truncation half-width (band > 0)
};

EXODUS_HD SurrogateNeuron surrogate_neuron(int kind, acc_t theta, acc_t p0, acc_t p1, acc_t band) {
  SurrogateNeuron s = {theta, acc_t(0), acc_t(0), band * theta};
  if (kind == SURROGATE_SINGLE_EXPONENTIAL || kind == SURROGATE_PERIODIC_EXPONENTIAL) {
    s.inv_width = acc_t(1) / (theta * p0);
    s.scale = p1 * s.inv_width;
  } else if (kind == SURROGATE_HEAVISIDE) {
    s.scale = acc_t(1) / theta;
  }
  return s;
}

// sigma(h) of one neuron, untruncated.
EXODUS_HD acc_t neuron_sigma(int kind, const SurrogateNeuron& s, acc_t h, acc_t p0, acc_t p1, acc_t p2) {
  const acc_t pi = acc_t(3.14159265358979323846);
  const acc_t theta = s.theta;
  switch (kind) {
    case SURROGATE_SINGLE_EXPONENTIAL:
      return s.scale * EXODUS_EXP(-EXODUS_MATH(fabs)(h - theta) * s.inv_width);
    case SURROGATE_PERIODIC_EXPONENTIAL: {
      // Distance to the nearest level k theta, k >= 1; rint (not fmod) so that the CPU loops vectorise.
      const acc_t dist = h < theta ? theta - h : EXODUS_MATH(fabs)(h - theta * EXODUS_MATH(nearbyint)(h / theta));
      return s.scale * EXODUS_EXP(-dist * s.inv_width);
    }
    case SURROGATE_HEAVISIDE:
      return h >= theta - p0 ? s.scale : acc_t(0);
    case SURROGATE_GAUSSIAN: {
      const acc_t z = h - theta - p0;
      return p2 / (EXODUS_MATH(sqrt)(acc_t(2) * pi) * p1) * EXODUS_EXP(-(z * z) / (acc_t(2) * p1 * p1));
    }
    case SURROGATE_FAST_SIGMOID: {
      const acc_t d = acc_t(1) + p0 * EXODUS_MATH(fabs)(h - theta);
      return p1 / (d * d);
    }
    case SURROGATE_ATAN: {
      const acc_t z = pi / acc_t(2) * p0 * (h - theta);
      return p0 / acc_t(2) / (acc_t(1) + z * z);
    }
    default:
      return acc_t(0);
  }
}

// The surrogate as the kernels use it: sigma(h) of one neuron, zero outside the band when band > 0.
EXODUS_HD acc_t neuron_banded_sigma(int kind, const SurrogateNeuron& s, acc_t h, acc_t p0, acc_t p1, acc_t p2,
                                    acc_t band) {
  const acc_t sigma = neuron_sigma(kind, s, h, p0, p1, p2);
  return (band > acc_t(0) && !(EXODUS_MATH(fabs)(h - s.theta) < s.band_theta)) ? acc_t(0) : sigma;
}

EXODUS_HD acc_t surrogate_sigma(int kind, acc_t h, acc_t theta, acc_t p0, acc_t p1, acc_t p2) {
  return neuron_sigma(kind, surrogate_neuron(kind, theta, p0, p1, acc_t(0)), h, p0, p1, p2);
}

EXODUS_HD acc_t banded_sigma(int kind, acc_t h, acc_t theta, acc_t p0, acc_t p1, acc_t p2, acc_t band) {
  return neuron_banded_sigma(kind, surrogate_neuron(kind, theta, p0, p1, band), h, p0, p1, p2, band);
}
