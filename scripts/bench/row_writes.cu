// The floor under a low-latency dispatch's rows on one GPU: DeepSeek-V3 with BF16 dispatch
// (H = 7168, K = 8, E = 256) on 8 virtual ranks, T tokens per rank, in the steady state of
// `epc bench`'s graph of many calls. Each call is a "dispatch" that only moves rows (each token
// read once and stored to its K rows, as ll_dispatch's copy items do; destinations computed on
// the host, so no ids, reservation or hand-out) and a "combine" that reads y at the same rows and
// writes each token's weighted sum, both launched with the PDL attribute, back to back in one
// CUDA graph. The rows land where epc's windows put them (per rank 32 local experts x 1024 rows,
// each source's rows contiguous), or packed into one region per rank (`compact`), or as in
// `windows` but in two halves that alternate call by call (`halves`: a caller with two calls in
// flight alternates the windows' halves so; twice the rows and y in use. `epc bench` times one
// call object, which keeps one half, so `windows` is its case).
//   nvcc -O3 -arch=sm_90 -o row_writes scripts/bench/row_writes.cu && ./row_writes [T]
// Printed per call, us (best of 3 replays of a graph of 200 calls):
//   stores: plain, streaming (`.cs`: evict first), bulk copies from shared memory (`tma`), or
//     streaming behind the shortest reservation chain (`chain`: an id read, then an atomic);
//   rows+comb / empty+comb: a call with the row-moving dispatch / with an empty kernel instead;
//   rows marginal: their difference, what the rows cost a call; TB/s: the rows' bytes over it;
//   rows alone / empty alone: the dispatch repeated by itself / the empty kernel;
//   graph split: what `epc bench` reports as the dispatch's graph figure, measured its way.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <array>
#include <algorithm>
#include <random>
#include <cstdlib>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

constexpr int kH = 7168, kK = 8, kE = 256, kR = 8, kL = kE / kR, kM = 128, kRow = kH * 2;
constexpr int kChunks = kH / 256, kWarps = 16, kBlocks = 16, kMaxGroup = 4;
constexpr size_t kWindow = static_cast<size_t>(kL) * kR * kM * kRow;  // one rank's recv_x (or y)

struct Args {
  const uint4* x;      // [R][T][H] bf16
  char* const* dst;    // [R][T][K] where each selection's row of recv_x lands
  char* const* ysrc;   // [R][T][K] the same row of y
  const float* w;      // [R][T][K]
  uint4* out;          // [R][T][H] bf16
  int tokens;
  const int* ids;      // [R][T][K] each selection's expert (kChain)
  unsigned* taken;     // [R][T][K][28] a counter per (selection, item) (kChain)
  unsigned none;       // 0, unknown to the compiler: a row's offset from its counter (kChain)
};

__device__ __forceinline__ void pdl_begin() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

__global__ void __launch_bounds__(512, 1) empty(Args) { pdl_begin(); }

// How a row's part is stored: plain, streaming (evict first), or by the bulk-copy engine (TMA):
// the warp puts its group into shared memory once, and lane k < K copies it into row k with one
// `cp.async.bulk` (global from shared), so the SM issues one instruction per row, not per 512 B.
// kChain streams as kStream, but each item's rows first wait for the shortest chain a dispatch
// that packs rows at their experts can have: lane k reads the selection's expert and takes a
// place with one atomic (on a counter of its own), and the rows' stores depend on what it returns
// (offset `none` = 0), with no barrier or hand-out between the warps.
enum class Store { kPlain, kStream, kTma, kChain };

// Items of (token, group of consecutive 256-channel chunks), block 0's warps first, as
// ll_dispatch's copy_tokens deals them: load the group once, store it into each of the K rows.
template <Store kStore>
__global__ void __launch_bounds__(512, 1) rows(Args a) {
  pdl_begin();
  extern __shared__ __align__(128) uint4 smem[];
  const int s = blockIdx.y, lane = threadIdx.x % 32, T = a.tokens;
  uint4* buf = smem + (threadIdx.x / 32) * kMaxGroup * 32;  // kTma: the warp's group
  const int warps = kBlocks * kWarps;
  const int group = max(1, (T * kChunks + warps - 1) / warps);
  const int groups = (kChunks + group - 1) / group;
  for (int item = blockIdx.x * kWarps + threadIdx.x / 32; item < T * groups; item += warps) {
    const int t = item / groups, first = (item % groups) * group, last = min(first + group, kChunks);
    const uint4* x = a.x + (static_cast<size_t>(s) * T + t) * (kH / 8);
    char* const* dst = a.dst + (static_cast<size_t>(s) * T + t) * kK;
    unsigned place = 0;
    if constexpr (kStore == Store::kChain)
      if (lane < kK) {
        // A counter of its own per (selection, item), so the atomics never queue on one address
        // (a dispatch takes one per (source, expert)); the expert read still comes first.
        const size_t sel = (static_cast<size_t>(s) * T + t) * kK + lane;
        place = atomicAdd(a.taken + sel * kChunks + item % groups + (a.ids[sel] & a.none), 1u) & a.none;
      }
    uint4 v[kMaxGroup];
#pragma unroll
    for (int u = 0; u < kMaxGroup; ++u) if (first + u < last) v[u] = x[(first + u) * 32 + lane];
    if constexpr (kStore == Store::kTma) {
      // The previous item's copies have read the buffer.
      asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      __syncwarp();
#pragma unroll
      for (int u = 0; u < kMaxGroup; ++u) if (first + u < last) buf[u * 32 + lane] = v[u];
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane < kK) {
        const unsigned src = static_cast<unsigned>(__cvta_generic_to_shared(buf));
        const unsigned bytes = (last - first) * 512;
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst[lane] + first * 512),
                     "r"(src), "r"(bytes)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      }
    } else {
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        uint4* d = reinterpret_cast<uint4*>(dst[k]);
        if constexpr (kStore == Store::kChain) d += __shfl_sync(0xffffffffu, place, k);
#pragma unroll
        for (int u = 0; u < kMaxGroup; ++u) {
          if (first + u >= last) break;
          if (kStore != Store::kPlain) __stcs(d + (first + u) * 32 + lane, v[u]); else d[(first + u) * 32 + lane] = v[u];
        }
      }
    }
  }
  if constexpr (kStore == Store::kTma) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

__device__ __forceinline__ float bf(unsigned h) { return __uint_as_float(h << 16); }
// out[s][t] = sum over k of w x y(row of s, t, k), f32, one 256-channel chunk per warp item.
__global__ void __launch_bounds__(512, 1) combine(Args a) {
  pdl_begin();
  const int s = blockIdx.y, lane = threadIdx.x % 32, T = a.tokens;
  for (int item = threadIdx.x / 32 * kBlocks + blockIdx.x; item < T * kChunks; item += kBlocks * kWarps) {
    const int t = item / kChunks, c = item % kChunks;
    const size_t sel = (static_cast<size_t>(s) * T + t) * kK;
    uint4 v[kK];
#pragma unroll
    for (int k = 0; k < kK; ++k) v[k] = reinterpret_cast<const uint4*>(a.ysrc[sel + k])[c * 32 + lane];
    float acc[8] = {};
#pragma unroll
    for (int k = 0; k < kK; ++k) {
      const float wk = a.w[sel + k];
      const unsigned u[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        acc[2 * q] = fmaf(wk, bf(u[q] & 0xffffu), acc[2 * q]);
        acc[2 * q + 1] = fmaf(wk, bf(u[q] >> 16), acc[2 * q + 1]);
      }
    }
    uint4 o;
    o.x = (__float_as_uint(acc[0]) >> 16) | (__float_as_uint(acc[1]) & 0xffff0000u);
    o.y = (__float_as_uint(acc[2]) >> 16) | (__float_as_uint(acc[3]) & 0xffff0000u);
    o.z = (__float_as_uint(acc[4]) >> 16) | (__float_as_uint(acc[5]) & 0xffff0000u);
    o.w = (__float_as_uint(acc[6]) >> 16) | (__float_as_uint(acc[7]) & 0xffff0000u);
    a.out[(static_cast<size_t>(s) * T + t) * (kH / 8) + c * 32 + lane] = o;
  }
}

using Kernel = void (*)(Args);
void launch(cudaStream_t st, Kernel k, const Args& a) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kBlocks, kR, 1);
  cfg.blockDim = dim3(512, 1, 1);
  cfg.dynamicSmemBytes = 120 * 1024;  // one block per SM, as the LL kernels
  cfg.stream = st;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  CK(cudaLaunchKernelEx(&cfg, k, a));
}

// `seq` captured `n` times over as one CUDA graph, ready to replay; round i takes the arguments
// as[i % as.size()] (two: the halves alternate).
cudaGraphExec_t graph_of(cudaStream_t st, const std::vector<Kernel>& seq, const std::vector<Args>& as, int n) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < n; ++i) for (Kernel k : seq) launch(st, k, as[i % as.size()]);
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  CK(cudaGraphDestroy(g));
  return ge;
}

// Mean us per round of `seq` inside one graph of n rounds, best of 3 replays.
double per_round(cudaStream_t st, const std::vector<Kernel>& seq, const std::vector<Args>& as, int n = 200) {
  const cudaGraphExec_t ge = graph_of(st, seq, as, n);
  CK(cudaGraphLaunch(ge, st));
  CK(cudaStreamSynchronize(st));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int rep = 0; rep < 3; ++rep) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    best = std::min(best, ms);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  CK(cudaGraphExecDestroy(ge));
  return best * 1000.0 / n;
}

// Keeps the stream busy for `ns` nanoseconds, so the host queues what follows ahead of the GPU.
__global__ void hold(long long ns) {
  long long t0;
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// `epc bench`'s graph figure for a dispatch kernel `r` (LowLatency::time_graphs and
// GraphTimes::split): the call (r, then combine) as it costs inside one graph of many (`call`),
// split as the two kernels split it when each is replayed as a graph of its own between events
// (the host ahead): each keeps its time alone less half of what the two exceed the call by.
// Call i takes the arguments as[i % as.size()], as in per_round.
double split_us(cudaStream_t st, Kernel r, const std::vector<Args>& as, double call, int n = 100) {
  std::vector<std::array<cudaGraphExec_t, 2>> g;
  for (const Args& a : as) g.push_back({graph_of(st, {r}, {a}, 1), graph_of(st, {combine}, {a}, 1)});
  for (int i = 0; i < 10; ++i) for (cudaGraphExec_t ge : g[i % g.size()]) CK(cudaGraphLaunch(ge, st));
  std::vector<cudaEvent_t> ev(3 * n);
  for (cudaEvent_t& event : ev) CK(cudaEventCreate(&event));
  hold<<<1, 1, 0, st>>>(5000000);
  CK(cudaGetLastError());
  for (int i = 0; i < n; ++i) {
    CK(cudaEventRecord(ev[3 * i], st));
    CK(cudaGraphLaunch(g[i % g.size()][0], st));
    CK(cudaEventRecord(ev[3 * i + 1], st));
    CK(cudaGraphLaunch(g[i % g.size()][1], st));
    CK(cudaEventRecord(ev[3 * i + 2], st));
  }
  CK(cudaStreamSynchronize(st));
  double alone[2] = {0.0, 0.0};
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < 2; ++j) {
      float ms;
      CK(cudaEventElapsedTime(&ms, ev[3 * i + j], ev[3 * i + j + 1]));
      alone[j] += ms * 1000.0 / n;
    }
  for (cudaEvent_t event : ev) CK(cudaEventDestroy(event));
  for (const auto& pair : g) for (cudaGraphExec_t ge : pair) CK(cudaGraphExecDestroy(ge));
  return alone[0] - (alone[0] + alone[1] - call) / 2.0;
}

int main(int argc, char** argv) {
  const int only = argc > 1 ? atoi(argv[1]) : 0;  // one token count, for a profiler
  const std::vector<Kernel> stores = {rows<Store::kPlain>, rows<Store::kStream>, rows<Store::kTma>, rows<Store::kChain>};
  const char* const names[] = {"plain", ".cs", "tma", "chain"};
  std::vector<Kernel> kernels = stores;
  kernels.insert(kernels.end(), {empty, combine});
  for (Kernel k : kernels) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 * 1024));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  char *recv, *y;
  CK(cudaMalloc(&recv, 2 * kWindow * kR));  // two halves
  CK(cudaMalloc(&y, 2 * kWindow * kR));
  CK(cudaMemset(y, 0x3c, 2 * kWindow * kR));
  uint4 *x, *out;
  CK(cudaMalloc(&x, static_cast<size_t>(kR) * kM * kRow));
  CK(cudaMalloc(&out, static_cast<size_t>(kR) * kM * kRow));
  CK(cudaMemset(x, 0x3f, static_cast<size_t>(kR) * kM * kRow));
  char **dst, **ysrc;  // [2][sels]: each half's
  float* w;
  const size_t sels = static_cast<size_t>(kR) * kM * kK;
  CK(cudaMalloc(&dst, 2 * sels * sizeof(char*)));
  CK(cudaMalloc(&ysrc, 2 * sels * sizeof(char*)));
  CK(cudaMalloc(&w, sels * sizeof(float)));
  int* ids_d;
  unsigned* taken;
  CK(cudaMalloc(&ids_d, sels * sizeof(int)));
  CK(cudaMalloc(&taken, sels * kChunks * sizeof(unsigned)));
  CK(cudaMemset(taken, 0, sels * kChunks * sizeof(unsigned)));
  std::vector<float> hw(sels, 0.125f);
  CK(cudaMemcpy(w, hw.data(), sels * sizeof(float), cudaMemcpyHostToDevice));
  std::mt19937 rng(7);
  printf("DeepSeek-V3 BF16 rows, 8 virtual ranks, graph of 200 calls, us per call\n");
  printf("%4s %-8s %-6s | %10s %11s %13s %6s | %10s %11s | %11s\n", "T", "layout", "stores", "rows+comb", "empty+comb",
         "rows marginal", "TB/s", "rows alone", "empty alone", "graph split");
  for (int T : {1, 4, 8, 16, 32}) {
    if (only > 0 && T != only) continue;
    // K distinct experts per token, uniformly.
    std::vector<int> ids(static_cast<size_t>(kR) * T * kK);
    for (int s = 0; s < kR; ++s)
      for (int t = 0; t < T; ++t) {
        std::vector<int> e(kE);
        for (int i = 0; i < kE; ++i) e[i] = i;
        std::shuffle(e.begin(), e.end(), rng);
        for (int k = 0; k < kK; ++k) ids[(static_cast<size_t>(s) * T + t) * kK + k] = e[k];
      }
    const double mb = static_cast<double>(kR) * T * kK * kRow / 1e6;
    for (const char* layout : {"windows", "compact", "halves"}) {
      // Each expert's rows from source 0, then 1, ... (contiguous per source), in token order;
      // `compact`: every row a rank receives packed into the start of its window instead;
      // `halves`: as `windows`, and again in the second half for every other call.
      const bool compact = layout[0] == 'c';
      const int halves = layout[0] == 'h' ? 2 : 1;
      std::vector<int> next(kE, 0), packed(kR, 0);
      const size_t n = static_cast<size_t>(kR) * T * kK;
      std::vector<char*> hd(2 * n), hy(2 * n);
      for (int s = 0; s < kR; ++s)
        for (int t = 0; t < T; ++t)
          for (int k = 0; k < kK; ++k) {
            const size_t i = (static_cast<size_t>(s) * T + t) * kK + k;
            const int e = ids[i], d = e / kL, l = e % kL;
            const size_t row = compact ? packed[d]++ : static_cast<size_t>(l) * kR * kM + next[e]++;
            for (int h = 0; h < 2; ++h) {
              hd[h * n + i] = recv + (h * kR + d) * kWindow + row * kRow;
              hy[h * n + i] = y + (h * kR + d) * kWindow + row * kRow;
            }
          }
      CK(cudaMemcpy(dst, hd.data(), hd.size() * sizeof(char*), cudaMemcpyHostToDevice));
      CK(cudaMemcpy(ysrc, hy.data(), hy.size() * sizeof(char*), cudaMemcpyHostToDevice));
      CK(cudaMemcpy(ids_d, ids.data(), ids.size() * sizeof(int), cudaMemcpyHostToDevice));
      std::vector<Args> a;
      for (int h = 0; h < halves; ++h) a.push_back(Args{x, dst + h * n, ysrc + h * n, w, out, T, ids_d, taken, 0u});
      const double empty_comb = per_round(st, {empty, combine}, a);
      const double empty_alone = per_round(st, {empty}, a);
      for (size_t i = 0; i < stores.size(); ++i) {
        const Kernel r = stores[i];
        const double rows_comb = per_round(st, {r, combine}, a);
        const double rows_alone = per_round(st, {r}, a);
        const double marginal = rows_comb - empty_comb;
        const double split = split_us(st, r, a, rows_comb);
        printf("%4d %-8s %-6s | %10.2f %11.2f %13.2f %6.2f | %10.2f %11.2f | %11.2f\n", T, layout,
               names[i], rows_comb, empty_comb, marginal, mb / marginal, rows_alone, empty_alone, split);
      }
    }
  }
  return 0;
}
