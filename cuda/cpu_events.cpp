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

#include "events_neurons.h"

namespace exodus_events {

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

inline uint64_t fmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The targets drawn so far for one presynaptic neuron: one bit per neuron (N/8 bytes: 125 KB at
// N = 1e6, mostly in L2), cleared word by word after each neuron's draw. A repeat is rare (about
// K^2 / 2N per spike), so the test is a well-predicted branch on one bit.
struct DrawnSet {
  std::vector<uint64_t> bits;
  std::vector<int64_t> words;  // the words set since the last clear
  explicit DrawnSet(int64_t n) : bits(uint64_t(n + 63) / 64, 0) {}
  void reserve(int64_t n) {  // room for ids < n (the bits beyond the old size start clear)
    if (bits.size() < uint64_t(n + 63) / 64) bits.resize(uint64_t(n + 63) / 64, 0);
  }
  void clear() {
    for (const int64_t w : words) bits[w] = 0;
    words.clear();
  }
  bool insert(int64_t x) {  // false if already present
    uint64_t& word = bits[x >> 6];
    const uint64_t bit = uint64_t(1) << (x & 63);
    if (word & bit) return false;
    word |= bit;
    words.push_back(x >> 6);
    return true;
  }
};

// Calls f(target, synapse_index) for the K random targets of j (in draw order).
template <typename F>
inline void random_targets(uint64_t seed, int64_t n, int64_t k, int64_t j, DrawnSet& drawn, F&& f) {
  const uint64_t key = fmix(seed ^ fmix(uint64_t(j + 1) * GOLDEN));
  const uint64_t range = uint64_t(n - 1);
  drawn.clear();
  int64_t found = 0;
  for (uint64_t m = 1; found < k; ++m) {
    const int64_t cand = int64_t((unsigned __int128)fmix(key + m * GOLDEN) * range >> 64);
    const int64_t target = cand + (cand >= j);
    if (drawn.insert(target)) {
      f(target, j * k + found);
      ++found;
    }
  }
}

// The priority queue: a 16-ary tournament tree over the neurons in id order. The keys live in a
// flat array by neuron id (the tree's leaves, in groups of 16 that fill one aligned 128-byte line
// pair); each group keeps the offset of its minimum in one byte, and the inner nodes above hold
// {min key, its neuron} of 16 children each, level by level up to the root (the next spiker).
// Ties go to the lower id.
// Why not an indexed heap: a heap moves entries, so a kick first reads the neuron's slot and then
// its entry, two dependent cache misses in 24 bytes per neuron (16 MB + 8 MB at N = 1e6). Here a
// kick reads and writes its key (8 bytes per neuron) and reads one byte of the group offsets (N/16
// bytes: cached), both addressed by i alone, so the K targets' keys are prefetched with no
// dependent load. A kick that raises a key (inhibition) changes the tree only when i is its
// group's minimum (about 1 in 16); then the groups on the path are re-scanned while i was their
// minimum. A lowered key is compared with its group's minimum (in the same 128 bytes) and carried
// up while it wins. O(16 log_16 N) worst case.
struct Entry {
  double key;
  int64_t id;
};

constexpr int64_t ARITY = 16;  // a group of keys = 128 bytes, a group of inner nodes = 256 bytes
constexpr int MAX_LEVELS = 17;  // 16^16 > any int64 n

inline bool before(double ka, int64_t ia, double kb, int64_t ib) { return ka < kb || (ka == kb && ia < ib); }
inline bool before(const Entry& a, const Entry& b) { return before(a.key, a.id, b.key, b.id); }

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
// byte buffer for the group offsets and inner nodes; both are aligned here so that a group of 16
// siblings fills whole cache lines.
constexpr int64_t KEY_PADDING = ARITY, NODE_BUFFER_PADDING = 256;
inline uintptr_t align_up(uintptr_t raw, uintptr_t bytes) { return (raw + bytes - 1) / bytes * bytes; }

struct MinTree {
  double* key;                     // (n,) by neuron id
  uint8_t* lead;                   // (size[0],) offset of each leaf group's minimum within the group
  Entry* level[MAX_LEVELS];        // level[1 .. levels - 1] inner nodes; level[levels - 1][0] is the root
  int64_t size[MAX_LEVELS];
  int levels;
  int64_t n;

  static int64_t node_buffer_bytes(int64_t n) {
    int64_t sizes[MAX_LEVELS];
    const int levels = tree_levels(n, sizes);
    int64_t bytes = round_up(sizes[0], 256);
    for (int l = 1; l < levels; ++l) bytes += round_up(sizes[l], ARITY) * int64_t(sizeof(Entry));
    return bytes + NODE_BUFFER_PADDING;
  }
  MinTree(void* key_buffer, void* node_buffer, int64_t n_)
      : key(reinterpret_cast<double*>(align_up(reinterpret_cast<uintptr_t>(key_buffer), ARITY * sizeof(double)))), n(n_) {
    levels = tree_levels(n, size);
    uint8_t* bytes = reinterpret_cast<uint8_t*>(align_up(reinterpret_cast<uintptr_t>(node_buffer), 256));
    lead = bytes;
    bytes += round_up(size[0], 256);
    level[0] = nullptr;
    for (int l = 1; l < levels; ++l) {
      level[l] = reinterpret_cast<Entry*>(bytes);
      bytes += round_up(size[l], ARITY) * sizeof(Entry);  // every level starts a sibling group
    }
  }
  Entry group_min(int64_t g) const {
    const int64_t m = g * ARITY + lead[g];
    return {key[m], m};
  }
  Entry top() const { return levels == 1 ? group_min(0) : level[levels - 1][0]; }
  void prefetch(int64_t i) const {  // the neuron's key (a raised non-leader needs nothing else)
    __builtin_prefetch(&key[i]);
  }
  void scan_group(int64_t g) {
    const int64_t first = g * ARITY, last = std::min(first + ARITY, n);
    int64_t best = first;
    for (int64_t c = first + 1; c < last; ++c)
      if (key[c] < key[best]) best = c;  // strict: the lower id wins a tie
    lead[g] = uint8_t(best - first);
  }
  Entry min_of_children(int l, int64_t p) const {  // node p of level l >= 1
    const int64_t first = p * ARITY, last = std::min(first + ARITY, size[l - 1]);
    Entry best = l == 1 ? group_min(first) : level[l - 1][first];
    for (int64_t c = first + 1; c < last; ++c) {
      const Entry e = l == 1 ? group_min(c) : level[l - 1][c];
      if (before(e, best)) best = e;
    }
    return best;
  }
  void update(int64_t i, double new_key) {
    const double old = key[i];
    key[i] = new_key;
    int64_t p = i / ARITY;
    const int64_t m = p * ARITY + lead[p];
    if (m != i) {
      // Raised (inhibition) or kept: key[m] <= old <= new_key, and on a tie m < i, so m stays the
      // group's minimum without reading key[m]; lowered: i may take the lead.
      if (new_key >= old || !before(new_key, i, key[m], m)) return;
      lead[p] = uint8_t(i - p * ARITY);
    } else if (new_key > old) {  // the group's minimum went up: re-scan the groups it led
      scan_group(p);
      for (int l = 1; l < levels; ++l) {
        p /= ARITY;
        if (level[l][p].id != i) break;
        level[l][p] = min_of_children(l, p);
      }
      return;
    } else if (new_key == old) {
      return;
    }
    const Entry e{new_key, i};  // i leads its group with a lower key: carry it up while it wins
    for (int l = 1; l < levels; ++l) {
      p /= ARITY;
      if (!before(e, level[l][p])) break;
      level[l][p] = e;
    }
  }
  void build() {
    for (int64_t g = 0; g < size[0]; ++g) scan_group(g);
    for (int l = 1; l < levels; ++l)
      for (int64_t p = 0; p < size[l]; ++p) level[l][p] = min_of_children(l, p);
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
  DrawnSet drawn(Csr ? 1 : net.n);
  // Targets of a presynaptic neuron: a CSR row, or the random draw into one of two lists (the
  // current spiker's and the predicted next spiker's).
  struct TargetList {
    const int64_t* tgt;
    int64_t n, first_synapse;
  };
  std::vector<int64_t> lists[2] = {std::vector<int64_t>(Csr ? 0 : net.k), std::vector<int64_t>(Csr ? 0 : net.k)};
  const auto list_targets = [&](int64_t j, int list, bool draw = false) -> TargetList {
    if constexpr (Csr) {
      return {net.csr_indices + net.csr_indptr[j], net.csr_indptr[j + 1] - net.csr_indptr[j], net.csr_indptr[j]};
    } else {
      int64_t* out = lists[list].data();
      if (draw) random_targets(net.seed, net.n, net.k, j, drawn, [&](int64_t target, int64_t synapse) { out[synapse - j * net.k] = target; });
      return {out, net.k, j * net.k};
    }
  };
  const auto prefetch_targets = [&](const TargetList& list) {
    for (int64_t r = 0; r < list.n; ++r) {
      queue.prefetch(list.tgt[r]);
      if constexpr (Mo == Hetero) {
        __builtin_prefetch(&s.phase[list.tgt[r]]);
        __builtin_prefetch(&s.last_time[list.tgt[r]]);
        __builtin_prefetch(&net.omega[list.tgt[r]]);
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
    const TargetList now = list_targets(j, in_use, /*draw=*/j != predicted);
    if (j != predicted) prefetch_targets(now);
    predicted = queue.top().id;
    predicted_list = 1 - in_use;
    prefetch_targets(list_targets(predicted, predicted_list, /*draw=*/true));

    int32_t status = 0;
    const double inv_scale = Mo == LifPsi ? std::exp(offset / omega0) : 1.0;  // psi~ = psi exp(Phi/omega)
    for (int64_t r = 0; r < now.n; ++r) {
      const int64_t i = now.tgt[r];
      const double w = net.weights ? net.weights[now.first_synapse + r] : 1.0;
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
        const double after = lif_ptc_psi(queue.key[i], net.coupling0 * w * inv_scale);
        if (!(after > psi_th * inv_scale)) status = ERR_CROSSING;
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
// key[ids[u]] <- new_keys[u] in order and writes the top's id after each one to top_ids (m,).
int32_t exodus_events_queue_replay(int64_t n, const double* keys0, int64_t m, const int64_t* ids,
                                   const double* new_keys, int64_t* top_ids) {
  if (n < 1 || keys0 == nullptr || (m > 0 && (ids == nullptr || new_keys == nullptr || top_ids == nullptr)))
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
    top_ids[u] = queue.top().id;
  }
  return OK_MAX_SPIKES;
}

// The K random targets of presynaptic neuron j (for the tests and the Python adjoint).
int32_t exodus_events_targets(uint64_t seed, int64_t n, int64_t k, int64_t j, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || j < 0 || j >= n || out == nullptr) return ERR_ARGS;
  static thread_local DrawnSet drawn(0);  // kept between calls (the O(N) reference asks per spike)
  drawn.reserve(n);
  random_targets(seed, n, k, j, drawn, [&](int64_t target, int64_t synapse) { out[synapse - j * k] = target; });
  return OK_MAX_SPIKES;
}

// Targets of m presynaptic neurons js[0..m) into out (m x k), row r = targets of js[r].
int32_t exodus_events_targets_many(uint64_t seed, int64_t n, int64_t k, const int64_t* js, int64_t m, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || (m > 0 && (js == nullptr || out == nullptr))) return ERR_ARGS;
  static thread_local DrawnSet drawn(0);
  drawn.reserve(n);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t j = js[r];
    if (j < 0 || j >= n) return ERR_ARGS;
    int64_t* row = out + r * k;
    random_targets(seed, n, k, j, drawn, [&](int64_t target, int64_t synapse) { row[synapse - j * k] = target; });
  }
  return OK_MAX_SPIKES;
}

}  // extern "C"
