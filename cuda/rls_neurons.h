// exodus.rls — the math of the FORCE-trained E/I LIF network (DESIGN.md §9), written once as
// inline functions: the compiled simulation loop (cpu_rls.cpp) calls them, and
// exodus/rls/reference.py spells out the same expressions in the same order (the tests compare
// the two bit for bit in float64 and float32).
//
// Units: time in ms, currents and voltages in units of the threshold distance.
#pragma once
#include <cstdint>

namespace exodus_rls {

// Exponential synaptic filter of one step (DESIGN §9): u += (-dt u + q) / tau, where q is the
// charge that arrived in the previous step (a spike of weight J adds J, so the integral of
// the current is J). The filtered spike trains r use the same rule with q = 0 or 1.
template <typename T>
inline T synaptic_filter(T u, T charge, T dt, T inv_tau) {
  return u + (-dt * u + charge) * inv_tau;
}

// Membrane step: v += dt/tau_m (X + u - v), with mem_rate = dt/tau_m (DESIGN §9).
template <typename T>
inline T membrane_step(T v, T external, T current, T mem_rate) {
  return v + mem_rate * ((external + current) - v);
}

// Block-packed symmetric storage of the (n x n) P matrices. With B = 64 bytes / sizeof(T)
// (16 floats or 8 doubles, one cache line / AVX-512 vector) and n padded to nb B, column j of
// block-column b = j / B stores rows 0 .. (b+1) B - 1: the blocks above the diagonal once, and
// the diagonal block in full (both triangles). Every inner loop then runs over whole vectors.
// Size: B^2 nb (nb+1) / 2 (n = 90 floats: 5376 numbers, vs 4095 packed and 8100 full).
// Padding rows and columns (>= n) hold zeros and stay zero (x and k are zero there).
template <typename T>
struct Block {
  static constexpr int64_t size = 64 / int64_t(sizeof(T));
};

template <typename T>
inline int64_t blocked_column(int64_t j) {
  constexpr int64_t B = Block<T>::size;
  const int64_t b = j / B;
  return B * B * (b * (b + 1) / 2) + (j - b * B) * (b + 1) * B;
}

template <typename T>
inline int64_t blocked_size(int64_t n) {
  constexpr int64_t B = Block<T>::size;
  const int64_t nb = (n + B - 1) / B;
  return B * B * (nb * (nb + 1) / 2);
}

// One vector of a block (B lanes, 64 bytes) in GCC/Clang vector extensions: compiled to one
// AVX-512 register with -march=native on AVX-512 CPUs, to 2-4 narrower ones elsewhere.
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(64)));
};

// Integer lane indices of the same width, for __builtin_shuffle.
template <typename T>
struct Mask;
template <>
struct Mask<float> {
  typedef int32_t type __attribute__((vector_size(64)));
};
template <>
struct Mask<double> {
  typedef int64_t type __attribute__((vector_size(64)));
};

template <typename T>
inline typename Lanes<T>::type load_lanes(const T* p) {
  typename Lanes<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store_lanes(T* p, typename Lanes<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// One RLS step of one neuron (DESIGN §9), P block-packed (see above), w (n), x (nb B, zero
// beyond n) its inputs r, k scratch (nb B):
//   k = P x ;  c = 1 / (1 + x^T k) ;  P <- P - (k k^T) c ;
//   e = w^T x + u_static - u_target ;  w <- w - e c k   (normalized == false: w <- w - e k).
// Returns x^T k. The downdate computes (k_i k_j) c, the same number for (i, j) and (j, i), so
// the duplicated diagonal blocks stay exactly symmetric; it is the exact Sherman-Morrison form
// (c > 0 since x^T P x >= 0), which keeps P positive definite in exact arithmetic.
//
// k = P x by block-columns b (columns j = bB + m, m < B): for each row block a < b the B
// columns add P[aB.., j] x_j to k[aB..] (one load and store of k per row block) and
// accumulate P[aB.., j] . x[aB..] for k[j] (the mirror entries (j, aB..), not stored) in B
// vector accumulators, summed once per block-column; the diagonal block adds P[bB.., j] x_j.
// P_base <- P_base - sum_{i < count} (f_i f_i^T) c_i over the stored entries, in order i = 0, 1, ..
// Above the diagonal blocks (stored once) an entry (a, j) subtracts f_ia (f_ij c_i); inside the
// diagonal blocks, where (a, j) and (j, a) are both stored, it subtracts (f_ia f_ij) c_i, the same
// number for both, so the duplicated blocks stay exactly symmetric.
template <typename T>
inline void blocked_downdate(T* __restrict__ P, const T* __restrict__ f, const T* __restrict__ c_list, int64_t count,
                             int64_t n) {
  typedef typename Lanes<T>::type V;
  constexpr int64_t B = Block<T>::size;
  constexpr int64_t kMaxCount = 64;
  const int64_t padded = (n + B - 1) / B * B;
  T scale[kMaxCount];
  for (int64_t i0 = 0; i0 < count; i0 += kMaxCount) {
    const int64_t chunk = count - i0 < kMaxCount ? count - i0 : kMaxCount;
    for (int64_t j = 0; j < n; ++j) {
      T* __restrict__ col = P + blocked_column<T>(j);
      const int64_t diag = j / B;
      for (int64_t i = 0; i < chunk; ++i) scale[i] = f[(i0 + i) * padded + j] * c_list[i0 + i];
      for (int64_t a = 0; a < diag; ++a) {
        V pv = load_lanes(col + a * B);
        for (int64_t i = 0; i < chunk; ++i) pv -= load_lanes(f + (i0 + i) * padded + a * B) * scale[i];
        store_lanes(col + a * B, pv);
      }
      V pv = load_lanes(col + diag * B);
      for (int64_t i = 0; i < chunk; ++i) {
        const T* fi = f + (i0 + i) * padded;
        pv -= (load_lanes(fi + diag * B) * fi[j]) * c_list[i0 + i];
      }
      store_lanes(col + diag * B, pv);
    }
  }
}

// Lane m of the result = sum of the lanes of v[m], m < B: a transposing reduction tree. Each
// level folds pairs of vectors into one holding twice as many half-length partial sums (two
// two-source permutes and one add per pair; masks generated for B = 16 floats and 8 doubles),
// log2 B levels instead of B^2 scalar adds.
//
// One level of the tree: v[i] = (lanes `first` of v[2i]:v[2i+1]) + (lanes `second`), i < pairs.
template <typename V, typename M>
inline void fold_pairs(V* v, int pairs, M first, M second) {
  for (int i = 0; i < pairs; ++i)
    v[i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], first) + __builtin_shuffle(v[2 * i], v[2 * i + 1], second);
}

template <typename T>
inline typename Lanes<T>::type transpose_sum(typename Lanes<T>::type* v);

template <>
inline Lanes<float>::type transpose_sum<float>(Lanes<float>::type* v) {
  typedef Mask<float>::type M;
  fold_pairs(v, 8, M{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},  // level 1: 16 -> 8 vectors
             M{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
  fold_pairs(v, 4, M{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},  // level 2: 8 -> 4 vectors
             M{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
  fold_pairs(v, 2, M{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},  // level 3: 4 -> 2 vectors
             M{2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31});
  fold_pairs(v, 1, M{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},  // level 4: 2 -> 1 vectors
             M{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
  return v[0];
}

template <>
inline Lanes<double>::type transpose_sum<double>(Lanes<double>::type* v) {
  typedef Mask<double>::type M;
  fold_pairs(v, 4, M{0, 1, 2, 3, 8, 9, 10, 11}, M{4, 5, 6, 7, 12, 13, 14, 15});  // level 1: 8 -> 4 vectors
  fold_pairs(v, 2, M{0, 1, 4, 5, 8, 9, 12, 13}, M{2, 3, 6, 7, 10, 11, 14, 15});  // level 2: 4 -> 2 vectors
  fold_pairs(v, 1, M{0, 2, 4, 6, 8, 10, 12, 14}, M{1, 3, 5, 7, 9, 11, 13, 15});  // level 3: 2 -> 1 vectors
  return v[0];
}

// k = P x for block-packed P (nb B rows of k written; x zero beyond n).
template <typename T>
inline void blocked_symv(const T* P, const T* x, T* k, int64_t n) {
  typedef typename Lanes<T>::type V;
  constexpr int64_t B = Block<T>::size;
  const int64_t nb = (n + B - 1) / B;
  for (int64_t i = 0; i < nb * B; ++i) k[i] = T(0);
  for (int64_t b = 0; b < nb; ++b) {
    const T* panel = P + blocked_column<T>(b * B);
    const int64_t ld = (b + 1) * B;  // stored rows per column of this block-column
    const T* xb = x + b * B;
    V dots[B];
    for (int64_t m = 0; m < B; ++m) dots[m] = V{};
    for (int64_t a = 0; a < b; ++a) {
      V even = load_lanes(k + a * B), odd = V{};  // two partial sums: half the add latency chain
      const V xv = load_lanes(x + a * B);
      const T* cp = panel + a * B;  // row block a of column m: cp + m ld
#pragma GCC unroll 16
      for (int64_t m = 0; m < B; m += 2) {
        const V c0 = load_lanes(cp), c1 = load_lanes(cp + ld);
        cp += 2 * ld;
        even += c0 * xb[m];
        odd += c1 * xb[m + 1];
        dots[m] += c0 * xv;
        dots[m + 1] += c1 * xv;
      }
      store_lanes(k + a * B, even + odd);
    }
    V even = load_lanes(k + b * B), odd = V{};
    const T* cp = panel + b * B;
#pragma GCC unroll 16
    for (int64_t m = 0; m < B; m += 2) {
      even += load_lanes(cp) * xb[m];
      odd += load_lanes(cp + ld) * xb[m + 1];
      cp += 2 * ld;
    }
    V kd = even + odd;
    if (b > 0) kd += transpose_sum<T>(dots);
    store_lanes(k + b * B, kd);
  }
}

// One RLS step of one neuron (DESIGN §9) with deferred downdates. The neuron's P is
//   P = P_base - sum_{i < pending} c_i f_i f_i^T,
// P_base block-packed (see above), f (capacity, nb B) and c (capacity) the downdates not yet
// applied. The step, with x (nb B, zero beyond n) the neuron's inputs r:
//   k = P x = P_base x - sum_i c_i (f_i . x) f_i ;  c = 1 / (1 + x^T k) ;  P <- P - c k k^T
//   (stored as f_pending = k, c_pending = c) ;  e = w^T x + u_static - u_target ;
//   w <- w - e c k   (normalized == false: w <- w - e k).
// When pending + 1 == capacity the downdates are applied to P_base (flush). Deferring them
// means P_base is read every step but written only every capacity steps: the update is
// memory-bound, so this nearly halves its memory traffic. In exact arithmetic this is the
// classic sequential update, and c > 0 (x^T P x >= 0), so P stays positive definite.
// Returns x^T k.
template <typename T>
inline T rls_neuron_step(T* P, T* f, T* c_list, int64_t pending, int64_t capacity, T* w, const T* x, T* k, int64_t n,
                         T u_static, T u_target, bool normalized) {
  constexpr int64_t B = Block<T>::size;
  const int64_t padded = (n + B - 1) / B * B;
  blocked_symv(P, x, k, n);
  for (int64_t i = 0; i < pending; ++i) {
    const T* fi = f + i * padded;
    T fx = T(0);
#pragma omp simd reduction(+ : fx)
    for (int64_t a = 0; a < padded; ++a) fx += fi[a] * x[a];
    const T scale = c_list[i] * fx;
#pragma omp simd
    for (int64_t a = 0; a < padded; ++a) k[a] -= scale * fi[a];
  }
  T xk = T(0), wx = T(0);
  for (int64_t i = 0; i < n; ++i) {
    xk += x[i] * k[i];
    wx += w[i] * x[i];
  }
  const T c = T(1) / (T(1) + xk);
  T* f_new = f + pending * padded;
  for (int64_t a = 0; a < padded; ++a) f_new[a] = k[a];
  c_list[pending] = c;
  const T e = (wx + u_static) - u_target;
  const T step = normalized ? e * c : e;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) w[i] -= step * k[i];
  if (pending + 1 == capacity) blocked_downdate(P, f, c_list, capacity, n);
  return xk;
}

}  // namespace exodus_rls
