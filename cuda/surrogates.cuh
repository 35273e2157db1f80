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

EXODUS_HD acc_t surrogate_sigma(int kind, acc_t h, acc_t theta, acc_t p0, acc_t p1, acc_t p2) {
  const acc_t pi = acc_t(3.14159265358979323846);
  switch (kind) {
    case SURROGATE_SINGLE_EXPONENTIAL: {  // one division per element: the backward's costliest op
      const acc_t inv_width = acc_t(1) / (theta * p0);
      return p1 * inv_width * EXODUS_MATH(exp)(-EXODUS_MATH(fabs)(h - theta) * inv_width);
    }
    case SURROGATE_PERIODIC_EXPONENTIAL: {
      // Distance to the nearest level k theta, k >= 1; rint (not fmod) so that the CPU loops vectorise.
      const acc_t inv_width = acc_t(1) / (theta * p0);
      const acc_t dist = h < theta ? theta - h : EXODUS_MATH(fabs)(h - theta * EXODUS_MATH(nearbyint)(h / theta));
      return p1 * inv_width * EXODUS_MATH(exp)(-dist * inv_width);
    }
    case SURROGATE_HEAVISIDE:
      return h >= theta - p0 ? acc_t(1) / theta : acc_t(0);
    case SURROGATE_GAUSSIAN: {
      const acc_t z = h - theta - p0;
      return p2 / (EXODUS_MATH(sqrt)(acc_t(2) * pi) * p1) * EXODUS_MATH(exp)(-(z * z) / (acc_t(2) * p1 * p1));
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

// The surrogate as the kernels use it: sigma(h; theta), zero outside the band when band > 0.
EXODUS_HD acc_t banded_sigma(int kind, acc_t h, acc_t theta, acc_t p0, acc_t p1, acc_t p2, acc_t band) {
  const acc_t sigma = surrogate_sigma(kind, h, theta, p0, p1, p2);
  return (band > acc_t(0) && !(EXODUS_MATH(fabs)(h - theta) < band * theta)) ? acc_t(0) : sigma;
}
