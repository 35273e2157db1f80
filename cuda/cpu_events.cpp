// exodus.events — exact event-based simulation of pulse-coupled networks with O(log N) work per
// target and spike (SparseProp, Engelken 2023; DESIGN.md §8). Sequential by nature: one thread.
//
// Homogeneous drive (every neuron has the same speed omega): the phases live in one indexed
// binary heap as phi~ = phi - Phi (Phi a global offset), keyed by -phi~ (a min-heap on -phi~ is
// a max-heap on phi~). The top is the next spiker j; Phi <- phi_th - phi~_j advances every phase
// at once; each target's key changes by its PTC (O(log N) sift); j resets.
// Heterogeneous drive (per-neuron omega_i): each neuron keeps (phase, time of last update);
// the heap is keyed by the next spike time t_i + (phi_th - phi_i)/omega_i.
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

// Small open-addressing set of drawn targets (reset per presynaptic neuron by a stamp).
struct DrawnSet {
  std::vector<int64_t> value;
  std::vector<uint32_t> stamp;
  uint32_t current = 0;
  uint64_t mask = 0;
  explicit DrawnSet(int64_t k) {
    uint64_t size = 16;
    while (size < uint64_t(4 * k)) size <<= 1;
    value.assign(size, 0);
    stamp.assign(size, 0);
    mask = size - 1;
  }
  void clear() {
    if (++current == 0) {  // stamp wrapped: really clear
      std::fill(stamp.begin(), stamp.end(), 0u);
      current = 1;
    }
  }
  bool insert(int64_t x) {  // false if already present
    uint64_t h = (uint64_t(x) * GOLDEN) >> 32;
    for (;; ++h) {
      const uint64_t slot = h & mask;
      if (stamp[slot] != current) {
        stamp[slot] = current;
        value[slot] = x;
        return true;
      }
      if (value[slot] == x) return false;
    }
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

// Indexed d-ary min-heap (d = ARITY = 16) on (key, id): entries {key, id} by slot, pos by neuron
// id; ties go to the lower id. The children of slot i are d i + 1 .. d i + d, placed so that they
// fill d/4 whole, adjacent 64-byte cache lines (a quarter of a binary heap's levels; the lines of
// one sibling group are fetched together).
struct Entry {
  double key;
  int64_t id;
};

#ifndef EXODUS_EVENTS_ARITY
#define EXODUS_EVENTS_ARITY 16  // measured 4 -> 8 -> 16: 3.0 -> 2.6 -> 2.2 us (N = 1e4), 6.7 -> 6.1 -> 5.6 us (N = 1e6)
#endif
constexpr int64_t ARITY = EXODUS_EVENTS_ARITY;

// Slot 0 of the heap inside a caller buffer of n + HEAP_PADDING entries (see struct Heap).
constexpr int64_t HEAP_PADDING = 2 * ARITY;
inline Entry* heap_base(void* buffer) {
  constexpr uintptr_t bytes = uintptr_t(ARITY) * sizeof(Entry);   // one group of siblings
  const uintptr_t raw = reinterpret_cast<uintptr_t>(buffer);
  const uintptr_t aligned = (raw + bytes - 1) / bytes * bytes;
  return reinterpret_cast<Entry*>(aligned) + (ARITY - 1);           // slot ARITY i + 1 starts a group
}

struct Heap {
  Entry* e;
  int64_t* pos;
  int64_t n;

  static bool before(const Entry& a, const Entry& b) { return a.key < b.key || (a.key == b.key && a.id < b.id); }
  void sift_up(int64_t i) {
    const Entry x = e[i];
    while (i > 0) {
      const int64_t parent = (i - 1) / ARITY;
      if (!before(x, e[parent])) break;
      e[i] = e[parent];
      pos[e[i].id] = i;
      i = parent;
    }
    e[i] = x;
    pos[x.id] = i;
  }
  void sift_down(int64_t i) {
    const Entry x = e[i];
    for (;;) {
      const int64_t first = ARITY * i + 1;
      if (first >= n) break;
      const int64_t last = first + ARITY < n ? first + ARITY : n;
      int64_t best = first;
      for (int64_t c = first + 1; c < last; ++c)
        if (before(e[c], e[best])) best = c;
      if (!before(e[best], x)) break;
      e[i] = e[best];
      pos[e[i].id] = i;
      i = best;
    }
    e[i] = x;
    pos[x.id] = i;
  }
  void update(int64_t neuron, double new_key) {
    const int64_t i = pos[neuron];
    const double old = e[i].key;
    e[i].key = new_key;
    if (new_key < old) sift_up(i); else sift_down(i);
  }
  void build() {
    for (int64_t i = 0; i < n; ++i) pos[e[i].id] = i;
    for (int64_t i = (n - 2) / ARITY; i >= 0; --i) sift_down(i);
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
  int32_t heterogeneous;      // 0: phase heap with global offset; 1: next-spike-time heap
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
  void* heap;           // (n + HEAP_PADDING,) heap entries {double key, int64 id} (16 bytes each)
  int64_t* heap_pos;    // (n,)
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

// How the heap holds the neurons:
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
double phase_at(const EventsNetwork& net, const EventsState& s, const Heap& heap, int64_t i, double t) {
  if constexpr (Mo == Hetero) return s.phase[i] + net.omega[i] * (t - s.last_time[i]);
  const double key = heap.e[heap.pos[i]].key;
  const double tilde = Mo == LifPsi ? lif_phase_of_psi(key, net.omega0) : -key;
  return tilde + (t - s.time_base) * net.omega0;
}

template <int M, int Mo>
void write_samples_before(const EventsNetwork& net, const EventsState& s, const Heap& heap, const EifTable& table,
                          EventsSamples* smp, double t_limit, bool inclusive) {
  if (smp == nullptr) return;
  while (smp->next < smp->n_times && (smp->times[smp->next] < t_limit || (inclusive && smp->times[smp->next] == t_limit))) {
    const double t = smp->times[smp->next];
    double* row = smp->out + smp->next * smp->n_neurons;
    for (int64_t c = 0; c < smp->n_neurons; ++c) {
      const int64_t i = smp->neurons[c];
      row[c] = voltage<M>(net, table, i, phase_at<Mo>(net, s, heap, i, t));
    }
    ++smp->next;
  }
}

template <int M, int Mo, bool Csr>
int32_t run(const EventsNetwork& net, EventsState& s, int64_t max_spikes, double t_end, double* out_time,
            int64_t* out_id, EventsSamples* smp) {
  Heap heap{heap_base(s.heap), s.heap_pos, net.n};
  const EifTable table{net.eif_v, net.eif_slope, net.eif_n, net.eif_phase_lo, net.eif_step};
  DrawnSet drawn(Csr ? 1 : net.k);
  std::vector<int64_t> targets(Csr ? 0 : net.k), synapses(Csr ? 0 : net.k);
  const double omega0 = net.omega0;
  // Renormalise the global offset once Phi > omega0 (LifPsi: psi~ stays within a factor e of psi)
  // or Phi > 1 (Phase): phi~ + Phi then stays exact to ~eps |phi| over arbitrarily long runs; the
  // O(N) pass comes once per ~tau of simulated time.
  const double renormalise_at = Mo == LifPsi ? omega0 : 1.0;
  const double psi_th = lif_psi_of_phase(net.phase_th, omega0);  // LifPsi: psi at threshold
  for (int64_t count = 0; count < max_spikes; ++count) {
    const Entry top = heap.e[0];
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
      write_samples_before<M, Mo>(net, s, heap, table, smp, t_end, true);
      s.n_spikes += count;
      return OK_END_TIME;
    }
    write_samples_before<M, Mo>(net, s, heap, table, smp, t, false);
    s.offset = offset;
    s.time = t;
    if (out_time) out_time[count] = t;
    if (out_id) out_id[count] = j;

    // The targets: listed first, their heap entries prefetched (K independent cache misses overlap),
    // then updated one by one.
    const int64_t* tgt;
    int64_t n_targets, first_synapse = 0;
    if constexpr (Csr) {
      first_synapse = net.csr_indptr[j];
      n_targets = net.csr_indptr[j + 1] - first_synapse;
      tgt = net.csr_indices + first_synapse;
    } else {
      random_targets(net.seed, net.n, net.k, j, drawn, [&](int64_t target, int64_t synapse) {
        targets[synapse - j * net.k] = target;
      });
      n_targets = net.k;
      first_synapse = j * net.k;
      tgt = targets.data();
    }
    for (int64_t r = 0; r < n_targets; ++r) __builtin_prefetch(&heap.pos[tgt[r]]);
    for (int64_t r = 0; r < n_targets; ++r) {  // the entry and its children (an inhibitory kick sifts down)
      const int64_t slot = heap.pos[tgt[r]];
      __builtin_prefetch(&heap.e[slot]);
      if (ARITY * slot + 1 < net.n)  // the children's lines
        for (int64_t c = 1; c <= ARITY && ARITY * slot + c < net.n; c += 4) __builtin_prefetch(&heap.e[ARITY * slot + c]);
    }
    if constexpr (Mo == Hetero) {
      for (int64_t r = 0; r < n_targets; ++r) {
        __builtin_prefetch(&s.phase[tgt[r]]);
        __builtin_prefetch(&s.last_time[tgt[r]]);
        __builtin_prefetch(&net.omega[tgt[r]]);
      }
    }

    int32_t status = 0;
    const double inv_scale = Mo == LifPsi ? std::exp(offset / omega0) : 1.0;  // psi~ = psi exp(Phi/omega)
    for (int64_t r = 0; r < n_targets; ++r) {
      const int64_t i = tgt[r];
      const double w = net.weights ? net.weights[first_synapse + r] : 1.0;
      if constexpr (Mo == Hetero) {
        const double omega = net.omega[i];
        const double before = s.phase[i] + omega * (t - s.last_time[i]);
        const double c = net.coupling[i] * w;
        const double after = kick_clamped<M>(table, net.phase_th, before, c, omega);
        if (const int32_t st = kick_status<M>(after, net.phase_th, c)) status = st;
        s.phase[i] = after;
        s.last_time[i] = t;
        heap.update(i, t + (net.phase_th - after) / omega);
      } else if constexpr (Mo == LifPsi) {
        const double after = lif_ptc_psi(heap.e[heap.pos[i]].key, net.coupling0 * w * inv_scale);
        if (!(after > psi_th * inv_scale)) status = ERR_CROSSING;
        heap.update(i, after);
      } else {
        const double before = -heap.e[heap.pos[i]].key + offset;
        const double c = net.coupling0 * w;
        const double after = kick_clamped<M>(table, net.phase_th, before, c, omega0);
        if (const int32_t st = kick_status<M>(after, net.phase_th, c)) status = st;
        heap.update(i, -(after - offset));
      }
    }
    if (status != 0) {
      s.n_spikes += count + 1;
      return status;
    }
    // Reset the spiker.
    if constexpr (Mo == Hetero) {
      s.phase[j] = net.phase_reset;
      s.last_time[j] = t;
      heap.update(j, t + (net.phase_th - net.phase_reset) / net.omega[j]);
    } else {
      if constexpr (Mo == LifPsi) heap.update(j, lif_psi_of_phase(net.phase_reset - offset, omega0));
      else heap.update(j, -(net.phase_reset - offset));
      if (offset > renormalise_at) {  // the same map for every key: the order is unchanged
        const double scale = 1.0 / inv_scale;  // LifPsi: psi~ <- psi~ exp(-Phi/omega); Phase: -phi~ <- -phi~ - Phi
        for (int64_t h = 0; h < net.n; ++h) {
          if constexpr (Mo == LifPsi) heap.e[h].key *= scale;
          else heap.e[h].key -= offset;
        }
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

// Builds the heap from the initial phases (homogeneous: phase0 -> keys -phase0 with Phi = 0;
// heterogeneous: s.phase must hold the phases, last_time the start time).
int32_t exodus_events_init(const EventsNetwork* net, EventsState* s, const double* phase0, double t0) {
  if (net == nullptr || s == nullptr || net->n < 2) return ERR_ARGS;
  Heap heap{heap_base(s->heap), s->heap_pos, net->n};
  for (int64_t i = 0; i < net->n; ++i) {
    heap.e[i].id = i;
    if (net->heterogeneous) {
      s->phase[i] = phase0[i];
      s->last_time[i] = t0;
      heap.e[i].key = t0 + (net->phase_th - phase0[i]) / net->omega[i];
    } else if (net->model == LIF) {
      heap.e[i].key = lif_psi_of_phase(phase0[i], net->omega0);
    } else {
      heap.e[i].key = -phase0[i];
    }
  }
  heap.build();
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

// Extra heap entries the caller must allocate beyond n (alignment of the sibling groups).
int64_t exodus_events_heap_padding() { return HEAP_PADDING; }

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

// The K random targets of presynaptic neuron j (for the tests and the Python adjoint).
int32_t exodus_events_targets(uint64_t seed, int64_t n, int64_t k, int64_t j, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || j < 0 || j >= n || out == nullptr) return ERR_ARGS;
  DrawnSet drawn(k);
  random_targets(seed, n, k, j, drawn, [&](int64_t target, int64_t synapse) { out[synapse - j * k] = target; });
  return OK_MAX_SPIKES;
}

// Targets of m presynaptic neurons js[0..m) into out (m x k), row r = targets of js[r].
int32_t exodus_events_targets_many(uint64_t seed, int64_t n, int64_t k, const int64_t* js, int64_t m, int64_t* out) {
  if (n < 2 || k < 1 || k >= n || (m > 0 && (js == nullptr || out == nullptr))) return ERR_ARGS;
  DrawnSet drawn(k);
  for (int64_t r = 0; r < m; ++r) {
    const int64_t j = js[r];
    if (j < 0 || j >= n) return ERR_ARGS;
    int64_t* row = out + r * k;
    random_targets(seed, n, k, j, drawn, [&](int64_t target, int64_t synapse) { row[synapse - j * k] = target; });
  }
  return OK_MAX_SPIKES;
}

}  // extern "C"
