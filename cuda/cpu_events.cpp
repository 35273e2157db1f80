// exodus.events — exact event-based simulation of pulse-coupled networks (SparseProp, Engelken
// 2023; DESIGN.md §8) with O(1) amortised queue work per target and spike (class WindowQueue).
// Sequential by nature: one thread simulates. With threads = 2 a helper thread (class Helper) draws
// the likely next spikers' random targets ahead; results are identical.
//
// Homogeneous drive (every neuron has the same speed omega): the phases live in one priority
// queue (class WindowQueue) as phi~ = phi - Phi (Phi a global offset),
// keyed by -phi~ (the minimum of -phi~ is the maximum of phi~; LIF: by psi~, see enum Mode). The
// top is the next spiker j; Phi <- phi_th - phi~_j advances every phase at once; each target's
// key changes by its PTC; j resets.
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
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "events_neurons.h"

// GCC 12 reports the _mm512_undefined_* inside its own AVX-512 intrinsics as maybe-uninitialized
// (a false positive, hundreds of lines under -Wall).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace exodus_events {

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512CD__) && defined(__AVX512VP2INTERSECT__) && \
    defined(__BMI2__)
#define EXODUS_EVENTS_VP2INTERSECT 1
#else
#define EXODUS_EVENTS_VP2INTERSECT 0
#endif

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

inline uint64_t fmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Draws the K random targets of one presynaptic neuron j into out[0 .. k) (start(), then finish()).
// With AVX-512
// the candidates are hashed eight at once; for N - 1 < 2^32 Lemire's 64 x 64 -> high 64 product
// is exact from two 32 x 32 -> 64 products: with x = x_hi 2^32 + x_lo,
// floor(x r / 2^64) = (x_hi r + (x_lo r >> 32)) >> 32 (no overflow: x_hi r <= 2^64 - 2^33 + 1).
// Repeats (rare: about K^2 / 2N per draw) are removed in one of two ways, with the same result:
//  - with AVX512_VP2INTERSECT (and N - 1 < 2^32), sixteen candidates a vector as 32-bit lanes: a
//    lane repeats if an earlier lane holds its id (vpconflictd) or any earlier vector does
//    (one vp2intersectd per earlier vector, all 16 x 16 pairs at once). No memory is touched:
//    0.06 us per draw of K = 100 at N = 1e6 against 0.25 us for the bit set on one Zen 5 core,
//    whose test-and-set stores hold the next loads back. Past MAX_VECTORS vectors (K near N) the
//    draw restarts with the bit set.
//  - otherwise one bit per neuron (N/8 bytes: 125 KB at N = 1e6, mostly in L2), cleared word by
//    word from out[] when the draw completes.
class TargetDraw {
 public:
  explicit TargetDraw(int64_t n) : bits_(uint64_t(n + 63) / 64, 0) {}
  void reserve(int64_t n) {  // room for ids < n (the bits beyond the old size start clear)
    if (bits_.size() < uint64_t(n + 63) / 64) bits_.resize(uint64_t(n + 63) / 64, 0);
  }
  static uint64_t draw_key(uint64_t seed, int64_t j) { return fmix(seed ^ fmix(uint64_t(j + 1) * GOLDEN)); }
  // Targets of candidates m .. m + 7 of the draw keyed `key` (draw_key), repeats kept (range = N - 1).
  static void candidates8(uint64_t key, uint64_t m, uint64_t range, int64_t j, int64_t* target) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    if (range < (uint64_t(1) << 32)) {
      _mm512_storeu_si512(target, hash8_vector(key, m, range, j));
      return;
    }
#endif
    for (int l = 0; l < 8; ++l) {
      const int64_t cand = int64_t((unsigned __int128)fmix(key + (m + uint64_t(l)) * GOLDEN) * range >> 64);
      target[l] = cand + (cand >= j);
    }
  }
  void start(uint64_t seed, int64_t n, int64_t k, int64_t j, int64_t* out) {
    key_ = draw_key(seed, j);
    range_ = uint64_t(n - 1);
    k_ = k;
    j_ = j;
    out_ = out;
    found_ = 0;
    m_ = 1;
  }
  void finish() {  // draws the targets whose draw start() began
#if EXODUS_EVENTS_VP2INTERSECT
    if (range_ < (uint64_t(1) << 32) && draw_by_vectors()) return;  // else (K near N) with the bit set
#endif
    while (!done()) step();
  }

 private:
  bool done() const { return found_ == k_; }
  void step() {  // the next eight candidates (up to the K-th distinct target)
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
  }
#if EXODUS_EVENTS_VP2INTERSECT
  // The whole draw, sixteen candidates a vector, in locals (members kept in memory cost 10-15 ns
  // a draw: the stores to out[] may alias them). False, with nothing drawn, after MAX_VECTORS
  // vectors without K distinct targets.
  bool draw_by_vectors() {
    const uint64_t key = key_, range = range_;
    const int64_t k = k_, j = j_;
    int64_t* const out = out_;
    int64_t found = 0;
    uint64_t m = 1;
    for (int vectors = 0; vectors < MAX_VECTORS; ++vectors, m += 16) {
      const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(hash8_vector(key, m, range, j))),
                                           _mm512_cvtepi64_epi32(hash8_vector(key, m + 8, range, j)), 1);
      __mmask16 repeat = _mm512_test_epi32_mask(_mm512_conflict_epi32(v), _mm512_set1_epi32(-1));
      for (int p = 0; p < vectors; ++p) {
        __mmask16 in_earlier, in_v;
        _mm512_2intersect_epi32(vector_[p], v, &in_earlier, &in_v);
        repeat |= in_v;
      }
      vector_[vectors] = v;
      unsigned fresh = uint16_t(~repeat);
      const int64_t need = k - found;
      const bool last = __builtin_popcount(fresh) >= need;
      if (last) fresh = _pdep_u32((1u << need) - 1, fresh);  // the first `need` of them (need <= 16 here)
      const int count = __builtin_popcount(fresh);
      const __m512i kept = _mm512_maskz_compress_epi32(__mmask16(fresh), v);
      const unsigned lanes = (1u << count) - 1;  // masked stores: out[] has room for k only
      _mm512_mask_storeu_epi64(out + found, __mmask8(lanes), _mm512_cvtepu32_epi64(_mm512_castsi512_si256(kept)));
      _mm512_mask_storeu_epi64(out + found + 8, __mmask8(lanes >> 8),
                               _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(kept, 1)));
      found += count;
      if (last) {
        found_ = found;
        return true;
      }
    }
    return false;
  }
#endif
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  // Targets of candidates m .. m + 7 of the draw keyed `key` (range = N - 1 < 2^32, j the spiker).
  static __m512i hash8_vector(uint64_t key, uint64_t m, uint64_t range, int64_t j) {
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    __m512i z = _mm512_add_epi64(_mm512_set1_epi64(int64_t(key + m * GOLDEN)),
                                 _mm512_mullo_epi64(lane, _mm512_set1_epi64(int64_t(GOLDEN))));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64(int64_t(0xBF58476D1CE4E5B9ull)));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64(int64_t(0x94D049BB133111EBull)));
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
    const __m512i r = _mm512_set1_epi64(int64_t(range));
    const __m512i high = _mm512_mul_epu32(_mm512_srli_epi64(z, 32), r), low = _mm512_mul_epu32(z, r);
    const __m512i cand = _mm512_srli_epi64(_mm512_add_epi64(high, _mm512_srli_epi64(low, 32)), 32);
    return _mm512_mask_add_epi64(cand, _mm512_cmpge_epi64_mask(cand, _mm512_set1_epi64(j)), cand, _mm512_set1_epi64(1));
  }
#endif
  void hash8(int64_t* target) const { candidates8(key_, m_, range_, j_, target); }  // candidates m_ .. m_ + 7
  // One store per target: a vectorised scatter is slower here.
  __attribute__((optimize("no-tree-vectorize"))) static void clear(uint64_t* bits, const int64_t* out, int64_t k) {
    for (int64_t r = 0; r < k; ++r) bits[uint64_t(out[r]) >> 6] = 0;
  }
#if EXODUS_EVENTS_VP2INTERSECT
  static constexpr int MAX_VECTORS = 64;
  __m512i vector_[MAX_VECTORS];  // this draw's candidate vectors so far
#endif
  std::vector<uint64_t> bits_;
  uint64_t key_ = 0, range_ = 0, m_ = 1;
  int64_t k_ = 0, j_ = 0, found_ = 0;
  int64_t* out_ = nullptr;
};

// The priority queue: a sorted window over the keys (class WindowQueue). The keys live in a flat
// array by neuron id, the simulator's whole state. Only the neurons whose key lies below the
// window's end E ("near": about N / K of them, the next spikers) are listed, as (key, id) entries
// ordered by key then id; every other ("far") neuron is in no structure at all. Invariant: every neuron
// with key < E has an entry holding its current key (in the sorted list or, if its key changed
// after the sweep and stayed below E, in a small side heap); an entry whose key no longer equals
// the neuron's key is stale and skipped. The lowest valid entry is then the lowest key overall
// (every far key is >= E), ties to the lower id. No log N anywhere: a spike costs O(K) plus its
// share of the sweeps (one per ~N / 2K spikes in the balanced network).
// A kick is one read-modify-write of the key and one compare of the new key with E; it touches
// the queue only when the new key is below E (a kick on a near neuron that keeps it near, or
// excitation), which is rare. The spiker's reset makes its entry stale. When the list and the
// heap run out, a sweep over all keys collects the neurons in [E, E + width) and orders them by
// (key, id) (bucketed at once, each bucket sorted when reached); the width adapts so that one O(N)
// sweep serves thousands of spikes.
// Why not a tree over all N neurons (stops 19-20: a 16-ary tournament tree): every kick on a
// group's minimum (1 in 16) re-scanned its group and path, and each reset re-scanned the
// spiker's path through five cache-missing levels at N = 1e6; a kicked far neuron needs nothing here.
struct Entry {
  double key;
  int64_t id;
};

constexpr int64_t KEY_PADDING = 16;  // the caller's key buffer: n + KEY_PADDING doubles (alignment)

inline bool before(double ka, int64_t ia, double kb, int64_t ib) { return ka < kb || (ka == kb && ia < ib); }
// Orders as function objects (inlined by std::sort and the heap functions).
struct EntryBefore {
  bool operator()(const Entry& a, const Entry& b) const { return before(a.key, a.id, b.key, b.id); }
};
struct EntryAfter {  // min-heap order
  bool operator()(const Entry& a, const Entry& b) const { return before(b.key, b.id, a.key, a.id); }
};
inline uintptr_t align_up(uintptr_t raw, uintptr_t bytes) { return (raw + bytes - 1) / bytes * bytes; }
// The keys in the caller's buffer of n + KEY_PADDING doubles, 64-byte aligned (whole-line SIMD loads).
inline double* aligned_keys(void* key_buffer) {
  return reinterpret_cast<double*>(align_up(reinterpret_cast<uintptr_t>(key_buffer), 64));
}

// Minimum of key[0 .. n) ignoring NaN (+inf if none).
inline double min_key(const double* key, int64_t n) {
  int64_t i = 0;
  double m = INFINITY;
#if defined(__AVX512F__)
  __m512d acc0 = _mm512_set1_pd(INFINITY), acc1 = acc0;
  for (; i + 16 <= n; i += 16) {  // min_pd(x, acc) returns acc when x is NaN
    acc0 = _mm512_min_pd(_mm512_loadu_pd(key + i), acc0);
    acc1 = _mm512_min_pd(_mm512_loadu_pd(key + i + 8), acc1);
  }
  m = _mm512_reduce_min_pd(_mm512_min_pd(acc0, acc1));
#endif
  for (; i < n; ++i)
    if (key[i] < m) m = key[i];
  return m;
}

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The second thread of threads = 2 (random graphs only): it draws targets ahead. The targets of
// neuron j are a pure function of (seed, N, K, j), so who draws them changes no result. The
// helper draws them for the window's next entries (the likely next spikers, published by
// WindowQueue::distribute as a plan, with the simulator's position) into a small cache of slots
// keyed by j mod R. The simulator copies a slot out under a sequence lock (a copy the helper
// overwrote meanwhile is detected and dropped) or, on a miss, draws itself: it never waits for
// the helper. The helper spins (with pause) while it has nothing to draw and yields its core
// after ~1 us of that; while HelperSchedule has it off, it sleeps.
// (Also tried, docs/events.md: sharing each O(N) sweep between the threads, and the helper
// listing the next window ahead while the simulator changes keys. Neither gained at N = 1e6.)
class Helper {
 public:
  static bool useful(int64_t n, int64_t k) { return k > 0 && k <= MAX_DRAW_K && n - 1 < (int64_t(1) << 31); }
  Helper(int64_t n, int64_t k, uint64_t seed, int64_t plan_capacity)
      : n_(n), k_(k), seed_(seed), stride_((k + 15) / 16 * 16),
        slots_(slot_count(stride_)),
        plan_capacity_(plan_capacity), header_(new Header[size_t(slots_)]), data_(size_t(slots_ * stride_), 0),
        plan_(new std::atomic<int64_t>[size_t(plan_capacity_)]) {
    thread_ = std::thread([this] { loop(); });  // every member is built by now
  }
  ~Helper() {
    stop_.store(true, std::memory_order_relaxed);
    thread_.join();
  }
  Helper(const Helper&) = delete;
  Helper& operator=(const Helper&) = delete;

  // The simulating thread's side.
  // The window's entries in bucket order (the order the simulator will mostly reach them).
  void publish_plan(const std::vector<Entry>& window) {
    const int64_t m = std::min<int64_t>(int64_t(window.size()), plan_capacity_);
    for (int64_t q = 0; q < m; ++q) plan_[size_t(q)].store(window[size_t(q)].id, std::memory_order_relaxed);
    plan_size_.store(m, std::memory_order_relaxed);
    plan_head_.store(0, std::memory_order_relaxed);
    plan_gen_.store(plan_gen_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  void publish_head(int64_t head) { plan_head_.store(head, std::memory_order_relaxed); }
  // Off: the helper sleeps (see HelperSchedule); the simulator then draws everything itself.
  void set_active(bool on) { active_.store(on, std::memory_order_relaxed); }
  // The K targets of j into out, if the helper has them (false: draw them yourself).
  bool lookup(int64_t j, int64_t* out) const {
    const Header& h = header_[size_t(j & (slots_ - 1))];
    const uint64_t before = h.seq.load(std::memory_order_acquire);
    if ((before & 1) || h.id.load(std::memory_order_relaxed) != j) return false;
    const int32_t* src = &data_[size_t((j & (slots_ - 1)) * stride_)];
    int64_t r = 0;
#if defined(__AVX512F__)
    for (; r + 16 <= k_; r += 16) {
      const __m512i v = _mm512_loadu_si512(src + r);
      _mm512_storeu_si512(out + r, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
      _mm512_storeu_si512(out + r + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
    }
#endif
    for (; r < k_; ++r) out[r] = src[r];
    std::atomic_thread_fence(std::memory_order_acquire);
    return h.seq.load(std::memory_order_relaxed) == before;  // else overwritten while copied
  }

 private:
  static constexpr int64_t MAX_DRAW_K = 1 << 16;
  static constexpr int64_t AHEAD = 16;  // plan entries drawn ahead of the simulator's position
  static constexpr int64_t IDLE_SPINS = 64;  // pauses (about 1 us in all) before the helper yields its core
  static int64_t slot_count(int64_t stride) {  // a power of two in [16, 256], about 1 MB of slots at most
    int64_t slots = 16;
    while (slots < 256 && 2 * slots * 4 * stride <= (int64_t(1) << 20)) slots *= 2;
    return slots;
  }
  struct alignas(64) Header {
    std::atomic<uint64_t> seq{0};  // odd while the slot is written
    std::atomic<int64_t> id{-1};
  };

  void loop() {
    TargetDraw draw(n_);
    std::vector<int64_t> drawn(static_cast<size_t>(k_));
    int64_t gen = -1, q = 0, idle = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      if (!active_.load(std::memory_order_relaxed)) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      const int64_t g = plan_gen_.load(std::memory_order_acquire);
      if (g != gen) gen = g, q = 0;  // a new window
      const int64_t size = plan_size_.load(std::memory_order_relaxed), head = plan_head_.load(std::memory_order_relaxed);
      q = std::max(q, head);
      if (q < size && q < head + AHEAD) {
        const int64_t j = plan_[size_t(q++)].load(std::memory_order_relaxed);
        if (j >= 0 && j < n_) fill(draw, drawn.data(), j);
        idle = 0;
      } else if (++idle < IDLE_SPINS) {
        spin_pause();
      } else {  // idle a while: let a thread sharing this core run (the simulator, if the OS put it here)
        std::this_thread::yield();
        idle = 0;
      }
    }
  }
  void fill(TargetDraw& draw, int64_t* drawn, int64_t j) {
    Header& h = header_[size_t(j & (slots_ - 1))];
    if (h.id.load(std::memory_order_relaxed) == j) return;  // there already
    draw.start(seed_, n_, k_, j, drawn);
    draw.finish();
    const uint64_t seq = h.seq.load(std::memory_order_relaxed);
    h.seq.store(seq + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    h.id.store(j, std::memory_order_relaxed);
    int32_t* dst = &data_[size_t((j & (slots_ - 1)) * stride_)];
    for (int64_t r = 0; r < k_; ++r) dst[r] = int32_t(drawn[r]);
    h.seq.store(seq + 2, std::memory_order_release);
  }

  const int64_t n_, k_;
  const uint64_t seed_;
  const int64_t stride_, slots_, plan_capacity_;
  std::unique_ptr<Header[]> header_;
  std::vector<int32_t> data_;  // (slots, stride) targets (N - 1 < 2^31)
  std::unique_ptr<std::atomic<int64_t>[]> plan_;
  alignas(64) std::atomic<int64_t> plan_gen_{0};
  std::atomic<int64_t> plan_size_{0};
  alignas(64) std::atomic<int64_t> plan_head_{0};  // written every spike: a line of its own
  alignas(64) std::atomic<bool> stop_{false}, active_{true};
  std::thread thread_;  // last: starts once everything above is built
};

class WindowQueue {
 public:
  double* const key;  // (n,) by neuron id: the caller's buffer, aligned here
  const int64_t n;
  Helper* helper = nullptr;  // threads = 2: told the plan and the position (see class Helper)

  // kicks_per_spike: the mean out-degree (0: unknown). The window aims at N / K entries, about
  // the spikes between two kicks on one neuron: a wider one fills with entries that go stale, a
  // narrower one sweeps more often (measured at N = 1e4 .. 1e6, K = 100: 1-2 N / K is best).
  WindowQueue(void* key_buffer, int64_t n_, double kicks_per_spike = 0.0)
      : key(aligned_keys(key_buffer)), n(n_) {
    const double target = kicks_per_spike >= 1.0 ? double(n) / kicks_per_spike : 8.0 * std::sqrt(double(n));
    target_ = int64_t(std::clamp(target, 64.0, 1e9));
  }
  WindowQueue(const WindowQueue&) = delete;
  WindowQueue& operator=(const WindowQueue&) = delete;

  // The next spiker (lowest key, then lowest id); {+inf, 0} when no key is finite.
  Entry top() {
    for (;;) {
      while (head_ < near_.size()) {
        if (head_ == sorted_end_) sort_next_bucket();
        if (key[near_[head_].id] == near_[head_].key) break;
        ++head_;  // stale: kicked or spiked since the sweep
      }
      while (!side_.empty() && key[side_.front().id] != side_.front().key) {
        std::pop_heap(side_.begin(), side_.end(), EntryAfter());
        side_.pop_back();
      }
      if (head_ < near_.size() || !side_.empty()) break;
      if (!sweep()) return {INFINITY, 0};
    }
    if (head_ + PREFETCH_AHEAD < near_.size()) __builtin_prefetch(&key[near_[head_ + PREFETCH_AHEAD].id]);
    if (helper) helper->publish_head(int64_t(head_));
    if (head_ == near_.size()) return side_.front();
    if (!side_.empty() && EntryBefore()(side_.front(), near_[head_])) return side_.front();
    return near_[head_];
  }
  void update(int64_t i, double new_key) {
    key[i] = new_key;
    if (new_key < end_) push_side(i, new_key);
  }
#if defined(__AVX512F__) && defined(__AVX512VL__)
  // update(ids[l], key[ids[l]] + add[l]) for eight distinct neurons (a random graph's targets); returns
  // the new keys. Scalar loads and stores around one vector add and compare: on Zen 5 that beat
  // the gather + scatter pair (0.25 -> 0.23 us a spike at N = 1e6).
  __m512d add8(const int64_t* ids, __m512d add) {
    double* const k = key;
    const __m512d after = _mm512_add_pd(_mm512_set_pd(k[ids[7]], k[ids[6]], k[ids[5]], k[ids[4]], k[ids[3]], k[ids[2]],
                                                      k[ids[1]], k[ids[0]]), add);
    alignas(64) double a[8];
    _mm512_store_pd(a, after);
    for (int l = 0; l < 8; ++l) k[ids[l]] = a[l];
    if (const __mmask8 near = _mm512_cmp_pd_mask(after, _mm512_set1_pd(end_), _CMP_LT_OQ)) {
      for (unsigned m = near; m; m &= m - 1) push_side(ids[__builtin_ctz(m)], a[__builtin_ctz(m)]);
    }
    return after;
  }
#endif
  void prefetch(int64_t i) const { __builtin_prefetch(&key[i]); }
  // Forget the window (after the keys changed wholesale): the next top() sweeps from the minimum.
  // `key_scale`: the factor the keys were multiplied by (keeps the width in proportion).
  void rebuild(double key_scale = 1.0) {
    if (key_scale > 0.0 && std::isfinite(key_scale)) width_ *= key_scale;
    near_.clear();
    side_.clear();
    head_ = sorted_end_ = 0;
    end_ = -INFINITY;
  }

 private:
  static constexpr size_t PREFETCH_AHEAD = 8;  // list entries whose keys top() prefetches ahead

  __attribute__((noinline)) void push_side(int64_t i, double k) {
    side_.push_back({k, i});
    std::push_heap(side_.begin(), side_.end(), EntryAfter());
  }
  // A new window [E, E + width) (from the minimum key after rebuild()): the entries bucketed, the
  // width adapted towards target_ entries. Returns false when no key is finite.
  bool sweep() {
    double lo = end_;  // every key is >= lo
    if (!(lo > -INFINITY) || !(width_ > 0.0 && std::isfinite(width_))) {
      lo = min_key(key, n);
      if (!(lo < INFINITY)) return false;
      if (!(width_ > 0.0 && std::isfinite(width_))) width_ = initial_width(lo);
    }
    for (;;) {
      end_ = lo + width_;
      if (!(end_ > lo)) end_ = std::nextafter(lo, INFINITY);
      collect();
      if (!near_.empty()) break;
      lo = min_key(key, n);  // nothing in [lo, E): start from the minimum with a wider window
      if (!(lo < INFINITY)) return false;
      width_ *= 8.0;
    }
    distribute(lo);
    const double ratio = double(target_) / double(near_.size());
    if (ratio < 0.5 || ratio > 2.0) width_ *= std::clamp(ratio, 0.125, 8.0);
    return true;
  }
  // Orders the window's entries by bucket: B = size / 4 equal key ranges over [lo, E) (a counting
  // sort, O(size); the bucket index is monotone in the key, so equal keys share a bucket). Each
  // bucket is sorted by (key, id) only when top() reaches it: a sort of all entries would cost
  // O(log size) mispredicted compares per entry, and a third of them go stale unread.
  void distribute(double lo) {
    const int64_t m = int64_t(near_.size());
    int64_t buckets = std::max<int64_t>(1, m / 4);
    double scale = double(buckets) / (end_ - lo);
    if (!(scale > 0.0 && scale < INFINITY)) buckets = 1, scale = 0.0;
    const auto bucket = [&](double k) { return std::min<int64_t>(buckets - 1, int64_t((k - lo) * scale)); };
    bucket_end_.assign(size_t(buckets) + 1, 0);
    for (const Entry& e : near_) ++bucket_end_[size_t(bucket(e.key)) + 1];
    for (int64_t b = 0; b < buckets; ++b) bucket_end_[size_t(b) + 1] += bucket_end_[size_t(b)];
    scratch_.resize(near_.size());
    for (const Entry& e : near_) scratch_[size_t(bucket_end_[size_t(bucket(e.key))]++)] = e;  // now: bucket ends
    near_.swap(scratch_);
    head_ = sorted_end_ = 0;
    next_bucket_ = 0;
    if (helper) helper->publish_plan(near_);
  }
  void sort_next_bucket() {  // [sorted_end_, end of the next non-empty bucket) sorted by (key, id)
    while (bucket_end_[next_bucket_] == int64_t(sorted_end_)) ++next_bucket_;
    const size_t end = size_t(bucket_end_[next_bucket_++]);
    std::sort(near_.begin() + std::ptrdiff_t(sorted_end_), near_.begin() + std::ptrdiff_t(end), EntryBefore());
    sorted_end_ = end;
  }
  void collect() {  // the entries of the neurons with key < end_, in id order
    near_.clear();
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512d end = _mm512_set1_pd(end_);
    for (; i + 8 <= n; i += 8) {
      __mmask8 below = _mm512_cmp_pd_mask(_mm512_load_pd(key + i), end, _CMP_LT_OQ);
      for (; below; below &= below - 1) near_.push_back({key[i + __builtin_ctz(below)], i + __builtin_ctz(below)});
    }
#endif
    for (; i < n; ++i)
      if (key[i] < end_) near_.push_back({key[i], i});
  }
  double initial_width(double m) const {  // from a strided sample: its (target / n) quantile above m
    std::vector<double> sample;
    const int64_t stride = std::max<int64_t>(1, n / 4096);
    for (int64_t i = 0; i < n; i += stride)
      if (std::isfinite(key[i])) sample.push_back(key[i]);
    if (sample.empty()) return 1.0;
    const size_t q = std::min(sample.size() - 1, size_t(std::max<int64_t>(1, int64_t(sample.size()) * target_ / n)));
    std::nth_element(sample.begin(), sample.begin() + std::ptrdiff_t(q), sample.end());
    const double w = sample[q] - m;
    return w > 0.0 ? w : std::max(1.0, std::fabs(m)) * 1e-3;
  }

  double end_ = -INFINITY;     // E: the window's end; every key >= E is far
  double width_ = 0.0;         // E - (window start) at the next sweep (0: not yet estimated)
  int64_t target_;             // entries wanted per sweep
  std::vector<Entry> near_;    // the window's entries, by bucket; [0, head_) consumed, [0, sorted_end_) sorted
  size_t head_ = 0, sorted_end_ = 0;
  std::vector<int64_t> bucket_end_;  // (buckets,) end of each bucket in near_
  size_t next_bucket_ = 0;           // the first bucket not yet sorted
  std::vector<Entry> scratch_;
  std::vector<Entry> side_;    // entries made after the sweep (a min-heap)
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
  void* key;            // (n + KEY_PADDING,) doubles: the queue's keys by neuron (see class WindowQueue)
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
double phase_at(const EventsNetwork& net, const EventsState& s, const WindowQueue& queue, int64_t i, double t) {
  if constexpr (Mo == Hetero) return s.phase[i] + net.omega[i] * (t - s.last_time[i]);
  const double key = queue.key[i];
  const double tilde = Mo == LifPsi ? lif_phase_of_psi(key, net.omega0) : -key;
  return tilde + (t - s.time_base) * net.omega0;
}

template <int M, int Mo>
void write_samples_before(const EventsNetwork& net, const EventsState& s, const WindowQueue& queue, const EifTable& table,
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

// threads = 2: is the helper worth its core here? A helper on a free core saves the simulator its
// draws (N = 1e6: 0.21 -> 0.17 us a spike); on a busy core, or on an SMT sibling of the
// simulator's (a VM's two vCPUs can be), it slowed the simulator down (0.23 -> 0.31 measured).
// So the simulator times one block of spikes with the helper and one without, keeps the faster
// way for the next 16 blocks (twice as many each time the same way wins again, up to 128), then
// tries both again. Results never depend on it. ScheduleRule is the decision alone, without the
// clock (exodus_events_schedule_replay replays it for the tests); HelperSchedule times the blocks.
class ScheduleRule {
 public:
  static constexpr int MIN_KEEP = 16, MAX_KEEP = 128;  // blocks
  bool on() const { return on_; }
  // The block just ended took `seconds` (`disturbed`: it held an O(N) renormalisation, ~20 %
  // longer whoever draws: not a fair trial). Returns whether the helper works in the next block.
  bool next(double seconds, bool disturbed) {
    if (disturbed && (phase_ == TryOn || phase_ == TryOff)) return phase_ = TryOn, on_ = true;  // try again
    switch (phase_) {
      case Warmup: phase_ = TryOn; break;  // the run's first block (first sweep, cold caches): not a trial
      case TryOn: with_ = seconds, phase_ = TryOff, on_ = false; break;
      case TryOff: {  // the same choice again: keep it twice as long (up to MAX_KEEP blocks)
        const bool on = with_ <= seconds;
        keep_ = on == on_before_ ? std::min(2 * keep_, MAX_KEEP) : MIN_KEEP;
        on_before_ = on;
        on_ = on, phase_ = Keep, left_ = keep_;
        break;
      }
      case Keep: if (--left_ == 0) phase_ = TryOn, on_ = true; break;
    }
    return on_;
  }

 private:
  enum Phase { Warmup, TryOn, TryOff, Keep };
  bool on_ = true;
  Phase phase_ = Warmup;
  int left_ = 0, keep_ = MIN_KEEP;
  bool on_before_ = true;
  double with_ = 0.0;
};

class HelperSchedule {
 public:
  static constexpr int64_t BLOCK = int64_t(1) << 15;  // spikes (about 6 ms at N = 1e6)
  explicit HelperSchedule(Helper* helper) : helper_(helper) {}
  bool on() const { return helper_ != nullptr && rule_.on(); }
  void disturbed() { disturbed_ = true; }  // this block holds an O(N) renormalisation
  void at_block() {  // call every BLOCK spikes (a no-op without a helper)
    if (helper_ == nullptr) return;
    const auto now = std::chrono::steady_clock::now();
    const bool was_on = rule_.on();
    const bool on = rule_.next(std::chrono::duration<double>(now - last_).count(), disturbed_);
    last_ = now;
    disturbed_ = false;
    if (on != was_on) helper_->set_active(on);
  }

 private:
  Helper* const helper_;
  bool disturbed_ = false;
  ScheduleRule rule_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

template <int M, int Mo, bool Csr>
int32_t run(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
            int64_t* out_id, EventsSamples* smp, int32_t threads) {
  std::unique_ptr<Helper> helper;  // threads = 2 (declared first: it outlives the queue's pointer)
  if (!Csr && threads >= 2 && Helper::useful(net.n, net.k)) {
    try {  // the plan: the first entries of a window (4 N / K: twice the largest the width aims at)
      helper.reset(new Helper(net.n, net.k, net.seed, std::min<int64_t>(net.n, 4 * (net.n / net.k) + 4096)));
    } catch (...) {  // no thread (or no memory for its slots): simulate alone
      helper.reset();
    }
  }
  WindowQueue queue(s.key, net.n, Csr ? double(net.csr_indptr[net.n]) / double(net.n) : double(net.k));
  queue.helper = helper.get();
  const EifTable table{net.eif_v, net.eif_slope, net.eif_n, net.eif_phase_lo, net.eif_step};
  TargetDraw draw(Csr ? 1 : net.n);
  HelperSchedule schedule(helper.get());  // whether the helper is worth it here (off without one)
  const auto draw_targets = [&](int64_t j, int64_t* out) {  // from the helper if it has them
    if (schedule.on() && helper->lookup(j, out)) return;
    draw.start(net.seed, net.n, net.k, j, out);
    draw.finish();
  };
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
  // The next spiker's keys are prefetched (a spike ahead) unless they likely stay in the last-level
  // cache (keys <= 16 MB: half of a 32 MB L3; sysconf reports the whole host's L3 in a VM): there
  // the K prefetches cost more than they save (random LIF graph on one Zen 5 core: N = 1e6, 8 MB
  // of keys: 0.24 -> 0.23 us a spike without; N = 1e7: 0.57 with, 0.93 without).
  const bool prefetch_keys = Csr || Mo != LifPsi || net.n > (int64_t(1) << 21);
  const auto prefetch_targets = [&](const TargetList& list) {
    for (int64_t r = 0; r < list.n; ++r) {
      const int64_t* const tgt = list.tgt;
      if (prefetch_keys) queue.prefetch(tgt[r]);
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
  // Renormalise the global offset once Phi > 16 omega0 (LifPsi: psi~ stays within a factor e^16 of
  // psi, far from overflow) or Phi > 16 (Phase): phi~ + Phi then stays exact to ~16 eps over
  // arbitrarily long runs; the O(N) pass (and the queue's new sweep) comes once per ~7 tau of
  // simulated time (LIF: 2e5 spikes at N = 1e6).
  const double renormalise_at = Mo == LifPsi ? 16.0 * omega0 : 16.0;
  // LifPsi: a kick adds coupling0 w e^{Phi/omega} to psi~, so with coupling0 > 0 and no weights
  // (all w = 1: pure inhibition) no kick can bring psi~ down to threshold; the check costs 4 %.
  const bool lif_may_cross = !(net.coupling0 > 0.0) || net.weights != nullptr;
  const double psi_th = lif_psi_of_phase(net.phase_th, omega0);  // LifPsi: psi at threshold and reset
  const double psi_reset = lif_psi_of_phase(net.phase_reset, omega0);
  for (int64_t count = 0; count < max_spikes; ++count) {
    if (count > 0 && (count & (HelperSchedule::BLOCK - 1)) == 0) schedule.at_block();
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
    // LifPsi: psi~ = psi exp(Phi/omega), and the top is at threshold: exp(Phi/omega) = psi~_j / psi_th
    // (no exp: the one transcendental per spike is the log for t).
    const double inv_scale = Mo == LifPsi ? top.key / psi_th : 1.0;
    if (out_time) out_time[count] = t;
    if (out_id) out_id[count] = j;

    // The spiker resets first (it is not its own target, so the order does not matter, and the
    // queue's top is a function of the keys alone). The new top is then almost always the next spiker:
    // its targets are drawn and their keys prefetched now, so that their cache misses overlap
    // this spike's kicks instead of stalling the next spike (at N = 1e6 the keys are 8 MB).
    if constexpr (Mo == Hetero) {
      s.phase[j] = net.phase_reset;
      s.last_time[j] = t;
      queue.update(j, t + (net.phase_th - net.phase_reset) / net.omega[j]);
    } else if constexpr (Mo == LifPsi) {
      queue.update(j, psi_reset * inv_scale);
    } else {
      queue.update(j, -(net.phase_reset - offset));
    }
    const int in_use = j == predicted ? predicted_list : 1 - predicted_list;
    const TargetList now = list_targets(j, in_use);
    if (j != predicted) {  // mispredicted (rare): draw now
      if constexpr (!Csr) draw_targets(j, lists[in_use].data());
      prefetch_targets(now);
    }
    predicted = queue.top().id;
    predicted_list = 1 - in_use;
    const TargetList next = list_targets(predicted, predicted_list);
    __builtin_prefetch(&s.spike_count[predicted]);
    if constexpr (!Csr) draw_targets(predicted, lists[predicted_list].data());  // whole, before the kicks (interleaved: 10 % slower)
    prefetch_targets(next);

    int32_t status = 0;
    // Locals: the stores to the keys could alias net's fields as far as the compiler knows.
    const double* const weights = net.weights;
    const double kick_psi = net.coupling0 * inv_scale, crossing_psi = psi_th * inv_scale;
    for (int64_t r = 0; r < now.n; ++r) {
      if constexpr (!Csr) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
        if constexpr (Mo == LifPsi) {  // eight distinct targets at once
          if ((r & 7) == 0 && r + 8 <= now.n) {
            __m512d add = _mm512_set1_pd(kick_psi);
            if (weights) add = _mm512_mul_pd(add, _mm512_loadu_pd(weights + now.first_synapse + r));
            const __m512d after = queue.add8(now.tgt + r, add);
            if (lif_may_cross && _mm512_cmp_pd_mask(after, _mm512_set1_pd(crossing_psi), _CMP_GT_OQ) != 0xff)
              status = ERR_CROSSING;
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
        if (lif_may_cross && !(after > crossing_psi)) status = ERR_CROSSING;
        queue.update(i, after);
      } else {
        const double before = -queue.key[i] + offset;
        const double c = net.coupling0 * w;
        const double after = kick_clamped<M>(table, net.phase_th, before, c, omega0);
        if (const int32_t st = kick_status<M>(after, net.phase_th, c)) status = st;
        queue.update(i, -(after - offset));
      }
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
        queue.rebuild(Mo == LifPsi ? scale : 1.0);  // the next top() sweeps the rescaled keys
        schedule.disturbed();
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
                       int64_t* out_id, EventsSamples* smp, int32_t threads) {
  return net.csr_indptr ? run<M, Mo, true>(net, s, max_spikes, t_end, out_time, out_id, smp, threads)
                        : run<M, Mo, false>(net, s, max_spikes, t_end, out_time, out_id, smp, threads);
}

template <int M>
int32_t dispatch_model(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
                       int64_t* out_id, EventsSamples* smp, int32_t threads) {
  if (net.heterogeneous) return dispatch_graph<M, Hetero>(net, s, max_spikes, t_end, out_time, out_id, smp, threads);
  if constexpr (M == LIF) return dispatch_graph<M, LifPsi>(net, s, max_spikes, t_end, out_time, out_id, smp, threads);
  else return dispatch_graph<M, Phase>(net, s, max_spikes, t_end, out_time, out_id, smp, threads);
}

}  // namespace

extern "C" {

// Builds the queue from the initial phases (homogeneous: phase0 -> keys -phase0 with Phi = 0;
// heterogeneous: s.phase must hold the phases, last_time the start time).
int32_t exodus_events_init(const EventsNetwork* net, EventsState* s, const double* phase0, double t0) {
  if (net == nullptr || s == nullptr || net->n < 2) return ERR_ARGS;
  double* const key = aligned_keys(s->key);  // run()'s queue lists them at its first top()
  for (int64_t i = 0; i < net->n; ++i) {
    if (net->heterogeneous) {
      s->phase[i] = phase0[i];
      s->last_time[i] = t0;
      key[i] = t0 + (net->phase_th - phase0[i]) / net->omega[i];
    } else if (net->model == LIF) {
      key[i] = lif_psi_of_phase(phase0[i], net->omega0);
    } else {
      key[i] = -phase0[i];
    }
  }
  s->offset = 0.0;
  s->time_base = t0;
  s->time = t0;
  s->n_spikes = 0;
  return OK_MAX_SPIKES;
}

// Simulates up to max_spikes spikes or until the next spike would come after t_end. Writes the
// spikes to out_time / out_id (may be null) and returns a Status; *n_done = spikes simulated.
// threads: 1, or 2 for a helper thread (class Helper; the same results).
int32_t exodus_events_run(const EventsNetwork* net, EventsState* s, int64_t max_spikes, double t_end,
                          double* out_time, int64_t* out_id, EventsSamples* samples, int32_t threads, int64_t* n_done) {
  if (net == nullptr || s == nullptr || n_done == nullptr || max_spikes < 0 || threads < 1) return ERR_ARGS;
  const int64_t before = s->n_spikes;  // run() adds the spikes it simulated
  int32_t status;
  switch (net->model) {
    case LIF: status = dispatch_model<LIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples, threads); break;
    case QIF: status = dispatch_model<QIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples, threads); break;
    case EIF: status = dispatch_model<EIF>(*net, *s, max_spikes, t_end, out_time, out_id, samples, threads); break;
    default: return ERR_ARGS;
  }
  *n_done = s->n_spikes - before;
  return status;
}

// Doubles of the key buffer the caller allocates for n neurons (with the alignment padding); -1
// for n < 1.
int64_t exodus_events_key_count(int64_t n) { return n < 1 ? -1 : n + KEY_PADDING; }

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
  WindowQueue queue(keys.data(), n);
  std::copy(keys0, keys0 + n, queue.key);
  for (int64_t u = 0; u < m; ++u) {
    queue.update(ids[u], new_keys[u]);
    top_ids[u] = (u + 1) % batch == 0 || u == m - 1 ? queue.top().id : -1;
  }
  return OK_MAX_SPIKES;
}

// HelperSchedule's rule alone (for the tests), m blocks: the helper works in block 0; block b
// takes seconds_on[b] if the helper works in it, else seconds_off[b] (disturbed[b] != 0: it held a
// renormalisation); on[b] = 1 if the helper works in block b.
int32_t exodus_events_schedule_replay(int64_t m, const double* seconds_on, const double* seconds_off,
                                      const int32_t* disturbed, int32_t* on) {
  if (m < 0 || (m > 0 && (seconds_on == nullptr || seconds_off == nullptr || disturbed == nullptr || on == nullptr)))
    return ERR_ARGS;
  ScheduleRule rule;
  for (int64_t b = 0; b < m; ++b) {
    on[b] = rule.on();
    rule.next(rule.on() ? seconds_on[b] : seconds_off[b], disturbed[b] != 0);
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
