// exodus — shared definitions for the neuron kernels.
//
// This header is compiled three ways:
//   * by NVRTC / nvcc for the GPU (the cupy backend),
//   * by the host C++ compiler for the CPU backend (cpu_drivers.cpp),
//   * by the host C++ compiler together with host_emulation.h, which runs the
//     very same __global__ drivers on the CPU in tests.
//
// Types: `scalar_t` is the storage type of inputs/outputs (float, double, and on
// the GPU exodus_half / exodus_bfloat16); `acc_t` is the type the math runs in (float
// for the half types). Both are chosen by the includer with
//   -DEXODUS_SCALAR=<type> -DEXODUS_ACC=<type>
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define EXODUS_HD __host__ __device__ __forceinline__
#else
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#define EXODUS_HD inline __attribute__((always_inline))
#include <cmath>
#endif

#ifndef EXODUS_SCALAR
#define EXODUS_SCALAR float
#endif
#ifndef EXODUS_ACC
#define EXODUS_ACC float
#endif

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
// 16-bit storage types for the GPU, self-contained so that NVRTC needs no CUDA
// headers. Both round to nearest even, as torch does; the math runs in float.
struct exodus_half {
  unsigned short bits;
  exodus_half() = default;
  __device__ explicit exodus_half(float f) { asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(f)); }
  __device__ explicit operator float() const {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
  }
};
struct exodus_bfloat16 {
  unsigned short bits;
  exodus_bfloat16() = default;
  __device__ explicit exodus_bfloat16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { bits = 0x7fc0; return; }  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    bits = (unsigned short)(u >> 16);
  }
  __device__ explicit operator float() const { return __uint_as_float(((unsigned int)bits) << 16); }
};
#endif

typedef EXODUS_SCALAR scalar_t;
typedef EXODUS_ACC acc_t;
typedef long long index_t;

// Conversions between storage and math types (explicit constructors/operators
// of the 16-bit types above, plain casts otherwise).
// Under CUDA they are device-only (only the __global__ drivers touch storage).
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define EXODUS_STORAGE __device__ __forceinline__
#else
#define EXODUS_STORAGE EXODUS_HD
#endif
EXODUS_STORAGE acc_t to_acc(scalar_t v) { return static_cast<acc_t>(v); }
EXODUS_STORAGE scalar_t from_acc(acc_t v) { return static_cast<scalar_t>(v); }

// Option codes. They are passed to the kernels as runtime integers (uniform over
// the launch, so the branches cost nothing on the GPU; the CPU drivers
// specialise on them so that the inner loop is branch-free).
enum ResetMode { RESET_SUBTRACT = 0, RESET_ZERO = 1 };
enum GradientMode { GRADIENT_EXODUS = 0, GRADIENT_SLAYER = 1 };
enum SurrogateKind {
  SURROGATE_SINGLE_EXPONENTIAL = 0,
  SURROGATE_PERIODIC_EXPONENTIAL = 1,
  SURROGATE_HEAVISIDE = 2,
  SURROGATE_GAUSSIAN = 3,
  SURROGATE_FAST_SIGMOID = 4,
  SURROGATE_ATAN = 5,
};
