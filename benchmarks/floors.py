"""Lower bounds behind two speed targets: issue 8's, which these CPUs cannot meet, and issue 10's
(1000x the O(N) event simulator), which leaves exodus little room.

Each subcommand compiles a small C++ kernel that does only the work no exact implementation can
skip, in cache-friendly form and with nothing else around it, times it, and times the baseline of
the target in the same run. baseline / floor is then an upper bound on any implementation's ratio.

    python benchmarks/floors.py sparse    # issue 8: sparse vs dense exact backward of Linear(256) -> LIF
    python benchmarks/floors.py events    # issue 10: exodus.events vs the O(N) numpy event simulator

sparse: the filter of block 2's input spikes (bytes), x~_t = alpha x~_{t-1} + s_t, one pass over
        (B, T, H), which the exact dL/dW needs; per active point of block 2 the rank-1 update
        dW[j, :] += e x~_t, and per active point of block 1 the dot W[:, i] . lambda_t (the sampled
        dL/ds1): 4 H flops per point, with dW and W in L2 and the rows in L1. No reverse scan over
        the points, no upstream gradient, no Python. Baseline: the dense exodus backward of the
        same block (benchmarks/sparse_backward.py's network, H = 256, one thread).
events: per network spike, drawing the K = 100 targets (the splitmix64 / Lemire spec of
        cuda/cpu_events.cpp, eight at a time with AVX-512 as there) and one read-modify-write of a
        float64 per target in an N-long array, the next spike depending on the result (a serial
        chain, as in any event simulator), the next spike's targets drawn and prefetched one spike
        ahead; no priority queue, no spike times. Two floors: without de-duplication, and with the
        targets distinct as the graph spec asks (de-duplicated as exodus does it: vp2intersect, or
        a bit per neuron without it). Baseline: the O(N) numpy simulator of
        benchmarks/events_scaling.py at N = 10^6. exodus with threads=2 moves the draws to a
        second core, so it is not bounded by these one-thread floors.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SPARSE_FLOOR = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
constexpr int H = 256;
static inline float dot(const float* a, const float* b) {
#if defined(__AVX512F__)
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (int k = 0; k < H; k += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 32), _mm512_loadu_ps(b + k + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 48), _mm512_loadu_ps(b + k + 48), s3);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
  float part[16] = {};
  for (int k = 0; k < H; k += 16)
#pragma omp simd
    for (int l = 0; l < 16; ++l) part[l] += a[k + l] * b[k + l];
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
#endif
}
int main(int argc, char** argv) {
  const long rows = 64L * 500;
  for (int a = 1; a < argc; ++a) {
    const double activity = atof(argv[a]);
    std::mt19937_64 rng(1);
    std::poisson_distribution<int> points_per_row(activity * H);
    std::vector<int> count(rows), col;
    for (auto& c : count) {
      c = points_per_row(rng);
      for (int i = 0; i < c; ++i) col.push_back(int(rng() % H));
    }
    std::vector<float> dW(H * H, 0.f), Wt(H * H, 0.01f), e(col.size(), 1e-3f), out(col.size());
    std::vector<unsigned char> input(size_t(rows) * H);  // block 2's input spikes, 2 % per bin, as bytes
    for (auto& v : input) v = (rng() % 50) == 0;
    alignas(64) float x_row[H], lambda_row[H];
    for (int k = 0; k < H; ++k) lambda_row[k] = 0.25f;
    double best = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      size_t p = 0;
      for (long r = 0; r < rows; ++r) {
        if (r % 500 == 0)  // a new batch row: the filter restarts
          for (int k = 0; k < H; ++k) x_row[k] = 0.f;
        const unsigned char* s_row = &input[size_t(r) * H];
#pragma omp simd
        for (int k = 0; k < H; ++k) x_row[k] = 0.8187f * x_row[k] + float(s_row[k]);  // the input filter
        lambda_row[r & (H / 2 - 1)] *= 0.99f;  // the lambda row changes from one (b, t) to the next
        for (int i = 0; i < count[r]; ++i, ++p) {
          float* d = &dW[size_t(col[p]) * H];
          const float g = e[p];
#pragma omp simd
          for (int k = 0; k < H; ++k) d[k] += g * x_row[k];
          out[p] = dot(&Wt[size_t(col[p] ^ 7) * H], lambda_row);  // a block-1 point (as many)
        }
      }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    printf("%g %zu %.6f %g\n", activity, col.size(), best, double(dW[7] + out[3]));
  }
}
"""

EVENTS_FLOOR = r"""
#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "cpu_events.cpp"  // TargetDraw and fmix: the simulator's own draw (-I cuda)
using exodus_events::fmix;
using exodus_events::TargetDraw;
int main(int argc, char** argv) {
  const int64_t n = atoll(argv[1]);
  const bool distinct = argc > 2 && atoi(argv[2]) != 0;  // the K targets de-duplicated, as the graph spec asks
  const int K = 100, S = 2000000;
  std::vector<double> state(n, 1.0);
  int64_t targets[2][K + 8];  // the eight-wide draw writes up to 104
  const auto draw = [&](int64_t j, int64_t* out) {  // the graph's first K candidates, repeats kept
    const uint64_t key = TargetDraw::draw_key(1, j);
    for (int m = 0; m < K; m += 8) TargetDraw::candidates8(key, uint64_t(m + 1), uint64_t(n - 1), j, out + m);
  };
  // The same draw with repeats removed (the first K distinct candidates): exodus's own TargetDraw
  // (vp2intersect where the CPU has it, else a bit per neuron).
  TargetDraw distinct_draw(n);
  const auto draw_distinct = [&](int64_t j, int64_t* out) {
    distinct_draw.start(1, n, K, j, out);
    distinct_draw.finish();
  };
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    int64_t j = 1, next = 0;
    int cur = 0;
    if (distinct) draw_distinct(j, targets[cur]); else draw(j, targets[cur]);
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < S; ++s) {
      next = int64_t(fmix(uint64_t(j)) % uint64_t(n));  // the predicted next spiker
      if (distinct) draw_distinct(next, targets[cur ^ 1]); else draw(next, targets[cur ^ 1]);
      for (int m = 0; m < K; ++m) __builtin_prefetch(&state[targets[cur ^ 1][m]]);
      double acc = 0.0;
      for (int m = 0; m < K; ++m) {
        const double v = state[targets[cur][m]] + 0.5;
        state[targets[cur][m]] = v;
        acc += v;
      }
      j = acc > 0.0 ? next : 0;  // the next spike waits for this one's updates
      cur ^= 1;
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  printf("%.6f %g\n", 1e6 * best / S, state[3]);
}
"""


def run_floor(source: str, args: list[str]) -> str:
    """Compiles ``source`` with g++ -O3 -march=native (cuda/ on the include path) and runs it with
    ``args``; its stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "floor.cpp", Path(tmp) / "floor"
        src.write_text(source)
        cuda = Path(__file__).resolve().parent.parent / "cuda"
        subprocess.run(["g++", "-O3", "-march=native", "-fopenmp-simd", f"-I{cuda}", str(src), "-o", str(exe)], check=True)
        return subprocess.run([str(exe), *args], check=True, capture_output=True, text=True).stdout


def sparse(args) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import sparse_backward as sb
    from exodus import surrogate as S

    torch.set_num_threads(1)
    x, w1, w2, _ = sb.make_network(256)
    f = sb.block("exodus", S.Truncated(S.FastSigmoid(slope=100.0), 0.1))
    with torch.no_grad():
        s1 = f(x, w1)
    s1.requires_grad_()
    w2p = w2.clone().requires_grad_()
    out = f(s1, w2p)
    g_out = torch.randn_like(out)
    dense = sb.median_ms(lambda: torch.autograd.grad(out, [s1, w2p], g_out, retain_graph=True), args.repeats)
    print(f"dense exodus backward of block 2 (H = 256, (64, 500), one thread): {dense:.1f} ms")
    print(f"{'active':>8} {'points':>8} {'floor ms':>9} {'cap = dense / floor':>20} {'target':>8}")
    targets = {0.003: 140, 0.015: 40}
    for line in run_floor(SPARSE_FLOOR, [str(a) for a in args.activity]).splitlines():
        activity, points, seconds, _ = line.split()
        activity, ms = float(activity), 1e3 * float(seconds)
        target = targets.get(activity)
        print(f"{100 * activity:7.2f}% {int(points):>8} {ms:9.2f} {dense / ms:19.0f}x "
              f"{(str(target) + 'x') if target else '':>8}")


def events(args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import events_scaling as es
    import exodus.events as ev

    n = int(args.n)
    net = ev.Network(n, 100, seed=1)
    on_us, _ = es.on_event_run(net, 300, repeats=3)
    floor_us = float(run_floor(EVENTS_FLOOR, [str(n), "0"]).split()[0])
    distinct_us = float(run_floor(EVENTS_FLOOR, [str(n), "1"]).split()[0])
    exodus_us, _, _ = es.exodus_run(net, 1_000_000, repeats=3)
    exodus2_us, _, _ = es.exodus_run(net, 1_000_000, repeats=3, threads=2)
    print(f"N = {n:,}, K = 100: us per network spike (fastest of 3 runs each)")
    print(f"  O(N) numpy event simulator                  {on_us:9.2f}")
    print(f"  exodus.events                               {exodus_us:9.3f}   ({on_us / exodus_us:.0f}x)")
    print(f"  exodus.events, threads=2                    {exodus2_us:9.3f}   ({on_us / exodus2_us:.0f}x; the helper "
          "draws ahead: the floors below are one thread's)")
    print(f"  floor: draw K + K float64 RMWs              {floor_us:9.3f}   (cap {on_us / floor_us:.0f}x)")
    print(f"  floor: draw K distinct + K float64 RMWs     {distinct_us:9.3f}   (cap {on_us / distinct_us:.0f}x; "
          f"target 1000x needs <= {on_us / 1000:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sparse")
    p.add_argument("--activity", type=float, nargs="+", default=[0.003, 0.0038, 0.015, 0.0196])
    p.add_argument("--repeats", type=int, default=5)
    p = sub.add_parser("events")
    p.add_argument("--n", type=float, default=1e6)
    args = parser.parse_args()
    {"sparse": sparse, "events": events}[args.what](args)


if __name__ == "__main__":
    main()
