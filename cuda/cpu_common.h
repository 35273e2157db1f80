// exodus — helpers shared by the CPU drivers (cpu_drivers.cpp, cpu_adaptive.cpp): streaming
// stores for outputs larger than the caches, the (batch x neuron-tile) work split over OpenMP
// threads, and compile-time dispatch of runtime option codes.
#pragma once
#include <cmath>
#if defined(EXODUS_LIBMVEC)
// Let the vectoriser call glibc's vector math (libmvec) for the double builds' exp (the float
// builds inline the surrogates' exp, surrogates.cuh); results differ from scalar exp by at most a
// few ulp (backward pass only, see docs/math.md).
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
}
#endif
#include "common.cuh"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace exodus_cpu {

// ---- streaming stores -------------------------------------------------------------------
// Outputs much larger than the caches are written with non-temporal stores: the cache lines
// are not read from memory first (no read-for-ownership) and do not evict the inputs. Measured
// on an AVX-512 Xeon: a forward-like loop writing two 32 MiB streams ran 1.9x faster. Below
// kStreamingBytes per output the rows are written in place (they are read again while cached).
constexpr index_t kStreamingBytes = index_t(16) << 20;

bool use_streaming(index_t elements, size_t element_bytes) {
#if defined(__SSE2__)
  return elements * index_t(element_bytes) >= kStreamingBytes;
#else
  (void)elements; (void)element_bytes;
  return false;
#endif
}

#if defined(__AVX512F__)
constexpr uintptr_t kStreamAlign = 64;
inline void stream_vector(float* dst, const float* src) { _mm512_stream_ps(dst, _mm512_loadu_ps(src)); }
inline void stream_vector(double* dst, const double* src) { _mm512_stream_pd(dst, _mm512_loadu_pd(src)); }
#elif defined(__AVX__)
constexpr uintptr_t kStreamAlign = 32;
inline void stream_vector(float* dst, const float* src) { _mm256_stream_ps(dst, _mm256_loadu_ps(src)); }
inline void stream_vector(double* dst, const double* src) { _mm256_stream_pd(dst, _mm256_loadu_pd(src)); }
#elif defined(__SSE2__)
constexpr uintptr_t kStreamAlign = 16;
inline void stream_vector(float* dst, const float* src) { _mm_stream_ps(dst, _mm_loadu_ps(src)); }
inline void stream_vector(double* dst, const double* src) { _mm_stream_pd(dst, _mm_loadu_pd(src)); }
#endif

// dst[0, len) = src[0, len): non-temporal stores for the aligned middle, plain ones at the edges.
template <typename T>
void stream_row(T* dst, const T* src, index_t len) {
  index_t k = 0;
#if defined(__SSE2__)
  constexpr index_t width = index_t(kStreamAlign / sizeof(T));
  for (; k < len && reinterpret_cast<uintptr_t>(dst + k) % kStreamAlign != 0; ++k) dst[k] = src[k];
  for (; k + width <= len; k += width) stream_vector(dst + k, src + k);
#endif
  for (; k < len; ++k) dst[k] = src[k];
}

// Non-temporal stores are weakly ordered: fence them before the work item ends.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// sum_k a[k] b[k]: four vector accumulators (independent add chains) and one tree reduction of
// the lanes (an `omp simd reduction` compiled to a stack store and 16 serial scalar adds, about
// half of the sparse scan's dot products). The summation order differs from a serial loop's.
#if defined(__AVX512F__)
// Lane sums, written out with the masked extracts (GCC 12 reports the unmasked ones and its
// reduce-add intrinsics, which pass an undefined vector, as maybe-uninitialized).
inline __m256d half_of(__m512d v, int upper) {
  return upper ? _mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, v, 1)
               : _mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xF, v, 0);
}
inline float hsum(__m512 v) {
  const __m512d d = _mm512_castps_pd(v);
  const __m256 h = _mm256_add_ps(_mm256_castpd_ps(half_of(d, 0)), _mm256_castpd_ps(half_of(d, 1)));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}
inline double hsum(__m512d v) {
  const __m256d h = _mm256_add_pd(half_of(v, 0), half_of(v, 1));
  const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
  return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
// One 512-bit vector of T: lanes, load, a += x y (multiply, then add: no fma contraction, as the
// build's -ffp-contract=off), lane sum.
template <typename T> struct Vec512;
template <> struct Vec512<float> {
  using V = __m512;
  static constexpr index_t lanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V add_product(V acc, V x, V y) { return _mm512_add_ps(acc, _mm512_mul_ps(x, y)); }
  static V add(V x, V y) { return _mm512_add_ps(x, y); }
};
template <> struct Vec512<double> {
  using V = __m512d;
  static constexpr index_t lanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V add_product(V acc, V x, V y) { return _mm512_add_pd(acc, _mm512_mul_pd(x, y)); }
  static V add(V x, V y) { return _mm512_add_pd(x, y); }
};
template <typename T>
inline T dot(const T* a, const T* b, index_t n) {
  using S = Vec512<T>;
  constexpr index_t L = S::lanes;
  typename S::V s0 = S::zero(), s1 = s0, s2 = s0, s3 = s0;
  index_t k = 0;
  for (; k + 4 * L <= n; k += 4 * L) {
    s0 = S::add_product(s0, S::load(a + k), S::load(b + k));
    s1 = S::add_product(s1, S::load(a + k + L), S::load(b + k + L));
    s2 = S::add_product(s2, S::load(a + k + 2 * L), S::load(b + k + 2 * L));
    s3 = S::add_product(s3, S::load(a + k + 3 * L), S::load(b + k + 3 * L));
  }
  for (; k + L <= n; k += L) s0 = S::add_product(s0, S::load(a + k), S::load(b + k));
  T sum = hsum(S::add(S::add(s0, s1), S::add(s2, s3)));
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}
// out[r] = sum_k a[r][k] b[k] for four rows a[0..3]: b is loaded once for all four (1.25 loads per
// multiply-add instead of 2), and the four rows' loads overlap.
template <typename T>
inline void dot4(const T* const a[4], const T* b, index_t n, T out[4]) {
  using S = Vec512<T>;
  typename S::V s0 = S::zero(), s1 = s0, s2 = s0, s3 = s0;
  index_t k = 0;
  for (; k + S::lanes <= n; k += S::lanes) {
    const typename S::V v = S::load(b + k);
    s0 = S::add_product(s0, S::load(a[0] + k), v);
    s1 = S::add_product(s1, S::load(a[1] + k), v);
    s2 = S::add_product(s2, S::load(a[2] + k), v);
    s3 = S::add_product(s3, S::load(a[3] + k), v);
  }
  out[0] = hsum(s0), out[1] = hsum(s1), out[2] = hsum(s2), out[3] = hsum(s3);
  for (; k < n; ++k)
    for (int r = 0; r < 4; ++r) out[r] += a[r][k] * b[k];
}
#else
template <typename T>
inline T dot(const T* a, const T* b, index_t n) {
  constexpr int L = 16;  // lanes of partial sums, reduced as a tree
  T part[L] = {};
  index_t k = 0;
  for (; k + L <= n; k += L)
#pragma omp simd
    for (int l = 0; l < L; ++l) part[l] += a[k + l] * b[k + l];
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  T sum = part[0];
  for (; k < n; ++k) sum += a[k] * b[k];
  return sum;
}
template <typename T>
inline void dot4(const T* const a[4], const T* b, index_t n, T out[4]) {
  for (int r = 0; r < 4; ++r) out[r] = dot(a[r], b, n);
}
#endif

// Where one output row of a time step goes: straight to the tensor, or (streaming) to a small
// buffer that stays in L1 and is then streamed out.
template <typename T>
struct RowSink {
  bool streaming;
  std::vector<T> buffer;
  RowSink(bool streaming_, index_t len) : streaming(streaming_), buffer(streaming_ ? len : 0) {}
  T* row(T* out) { return streaming ? buffer.data() : out; }
  void flush(T* out, index_t len) {
    if (streaming) stream_row(out, buffer.data(), len);
  }
};

// Reverse-time scans read row t-1 of each (B, T, N) stream after row t: one page lower per step
// for N = 1024 floats, a pattern the hardware stream prefetchers re-learn at every page, so the
// first lines of each row missed (measured: the reverse LIF backward loop ran 0.79x slower than
// the same loop over ascending rows). Prefetching the first kRowStartLines lines of the next row
// lets the prefetchers take over from there (0.83x the loop's time; whole rows, or two rows ahead,
// were no better).
constexpr index_t kRowStartLines = 8;
template <typename T>
inline void prefetch_row_start(const T* row, index_t len) {
  const index_t lines = std::min<index_t>(kRowStartLines, (len * index_t(sizeof(T)) + 63) / 64);
  for (index_t l = 0; l < lines; ++l) __builtin_prefetch(reinterpret_cast<const char*>(row) + 64 * l);
}

template <typename F>
void with_bool(bool value, F&& f) {
  if (value) f(std::true_type{}); else f(std::false_type{});
}

// Splits the (batch, neuron) plane into work items of whole batch rows when there are
// enough rows (then every time step reads and writes one contiguous row, a purely
// sequential stream), else into neuron tiles so that every thread has work.
// body(b, n0, len) runs the whole time loop for neurons [n0, n0 + len) of batch b.
// Below this many neuron-steps a parallel region costs more than it saves.
constexpr index_t kMinParallelWork = 1 << 15;

// Drivers that sum into per-thread partial slots: at most one thread per slot (the caller
// allocated `partials` of them), one thread for less than kMinParallelWork of work.
inline int partial_sum_threads(int requested, index_t partials, index_t work) {
  if (work < kMinParallelWork) return 1;
  return static_cast<int>(std::min<index_t>(std::max(requested, 1), std::max<index_t>(partials, 1)));
}

// The partial slot of the calling thread: its OpenMP thread number, 0 outside a parallel region.
inline index_t partial_slot() {
#if defined(_OPENMP)
  return omp_in_parallel() ? omp_get_thread_num() : 0;
#else
  return 0;
#endif
}

template <typename Body>
void for_each_tile(index_t B, index_t T, index_t N, int num_threads, Body body) {
  if (num_threads < 1 || B * T * N < kMinParallelWork) num_threads = 1;
  index_t tiles_per_row = B >= 2 * num_threads ? 1 : (2 * num_threads + B - 1) / std::max<index_t>(B, 1);
  tiles_per_row = std::max<index_t>(1, std::min(tiles_per_row, (N + 15) / 16));
  const index_t tile = ((N + tiles_per_row - 1) / tiles_per_row + 15) / 16 * 16;
  tiles_per_row = (N + tile - 1) / tile;
  const index_t items = B * tiles_per_row;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (items > 1 && num_threads > 1)
  for (index_t item = 0; item < items; ++item) {
    const index_t b = item / tiles_per_row;
    const index_t n0 = (item - b * tiles_per_row) * tile;
    body(b, n0, std::min(tile, N - n0));
  }
}

// Scratch rows of a work item, reused across calls (per thread, grown as needed, never freed):
// a recurrent layer calls the drivers once per time step, where a heap allocation per row and
// work item would cost more than the step itself. SLOT tells apart buffers of one work item.
template <typename T, int SLOT>
T* scratch_rows(index_t count) {
  static thread_local std::vector<T> buffer;
  if (buffer.size() < static_cast<size_t>(count)) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

// Calls f(std::integral_constant<int, kind>{}) for a surrogate kind (one instantiation per kind).
template <int KIND, typename F>
void with_kind_from(int kind, F&& f) {
  if constexpr (KIND <= SURROGATE_ATAN) {
    if (kind == KIND) f(std::integral_constant<int, KIND>{});
    else with_kind_from<KIND + 1>(kind, f);
  }
}

}  // namespace exodus_cpu
