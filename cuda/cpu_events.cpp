// exodus.events — exact event-based simulation of pulse-coupled networks with O(log N) work per
// target and spike (SparseProp, Engelken 2023; DESIGN.md §8). Sequential by nature: one thread.
//
// Homogeneous drive (every neuron has the same speed omega): the phases live in one priority
// queue (a 16-ary tournament tree, struct MinTree) as phi~ = phi - Phi (Phi a global offset),
// keyed by -phi~ (the minimum of -phi~ is the maximum of phi~; LIF: by psi~, see enum Mode). The
// top is the next spiker j; Phi <- phi_th - phi~_j advances every phase at once; each target's
// key changes by its PTC (O(log N) update); j resets.
// Heterogeneous drive (per-neuron omega_i): each neuron keeps (phase, time of last update);
// the queue is keyed by the next spike time t_i + (phi_th - phi_i)/omega_i.
// Ties are broken by the lower neuron id (as numpy's argmax/argmin in the reference).
//
// Connectivity: CSR given by the user, or K distinct random targets of presynaptic neuron j
// (no self-connection) drawn from a counter-based hash of (seed, j): nothing N x K is stored.
// Spec (exodus/events/reference.py reimplements it in numpy):
//   fmix(z)   = splitmix64 finaliser: z ^= z >> 30; z *= C1; z ^= z >> 27; z *= C2; z ^= z >> 31
//   key_j     = fmix(seed ^ fmix((j + 1) G))
//   x_m       = fmix(key_j + (m + 1) G),  m = 0, 1, 2, ...
//   cand_m    = floor(x_m (N - 1) / 2^64) (Lemire's multiply-shift);  target = cand_m + (cand_m >= j)
//   targets   = the first K distinct targets in draw order; synapse (j, r) is the r-th of them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "events_neurons.h"

namespace exodus_events {

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

inline uint64_t fmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Draws the K random targets of one presynaptic neuron j into out[0 .. k), eight candidates per
// step (the simulator interleaves the next spiker's draw with this spike's kicks). Repeats are
// removed with one bit per neuron (N/8 bytes: 125 KB at N = 1e6, mostly in L2), cleared word by
// word from out[] when the draw completes; a repeat is rare (about K^2 / 2N per draw). With
// AVX-512 the eight candidates are hashed at once; for N - 1 < 2^32 Lemire's 64 x 64 -> high 64
// product is exact from two 32 x 32 -> 64 products: with x = x_hi 2^32 + x_lo,
// floor(x r / 2^64) = (x_hi r + (x_lo r >> 32)) >> 32 (no overflow: x_hi r <= 2^64 - 2^33 + 1).
class TargetDraw {
 public:
  explicit TargetDraw(int64_t n) : bits_(uint64_t(n + 63) / 64, 0) {}
  void reserve(int64_t n) {  // room for ids < n (the bits beyond the old size start clear)
    if (bits_.size() < uint64_t(n + 63) / 64) bits_.resize(uint64_t(n + 63) / 64, 0);
  }
  void start(uint64_t seed, int64_t n, int64_t k, int64_t j, int64_t* out) {
    key_ = fmix(seed ^ fmix(uint64_t(j + 1) * GOLDEN));
    range_ = uint64_t(n - 1);
    k_ = k;
    j_ = j;
    out_ = out;
    found_ = 0;
    m_ = 1;
  }
  bool done() const { return found_ == k_; }
  int64_t step() {  // the next eight candidates (up to the K-th distinct target); returns found()
    int64_t target[8];
    hash8(target);
    uint64_t* const bits = bits_.data();
    int64_t* const out = out_;
    const int64_t k = k_;
    int64_t found = found_;  // locals: the stores to out[] could alias the members
    int l = 0;
    for (; l < 8 && found < k; ++l) {
      const int64_t t = target[l];
      const uint64_t word = bits[uint64_t(t) >> 6], bit = uint64_t(1) << (t & 63);
      out[found] = t;  // kept only if new
      found += (word & bit) == 0;
      bits[uint64_t(t) >> 6] = word | bit;
    }
    m_ += uint64_t(l);
    found_ = found;
    if (found == k) clear(bits, out, k);
    return found;
  }
  void finish() {
    while (!done()) step();
  }

 private:
  void hash8(int64_t* target) const {  // targets of candidates m_ .. m_ + 7
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (range_ < (uint64_t(1) << 32)) {
      const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
      __m512i z = _mm512_add_epi64(_mm512_set1_epi64(int64_t(key_ + m_ * GOLDEN)),
                                   _mm512_mullo_epi64(lane, _mm512_set1_epi64(int64_t(GOLDEN))));
      z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64(int64_t(0xBF58476D1CE4E5B9ull)));
      z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64(int64_t(0x94D049BB133111EBull)));
      z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
      const __m512i r = _mm512_set1_epi64(int64_t(range_));
      const __m512i high = _mm512_mul_epu32(_mm512_srli_epi64(z, 32), r), low = _mm512_mul_epu32(z, r);
      __m512i cand = _mm512_srli_epi64(_mm512_add_epi64(high, _mm512_srli_epi64(low, 32)), 32);
      cand = _mm512_mask_add_epi64(cand, _mm512_cmpge_epi64_mask(cand, _mm512_set1_epi64(j_)), cand, _mm512_set1_epi64(1));
      _mm512_storeu_si512(target, cand);
      return;
    }
#endif
    for (int l = 0; l < 8; ++l) {
      const int64_t cand = int64_t((unsigned __int128)fmix(key_ + (m_ + uint64_t(l)) * GOLDEN) * range_ >> 64);
      target[l] = cand + (cand >= j_);
    }
  }
  // One store per target: a vectorised scatter is slower here.
  __attribute__((optimize("no-tree-vectorize"))) static void clear(uint64_t* bits, const int64_t* out, int64_t k) {
    for (int64_t r = 0; r < k; ++r) bits[uint64_t(out[r]) >> 6] = 0;
  }
  std::vector<uint64_t> bits_;
  uint64_t key_ = 0, range_ = 0, m_ = 1;
  int64_t k_ = 0, j_ = 0, found_ = 0;
  int64_t* out_ = nullptr;
};

// The priority queue: a 16-ary tournament tree over the neurons in id order. The keys live in a
// flat array by neuron id (the tree's leaves, in groups of 16 that fill one aligned 128-byte line
// pair); each group keeps the offset of its minimum in one byte and the minimum itself in
// node_key[0]; level l >= 1 holds, for each 16 nodes of level l - 1, their minimum key
// (node_key[l]) and its neuron (node_id[l]), up to the root (the next spiker). Ties go to the
// lower id; as the nodes of a level are in id order, that is the lower offset among 16 siblings,
// so every re-scan is "the first minimum of 16 contiguous doubles" (argmin16, SIMD).
// Why not an indexed heap: a heap moves entries, so a kick first reads the neuron's slot and then
// its entry, two dependent cache misses in 24 bytes per neuron (16 MB + 8 MB at N = 1e6). Here a
// kick reads and writes its key (8 bytes per neuron) and reads one byte of the group offsets (N/16
// bytes: cached), both addressed by i alone, so the K targets' keys are prefetched with no
// dependent load. A kick that raises a key (inhibition) changes the tree only when i is its
// group's minimum (about 1 in 16); then the groups on the path are re-scanned while i was their
// minimum. A lowered key is compared with its group's minimum and carried up while it wins.
// O(16 log_16 N) worst case.
struct Entry {
  double key;
  int64_t id;
};

constexpr int64_t ARITY = 16;  // a group of keys = 128 bytes
constexpr int MAX_LEVELS = 17;  // 16^16 > any int64 n

inline bool before(double ka, int64_t ia, double kb, int64_t ib) { return ka < kb || (ka == kb && ia < ib); }

// Offset of the first minimum of x[0 .. count), 1 <= count <= 16 (x[count ..] is not read; with
// a NaN the offset is some c < count, as the scalar scan's).
inline int argmin16(const double* x, int64_t count) {
#if defined(__AVX512F__)
  const __m512d inf = _mm512_set1_pd(INFINITY);
  const __mmask8 lo = count >= 8 ? __mmask8(0xff) : __mmask8((1u << count) - 1);
  const __mmask8 hi = count >= 16 ? __mmask8(0xff) : count <= 8 ? __mmask8(0) : __mmask8((1u << (count - 8)) - 1);
  const __m512d a = _mm512_mask_loadu_pd(inf, lo, x), b = _mm512_mask_loadu_pd(inf, hi, x + 8);
  __m512d m = _mm512_min_pd(a, b);
  m = _mm512_min_pd(m, _mm512_shuffle_f64x2(m, m, 0x4E));  // halves, then pairs, then neighbours
  m = _mm512_min_pd(m, _mm512_shuffle_f64x2(m, m, 0xB1));
  m = _mm512_min_pd(m, _mm512_permute_pd(m, 0x55));
  const unsigned equal = unsigned(_mm512_mask_cmp_pd_mask(lo, a, m, _CMP_EQ_OQ)) |
                         unsigned(_mm512_mask_cmp_pd_mask(hi, b, m, _CMP_EQ_OQ)) << 8;
  return equal ? __builtin_ctz(equal) : 0;
#else
  int best = 0;
  for (int c = 1; c < count; ++c)
    if (x[c] < x[best]) best = c;  // strict: the lower offset wins a tie
  return best;
#endif
}

// Nodes per level for n leaves: level 0 = ceil(n / 16) groups, then ceil(that / 16), ..., 1.
inline int tree_levels(int64_t n, int64_t* sizes) {
  int levels = 0;
  for (int64_t m = n; levels == 0 || m > 1;) {
    m = (m + ARITY - 1) / ARITY;
    sizes[levels++] = m;
  }
  return levels;
}
inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Caller buffers (sizes from exodus_events_queue_sizes): keys of n + KEY_PADDING doubles and a
// byte buffer for the group offsets and the nodes; both are aligned here so that 16 siblings fill
// whole cache lines.
constexpr int64_t KEY_PADDING = ARITY, NODE_BUFFER_PADDING = 256;
inline uintptr_t align_up(uintptr_t raw, uintptr_t bytes) { return (raw + bytes - 1) / bytes * bytes; }

struct MinTree {
  double* key;                     // (n,) by neuron id
  uint8_t* lead;                   // (size[0],) offset of each group's minimum within the group
  double* node_key[MAX_LEVELS];    // (size[l],) level 0: the groups' minima; l >= 1: min of 16 nodes below
  int64_t* node_id[MAX_LEVELS];    // (size[l],) l >= 1: the neuron of node_key (level 0: from lead)
  int64_t size[MAX_LEVELS];
  int levels;
  int64_t n;
  std::vector<int64_t> raised = std::vector<int64_t>(64);  // queued raises of group minima (see update)
  int64_t n_raised = 0;

  static int64_t node_buffer_bytes(int64_t n) {
    int64_t sizes[MAX_LEVELS];
    const int levels = tree_levels(n, sizes);
    int64_t bytes = round_up(sizes[0], 256);
    for (int l = 0; l < levels; ++l) bytes += round_up(sizes[l], ARITY) * int64_t(l == 0 ? 8 : 16);
    return bytes + NODE_BUFFER_PADDING;
  }
  MinTree(void* key_buffer, void* node_buffer, int64_t n_)
      : key(reinterpret_cast<double*>(align_up(reinterpret_cast<uintptr_t>(key_buffer), ARITY * sizeof(double)))), n(n_) {
    levels = tree_levels(n, size);
    uint8_t* bytes = reinterpret_cast<uint8_t*>(align_up(reinterpret_cast<uintptr_t>(node_buffer), 256));
    lead = bytes;
    bytes += round_up(size[0], 256);
    for (int l = 0; l < levels; ++l) {  // every level starts a sibling group (128-byte aligned)
      node_key[l] = reinterpret_cast<double*>(bytes);
      bytes += round_up(size[l], ARITY) * sizeof(double);
      node_id[l] = l == 0 ? nullptr : reinterpret_cast<int64_t*>(bytes);
      if (l > 0) bytes += round_up(size[l], ARITY) * sizeof(int64_t);
    }
  }
  ~MinTree() { apply_raises(); }  // the caller's buffers hold the whole tree between runs
  MinTree(const MinTree&) = delete;
  MinTree& operator=(const MinTree&) = delete;
  int64_t group_leader(int64_t g) const { return g * ARITY + lead[g]; }
  Entry top() {
    apply_raises();
    return levels == 1 ? Entry{node_key[0][0], group_leader(0)} : Entry{node_key[levels - 1][0], node_id[levels - 1][0]};
  }
  void prefetch(int64_t i) const {  // the neuron's key (a raised non-leader needs nothing else)
    __builtin_prefetch(&key[i]);
  }
  void prefetch_reset_path(int64_t i) const {  // what re-scanning i's group and its siblings reads
    __builtin_prefetch(&key[i & ~(ARITY - 1)]);
    __builtin_prefetch(&key[(i & ~(ARITY - 1)) + 8]);
    if (levels > 1) {
      const int64_t first = (i / ARITY) & ~(ARITY - 1);
      __builtin_prefetch(&node_key[0][first]);
      __builtin_prefetch(&node_key[0][first + 8]);
    }
  }
  void scan_group(int64_t g) {
    const int64_t first = g * ARITY;
    const int offset = argmin16(key + first, std::min(ARITY, n - first));
    lead[g] = uint8_t(offset);
    node_key[0][g] = key[first + offset];
  }
  void scan_node(int l, int64_t p) {  // node p of level l >= 1 from its children
    const int64_t first = p * ARITY;
    const int offset = argmin16(node_key[l - 1] + first, std::min(ARITY, size[l - 1] - first));
    node_key[l][p] = node_key[l - 1][first + offset];
    node_id[l][p] = l == 1 ? group_leader(first + offset) : node_id[l - 1][first + offset];
  }
  // Raising a group's minimum (inhibition, the spiker's reset) re-scans the group, and the other
  // line of its 128 bytes is a cache miss at N = 1e6. So such raises are queued and applied
  // together before the next top(), all other lines prefetched first: their misses overlap. Correct for any
  // set of raises: a node whose winner was not raised keeps it (every other key only went up),
  // and one whose winner was raised is re-scanned from children that are then up to date (all
  // groups first, then each raised neuron's path while it is the recorded winner, bottom-up).
  // A lowered key applies the queued raises first.
  void update(int64_t i, double new_key) {
    const double old = key[i];
    key[i] = new_key;
    // Raised (inhibition) or kept, and not its group's minimum m: key[m] <= old <= new_key, and on
    // a tie m < i, so m stays the minimum and the tree is unchanged. The common case, inline.
    const uint64_t g = uint64_t(i) / ARITY;
    if (int64_t(g * ARITY + lead[g]) != i && new_key >= old) return;
    if (new_key > old) {  // a raised group minimum: queued
      room_for_raises(1);
      raised[n_raised++] = i;
      return;
    }
    update_tree(i, old, new_key);
  }
#if defined(__AVX512F__) && defined(__AVX512VL__)
  // update(ids[l], key[ids[l]] + add[l]) for eight distinct neurons (a random graph's targets),
  // the keys gathered and scattered at once; returns the new keys. Same effect as the eight calls:
  // any lowered key sends the eight through update() one by one.
  __m512d add8(const int64_t* ids, __m512d add) {
    const __m512i id = _mm512_loadu_si512(ids);
    const __m512d old = _mm512_i64gather_pd(id, key, 8), after = _mm512_add_pd(old, add);
    if (_mm512_cmp_pd_mask(after, old, _CMP_LT_OQ)) {
      alignas(64) double value[8];
      _mm512_store_pd(value, after);
      for (int l = 0; l < 8; ++l) update(ids[l], value[l]);
      return after;
    }
    _mm512_i64scatter_pd(key, id, after, 8);
    // Group minima among the eight (lead[i / 16] == i % 16; four-byte reads stay inside the buffer).
    const __m256i lead4 = _mm512_i64gather_epi32(_mm512_srli_epi64(id, 4), lead, 1);
    const __m256i offset = _mm512_cvtepi64_epi32(_mm512_and_si512(id, _mm512_set1_epi64(ARITY - 1)));
    const __mmask8 raised_minima = _mm256_cmpeq_epi32_mask(_mm256_and_si256(lead4, _mm256_set1_epi32(0xff)), offset) &
                                   _mm512_cmp_pd_mask(after, old, _CMP_GT_OQ);
    // Queued without a branch on the mask (taken in ~40 % of the eights: a branch mispredicts).
    room_for_raises(8);
    _mm512_storeu_si512(&raised[n_raised], _mm512_maskz_compress_epi64(raised_minima, id));
    n_raised += __builtin_popcount(raised_minima);
    return after;
  }
#endif
  void apply_raises() {
    if (n_raised == 0) return;
    for (int64_t r = 0; r < n_raised; ++r) __builtin_prefetch(&key[raised[r] ^ 8]);
    for (int64_t r = 0; r < n_raised; ++r) scan_group(raised[r] / ARITY);
    for (int64_t r = 0; r < n_raised; ++r) {
      const int64_t i = raised[r];
      int64_t p = i / ARITY;
      for (int l = 1; l < levels; ++l) {
        p /= ARITY;
        if (node_id[l][p] != i) break;
        scan_node(l, p);
      }
    }
    n_raised = 0;
  }
  void room_for_raises(int64_t more) {
    if (n_raised + more > int64_t(raised.size())) raised.resize(2 * raised.size() + size_t(more));
  }
  __attribute__((noinline)) void update_tree(int64_t i, double old, double new_key) {  // lowered or kept
    apply_raises();
    int64_t p = i / ARITY;
    const int64_t m = group_leader(p);
    if (m != i && !before(new_key, i, node_key[0][p], m)) return;
    if (new_key == old) return;
    lead[p] = uint8_t(i - p * ARITY);
    node_key[0][p] = new_key;  // i leads its group with a lower key: carry it up while it wins
    for (int l = 1; l < levels; ++l) {
      p /= ARITY;
      if (!before(new_key, i, node_key[l][p], node_id[l][p])) break;
      node_key[l][p] = new_key;
      node_id[l][p] = i;
    }
  }
  void build() {
    n_raised = 0;
    for (int64_t g = 0; g < size[0]; ++g) scan_group(g);
    for (int l = 1; l < levels; ++l)
      for (int64_t p = 0; p < size[l]; ++p) scan_node(l, p);
  }
};

}  // namespace exodus_events

using namespace exodus_events;

extern "C" {

// Read-only description of the network (mirrored by ctypes in exodus/events/_native.py).
struct EventsNetwork {
  int64_t n;                  // neurons
  int64_t k;                  // out-degree of the random graph (unused with CSR)
  int32_t model;              // LIF, QIF, EIF
  int32_t heterogeneous;      // 0: phase queue with global offset; 1: next-spike-time queue
  uint64_t seed;              // random-graph seed
  const int64_t* csr_indptr;  // (n + 1,) or null (random graph)
  const int64_t* csr_indices; // (nnz,)
  const double* weights;      // (n k,) or (nnz,) per-synapse multipliers, or null (all 1)
  const double* omega;        // (n,) phase speeds (heterogeneous) or null
  const double* coupling;     // (n,) kick parameter of a unit-weight synapse onto i (heterogeneous) or null
  const double* drive;        // (n,) LIF drive I_i (voltages only) or null
  double omega0, coupling0, drive0;  // homogeneous values
  double phase_th, phase_reset;
  const double* eif_v;        // EIF table (see events_neurons.h)
  const double* eif_slope;
  int64_t eif_n;
  double eif_phase_lo, eif_step;
};

// Mutable state, all arrays owned by the caller (numpy).
struct EventsState {
  void* key;            // (n + KEY_PADDING,) doubles: the queue's keys by neuron (see struct MinTree)
  void* tree;           // group offsets and inner nodes of the queue (bytes: exodus_events_queue_sizes)
  double* phase;        // (n,) heterogeneous: phase at last_time; homogeneous: unused
  double* last_time;    // (n,) heterogeneous only
  int64_t* spike_count; // (n,)
  double offset;        // homogeneous: Phi
  double time_base;     // homogeneous: time at which Phi was 0
  double time;          // time of the last spike (units of tau)
  int64_t n_spikes;     // spikes so far
};

// Optional voltage sampling: at each of times[0..n_times) (ascending, units of tau) the
// voltages of neurons[0..n_neurons) are written to out[row * n_neurons + col].
struct EventsSamples {
  const double* times;
  int64_t n_times;
  int64_t next;          // first sample not yet written (advanced by the simulator)
  const int64_t* neurons;
  int64_t n_neurons;
  double* out;
};

enum Status : int32_t { OK_MAX_SPIKES = 0, OK_END_TIME = 1, ERR_CROSSING = -1, ERR_NONFINITE = -2, ERR_ARGS = -3,
                        ERR_EIF_RANGE = -4 };

}  // extern "C"

namespace {

// How the queue keys the neurons:
//   LifPsi: homogeneous LIF, key psi~ = exp(-phi~/omega) (events_neurons.h: a kick adds c to psi,
//           a common advance multiplies all psi by exp(-dPhi/omega); psi = psi~ exp(-Phi/omega)).
//   Phase:  homogeneous QIF / EIF, key -phi~ = -(phi - Phi).
//   Hetero: any model, key = next spike time, phase and last update time per neuron.
enum Mode { LifPsi, Phase, Hetero };

template <int M>
double kick(const EifTable& table, double phase, double c, [[maybe_unused]] double omega) {
  if constexpr (M == LIF) return lif_ptc(phase, c, omega);
  else if constexpr (M == QIF) return qif_ptc(phase, c);
  else return eif_ptc(table, phase, c);
}

// A kick onto a neuron within rounding of threshold (a near-tie with the spiker). Exactly, its
// phase is <= phase_th and an inhibitory kick never raises a phase (the PTCs are monotone);
// rounded, the advanced phase can land above phase_th and the PTC on phase_th (QIF:
// 2 atan(tan(pi/2 - ulp) + c) rounds to pi), which would read as a crossing. Enforce both facts;
// a neuron left exactly on phase_th fires next with zero wait, as in the O(N) reference.
// Inhibitory: c > 0 for LIF (c = J/I), c < 0 for QIF and EIF.
template <int M>
double kick_clamped(const EifTable& table, double phase_th, double before, double c, double omega) {
  before = std::min(before, phase_th);
  const double after = kick<M>(table, before, c, omega);
  const bool inhibitory = M == LIF ? c > 0.0 : c < 0.0;
  return inhibitory ? std::min(after, before) : after;  // std::min keeps a NaN in `after`
}

// The status of a kicked phase: a NaN (EIF: below the table), or an excitatory crossing.
template <int M>
int32_t kick_status(double after, double phase_th, double c) {
  if (M == EIF && std::isnan(after)) return ERR_EIF_RANGE;
  const bool inhibitory = M == LIF ? c > 0.0 : c < 0.0;
  if (std::isnan(after) || (!inhibitory && !(after < phase_th))) return ERR_CROSSING;
  return 0;
}

template <int M>
double voltage(const EventsNetwork& net, const EifTable& table, int64_t i, double phase) {
  if constexpr (M == LIF) return lif_voltage(phase, net.drive ? net.drive[i] : net.drive0, net.omega ? net.omega[i] : net.omega0);
  else if constexpr (M == QIF) return qif_voltage(phase, net.omega ? net.omega[i] : net.omega0);
  else return eif_voltage(table, phase);
}

// Phase of neuron i at time t (units of tau) from the state.
template <int Mo>
double phase_at(const EventsNetwork& net, const EventsState& s, const MinTree& queue, int64_t i, double t) {
  if constexpr (Mo == Hetero) return s.phase[i] + net.omega[i] * (t - s.last_time[i]);
  const double key = queue.key[i];
  const double tilde = Mo == LifPsi ? lif_phase_of_psi(key, net.omega0) : -key;
  return tilde + (t - s.time_base) * net.omega0;
}

template <int M, int Mo>
void write_samples_before(const EventsNetwork& net, const EventsState& s, const MinTree& queue, const EifTable& table,
                          EventsSamples* smp, double t_limit, bool inclusive) {
  if (smp == nullptr) return;
  while (smp->next < smp->n_times && (smp->times[smp->next] < t_limit || (inclusive && smp->times[smp->next] == t_limit))) {
    const double t = smp->times[smp->next];
    double* row = smp->out + smp->next * smp->n_neurons;
    for (int64_t c = 0; c < smp->n_neurons; ++c) {
      const int64_t i = smp->neurons[c];
      row[c] = voltage<M>(net, table, i, phase_at<Mo>(net, s, queue, i, t));
    }
    ++smp->next;
  }
}

template <int M, int Mo, bool Csr>
int32_t run(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
            int64_t* out_id, EventsSamples* smp) {
  MinTree queue(s.key, s.tree, net.n);
  const EifTable table{net.eif_v, net.eif_slope, net.eif_n, net.eif_phase_lo, net.eif_step};
  TargetDraw draw(Csr ? 1 : net.n);
  // Targets of a presynaptic neuron: a CSR row, or the random draw into one of two lists (the
  // current spiker's and the predicted next spiker's).
  struct TargetList {
    const int64_t* tgt;
    int64_t n, first_synapse;
  };
  std::vector<int64_t> lists[2] = {std::vector<int64_t>(Csr ? 0 : net.k), std::vector<int64_t>(Csr ? 0 : net.k)};
  const auto list_targets = [&](int64_t j, int list) -> TargetList {
    if constexpr (Csr) return {net.csr_indices + net.csr_indptr[j], net.csr_indptr[j + 1] - net.csr_indptr[j], net.csr_indptr[j]};
    else return {lists[list].data(), net.k, j * net.k};
  };
  const auto prefetch_targets = [&](const int64_t* tgt, int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      queue.prefetch(tgt[r]);
      if constexpr (Mo == Hetero) {
        __builtin_prefetch(&s.phase[tgt[r]]);
        __builtin_prefetch(&s.last_time[tgt[r]]);
        __builtin_prefetch(&net.omega[tgt[r]]);
      }
    }
  };
  int64_t predicted = -1;  // the neuron whose targets lists[predicted_list] holds
  int predicted_list = 0;
  const double omega0 = net.omega0;
  // Renormalise the global offset once Phi > omega0 (LifPsi: psi~ stays within a factor e of psi)
  // or Phi > 1 (Phase): phi~ + Phi then stays exact to ~eps |phi| over arbitrarily long runs; the
  // O(N) pass comes once per ~tau of simulated time.
  const double renormalise_at = Mo == LifPsi ? omega0 : 1.0;
  const double psi_th = lif_psi_of_phase(net.phase_th, omega0);  // LifPsi: psi at threshold
  for (int64_t count = 0; count < max_spikes; ++count) {
    const Entry top = queue.top();
    const int64_t j = top.id;
    double t, offset = 0.0;
    if constexpr (Mo == Hetero) {
      t = top.key;
    } else {
      const double tilde = Mo == LifPsi ? lif_phase_of_psi(top.key, omega0) : -top.key;
      offset = net.phase_th - tilde;  // Phi_new = phi_th - phi~_j
      t = s.time_base + offset / omega0;
    }
    if (!std::isfinite(t)) return ERR_NONFINITE;
    if (t > t_end) {
      write_samples_before<M, Mo>(net, s, queue, table, smp, t_end, true);
      s.n_spikes += count;
      return OK_END_TIME;
    }
    write_samples_before<M, Mo>(net, s, queue, table, smp, t, false);
    s.offset = offset;
    s.time = t;
    if (out_time) out_time[count] = t;
    if (out_id) out_id[count] = j;

    // The spiker resets first (it is not its own target, so the order does not matter, and the
    // tree is a function of the keys alone). The new top is then almost always the next spiker:
    // its targets are drawn and their keys prefetched now, so that their cache misses overlap
    // this spike's kicks instead of stalling the next spike (at N = 1e6 the keys are 8 MB).
    if constexpr (Mo == Hetero) {
      s.phase[j] = net.phase_reset;
      s.last_time[j] = t;
      queue.update(j, t + (net.phase_th - net.phase_reset) / net.omega[j]);
    } else if constexpr (Mo == LifPsi) {
      queue.update(j, lif_psi_of_phase(net.phase_reset - offset, omega0));
    } else {
      queue.update(j, -(net.phase_reset - offset));
    }
    const int in_use = j == predicted ? predicted_list : 1 - predicted_list;
    const TargetList now = list_targets(j, in_use);
    if (j != predicted) {  // mispredicted (rare): draw now
      if constexpr (!Csr) {
        draw.start(net.seed, net.n, net.k, j, lists[in_use].data());
        draw.finish();
      }
      prefetch_targets(now.tgt, 0, now.n);
    }
    predicted = queue.top().id;
    predicted_list = 1 - in_use;
    const TargetList next = list_targets(predicted, predicted_list);
    queue.prefetch_reset_path(predicted);
    __builtin_prefetch(&s.spike_count[predicted]);
    int64_t prefetched = 0;  // of next's targets (random graph: drawn eight at a time between the kicks)
    if constexpr (Csr) prefetch_targets(next.tgt, 0, next.n);
    else draw.start(net.seed, net.n, net.k, predicted, lists[predicted_list].data());

    int32_t status = 0;
    const double inv_scale = Mo == LifPsi ? std::exp(offset / omega0) : 1.0;  // psi~ = psi exp(Phi/omega)
    // Locals: the stores to the keys could alias net's fields as far as the compiler knows.
    const double* const weights = net.weights;
    const double kick_psi = net.coupling0 * inv_scale, crossing_psi = psi_th * inv_scale;
    for (int64_t r = 0; r < now.n; ++r) {
      if constexpr (!Csr) {
        if ((r & 7) == 0 && !draw.done()) {
          const int64_t found = draw.step();
          prefetch_targets(next.tgt, prefetched, found);
          prefetched = found;
        }
#if defined(__AVX512F__) && defined(__AVX512VL__)
        if constexpr (Mo == LifPsi) {  // eight distinct targets at once
          if ((r & 7) == 0 && r + 8 <= now.n) {
            __m512d add = _mm512_set1_pd(kick_psi);
            if (weights) add = _mm512_mul_pd(add, _mm512_loadu_pd(weights + now.first_synapse + r));
            const __m512d after = queue.add8(now.tgt + r, add);
            if (_mm512_cmp_pd_mask(after, _mm512_set1_pd(crossing_psi), _CMP_GT_OQ) != 0xff) status = ERR_CROSSING;
            r += 7;
            continue;
          }
        }
#endif
      }
      const int64_t i = now.tgt[r];
      const double w = weights ? weights[now.first_synapse + r] : 1.0;
      if constexpr (Mo == Hetero) {
        const double omega = net.omega[i];
        const double before = s.phase[i] + omega * (t - s.last_time[i]);
        const double c = net.coupling[i] * w;
        const double after = kick_clamped<M>(table, net.phase_th, before, c, omega);
        if (const int32_t st = kick_status<M>(after, net.phase_th, c)) status = st;
        s.phase[i] = after;
        s.last_time[i] = t;
        queue.update(i, t + (net.phase_th - after) / omega);
      } else if constexpr (Mo == LifPsi) {
        const double after = lif_ptc_psi(queue.key[i], kick_psi * w);
        if (!(after > crossing_psi)) status = ERR_CROSSING;
        queue.update(i, after);
      } else {
        const double before = -queue.key[i] + offset;
        const double c = net.coupling0 * w;
        const double after = kick_clamped<M>(table, net.phase_th, before, c, omega0);
        if (const int32_t st = kick_status<M>(after, net.phase_th, c)) status = st;
        queue.update(i, -(after - offset));
      }
    }
    if constexpr (!Csr) {
      draw.finish();
      prefetch_targets(next.tgt, prefetched, next.n);
    }
    if (status != 0) {
      s.n_spikes += count + 1;
      return status;
    }
    if constexpr (Mo != Hetero) {
      if (offset > renormalise_at) {  // the same map for every key: the order is unchanged
        const double scale = 1.0 / inv_scale;  // LifPsi: psi~ <- psi~ exp(-Phi/omega); Phase: -phi~ <- -phi~ - Phi
        for (int64_t h = 0; h < net.n; ++h) {
          if constexpr (Mo == LifPsi) queue.key[h] *= scale;
          else queue.key[h] -= offset;
        }
        queue.build();  // rounding may tie two keys: the tree breaks the tie by id again
        s.time_base = t;
        s.offset = 0.0;
      }
    }
    ++s.spike_count[j];
  }
  s.n_spikes += max_spikes;
  return OK_MAX_SPIKES;
}

template <int M, int Mo>
int32_t dispatch_graph(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
                       int64_t* out_id, EventsSamples* smp) {
  return net.csr_indptr ? run<M, Mo, true>(net, s, max_spikes, t_end, out_time, out_id, smp)
                        : run<M, Mo, false>(net, s, max_spikes, t_end, out_time, out_id, smp);
}

template <int M>
int32_t dispatch_model(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
                       int64_t* out_id, EventsSamples* smp) {
  if (net.heterogeneous) return dispatch_graph<M, Hetero>(net, s, max_spikes, t_end, out_time, out_id, smp);
  if constexpr (M == LIF) return dispatch_graph<M, LifPsi>(net, s, max_spikes, t_end, out_time, out_id, smp);
  else return dispatch_graph<M, Phase>(net, s, max_spikes, t_end, out_time, out_id, smp);
}

}  // namespace

extern "C" {

// Builds the queue from the initial phases (homogeneous: phase0 -> keys -phase0 with Phi = 0;
// heterogeneous: s.phase must hold the phases, last_time the start time).
int32_t exodus_events_init(const EventsNetwork* net, EventsState* s, const double* phase0, double t0) {
  if (net == nullptr || s == nullptr || net->n < 2) return ERR_ARGS;
  MinTree queue(s->key, s->tree, net->n);
  for (int64_t i = 0; i < net->n; ++i) {
    if (net->heterogeneous) {
      s->phase[i] = phase0[i];
      s->last_time[i] = t0;
      queue.key[i] = t0 + (net->phase_th - phase0[i]) / net->omega[i];
    } else if (net->model == LIF) {
      queue.key[i] = lif_psi_of_phase(phase0[i], net->omega0);
    } else {
      queue.key[i] = -phase0[i];
    }
  }
  queue.build();
  s->offset = 0.0;
  s->time_base = t0;
  s->time = t0;
  s->n_spikes = 0;
  return OK_MAX_SPIKES;
}

// Simulates up to max_spikes spikes or until the next spike would come after t_end. Writes the
// spikes to out_time / out_id (may be null) and returns a Status; *n_done = spikes simulated.
int32_t exodus_events_run(const EventsNetwork* net, EventsState* s, int64_t max_spikes, double t_end,
                          double* out_time, int64_t* out_id, EventsSamples* samples, int64_t* n_done) {
  if (net == nullptr || s == nullptr || n_done == nullptr || max_spikes < 0) return ERR_ARGS;
  const int64_t before = s->n_spikes;  // run() adds the spikes it simulated
  int32_t status;
  switch (net->model) {
    case LIF: status = dispatch_model<LIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples); break;
    case QIF: status = dispatch_model<QIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples); break;
    case EIF: status = dispatch_model<EIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples); break;
    default: return ERR_ARGS;
  }
  *n_done = s->n_spikes - before;
  return status;
}

// Buffer sizes the caller allocates for n neurons: sizes[0] doubles of keys, sizes[1] bytes of
// group offsets and inner nodes (both include the alignment padding).
int32_t exodus_events_queue_sizes(int64_t n, int64_t* sizes) {
  if (n < 1 || sizes == nullptr) return ERR_ARGS;
  sizes[0] = n + KEY_PADDING;
  sizes[1] = MinTree::node_buffer_bytes(n);
  return OK_MAX_SPIKES;
}

// The PTCs of events_neurons.h applied elementwise (for the tests): out[i] = PTC(phase[i], c[i], omega[i]).
int32_t exodus_events_ptc(int32_t model, int64_t n, const double* phase, const double* c, const double* omega,
                          double* out, const double* eif_v, const double* eif_slope, int64_t eif_n, double eif_phase_lo,
                          double eif_step) {
  const EifTable table{eif_v, eif_slope, eif_n, eif_phase_lo, eif_step};
  if (model == EIF && (eif_v == nullptr || eif_slope == nullptr || eif_n < 2)) return ERR_ARGS;
  for (int64_t i = 0; i < n; ++i) {
    if (model == LIF) out[i] = lif_ptc(phase[i], c[i], omega[i]);
    else if (model == QIF) out[i] = qif_ptc(phase[i], c[i]);
    else if (model == EIF) out[i] = eif_ptc(table, phase[i], c[i]);
    else return ERR_ARGS;
  }
  return OK_MAX_SPIKES;
}

// The queue alone (for the tests): builds it from keys0 (n,), applies the m updates
// key[ids[u]] <- new_keys[u] in order and reads the top after every `batch` updates (and after
// the last): top_ids[u] is its id there, -1 elsewhere. Between reads raises stay queued, as
// between a spike's kicks.
int32_t exodus_events_queue_replay(int64_t n, const double* keys0, int64_t m, const int64_t* ids,
                                   const double* new_keys, int64_t batch, int64_t* top_ids) {
  if (n < 1 || keys0 == nullptr || batch < 1 ||
      (m > 0 && (ids == nullptr || new_keys == nullptr || top_ids == nullptr)))
    return ERR_ARGS;
  for (int64_t u = 0; u < m; ++u)
    if (ids[u] < 0 || ids[u] >= n) return ERR_ARGS;
  std::vector<double> keys(size_t(n + KEY_PADDING));
  std::vector<uint8_t> nodes(size_t(MinTree::node_buffer_bytes(n)));
  MinTree queue(keys.data(), nodes.data(), n);
  std::copy(keys0, keys0 + n, queue.key);
  queue.build();
  for (int64_t u = 0; u < m; ++u) {
    queue.update(ids[u], new_keys[u]);
    top_ids[u] = (u + 1) % batch == 0 || u == m - 1 ? queue.top().id : -1;
  }
  return OK_MAX_SPIKES;
}

// The K random targets of presynaptic neuron j (for the tests and the Python adjoint).
int32_t exodus_events_targets(uint64_t seed, int64_t n, int64_t k, int64_t j, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || j < 0 || j >= n || out == nullptr) return ERR_ARGS;
  static thread_local TargetDraw draw(0);  // kept between calls (the O(N) reference asks per spike)
  draw.reserve(n);
  draw.start(seed, n, k, j, out);
  draw.finish();
  return OK_MAX_SPIKES;
}

// Targets of m presynaptic neurons js[0..m) into out (m x k), row r = targets of js[r].
int32_t exodus_events_targets_many(uint64_t seed, int64_t n, int64_t k, const int64_t* js, int64_t m, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || (m > 0 && (js == nullptr || out == nullptr))) return ERR_ARGS;
  static thread_local TargetDraw draw(0);
  draw.reserve(n);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t j = js[r];
    if (j < 0 || j >= n) return ERR_ARGS;
    draw.start(seed, n, k, j, out + r * k);
    draw.finish();
  }
  return OK_MAX_SPIKES;
}

}  // extern "C"
