// How fast rows can be gathered and reduced on one GPU: the access pattern of the LL combine of
// DeepSeek-V3 at 128 tokens on 8 ranks (8192 rows of 14 KB, 117 MB, read in 2 KB segments), in
// kernels as plain as can be, against a device copy of the same traffic. Each figure is the
// best mean of 3 batches of 20 launches issued back to back.
//   nvcc -O3 -arch=sm_90 -o gather_rows scripts/bench/gather_rows.cu && ./gather_rows
// - ldg / tma: 4 rows summed per output (loads, or `cp.async.bulk` into shared memory, double
//   buffered per warp), rows in order, in random order, or laid out as epc's windows lay out y;
// - combine-like: 8 rows per output, items of (token, 4 chunks) in two groups of 4 slots, as
//   ll_combine.cu.hbs streams them; with the grid split by rank (16 x 8) and the slots' rows
//   shuffled from lanes 0-7 as there; launched cooperatively and with the PDL attribute or not;
//   rows in 8 windows of their own (cudaMalloc or the stream-ordered allocator).
// The yardstick is `epc bench`'s same-traffic copy of DeepSeek-V3's combine at 128 tokens on 8
// ranks (the combine-like kernels' 117 MB read and 15 MB written): 45.2 us on the H100. (A copy
// timed inside this program after its kernels ran 15% slower than the same copy timed alone,
// whatever the bytes held, so it is not timed here.)
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <random>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%d %s\n", __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)
constexpr int kRow = 14336, kSeg = 2048, kSegs = kRow / kSeg, kRows = 8192, kSlots = 4;

// Each warp item = (row group of kSlots rows, segment): loads kSlots segments (16 B x 4 per lane each), sums, writes 16 B x 4.
__global__ void __launch_bounds__(512, 1) ldg(const char* const* rows, uint4* out, int items) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * 16;
  for (int item = (threadIdx.x / 32) * gridDim.x + blockIdx.x; item < items; item += warps) {
    const int g = item / kSegs, seg = item % kSegs;
    uint4 v[kSlots][4];
#pragma unroll
    for (int j = 0; j < kSlots; ++j)
#pragma unroll
      for (int s = 0; s < 4; ++s) v[j][s] = __ldcs(reinterpret_cast<const uint4*>(rows[g * kSlots + j] + seg * kSeg + s * 512) + lane);
    uint4 acc[4] = {};
#pragma unroll
    for (int j = 0; j < kSlots; ++j)
#pragma unroll
      for (int s = 0; s < 4; ++s) { acc[s].x += v[j][s].x; acc[s].y ^= v[j][s].y; acc[s].z += v[j][s].z; acc[s].w ^= v[j][s].w; }
#pragma unroll
    for (int s = 0; s < 4; ++s) out[(static_cast<size_t>(item) * 4 + s) * 32 + lane] = acc[s];
  }
}

// As the LL combine: one output row per 8 rows (K = 8), items of (token, 4 chunks), 2 groups of 4
// slots, bf16 -> f32 FMA in slot order (kMath) or integer adds (to isolate the math).
__device__ __forceinline__ float bf(unsigned short h) { return __uint_as_float(static_cast<unsigned>(h) << 16); }
// acc[s] += w x the 8 bf16 values of v[s] (4 chunks of a lane), f32 FMA.
__device__ __forceinline__ void fma8(float (&acc)[4][8], float w, const uint4 (&v)[4]) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const unsigned u[4] = {v[s].x, v[s].y, v[s].z, v[s].w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      acc[s][2 * q] = fmaf(w, bf(u[q] & 0xffff), acc[s][2 * q]);
      acc[s][2 * q + 1] = fmaf(w, bf(u[q] >> 16), acc[s][2 * q + 1]);
    }
  }
}
// 8 sums as 8 bf16 values (truncated), 16 bytes.
__device__ __forceinline__ uint4 pack8(const float (&acc)[8]) {
  uint4 o;
  o.x = (__float_as_uint(acc[0]) >> 16) | (__float_as_uint(acc[1]) & 0xffff0000u);
  o.y = (__float_as_uint(acc[2]) >> 16) | (__float_as_uint(acc[3]) & 0xffff0000u);
  o.z = (__float_as_uint(acc[4]) >> 16) | (__float_as_uint(acc[5]) & 0xffff0000u);
  o.w = (__float_as_uint(acc[6]) >> 16) | (__float_as_uint(acc[7]) & 0xffff0000u);
  return o;
}
template <bool kMath>
__global__ void __launch_bounds__(512, 1) comb8(const char* const* rows, const float* w, uint4* out, int tokens) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * 16;
  const int items = tokens * kSegs;
  for (int item = (threadIdx.x / 32) * gridDim.x + blockIdx.x; item < items; item += warps) {
    const int t = item / kSegs, seg = item % kSegs;
    float acc[4][8] = {};
    unsigned iacc[4][4] = {};
#pragma unroll
    for (int k0 = 0; k0 < 8; k0 += 4) {
      uint4 v[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int s = 0; s < 4; ++s) v[j][s] = __ldcs(reinterpret_cast<const uint4*>(rows[t * 8 + k0 + j] + seg * kSeg + s * 512) + lane);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (kMath) {
          fma8(acc, w[t * 8 + k0 + j], v[j]);
        } else {
#pragma unroll
          for (int s = 0; s < 4; ++s) {
            iacc[s][0] += v[j][s].x; iacc[s][1] ^= v[j][s].y; iacc[s][2] += v[j][s].z; iacc[s][3] ^= v[j][s].w;
          }
        }
      }
    }
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint4 o = kMath ? pack8(acc[s]) : make_uint4(iacc[s][0], iacc[s][1], iacc[s][2], iacc[s][3]);
      out[(static_cast<size_t>(t) * kSegs + seg) * 128 + s * 32 + lane] = o;
    }
  }
}

// comb8 as the LL combine splits it: grid (16, 8), rank y pulls its own 128 tokens; lane k < 8
// holds slot k's row pointer and weight (loaded an item ahead), shuffled to the warp (kShfl), or
// every lane loads them from the table (as comb8).
template <bool kShfl>
__global__ void __launch_bounds__(512, 1) comb8r(const char* const* rows, const float* w, uint4* out, int tokens_per_rank) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * 16;
  const int items = tokens_per_rank * kSegs;
  const int t0 = blockIdx.y * tokens_per_rank;
  const int first = (threadIdx.x / 32) * gridDim.x + blockIdx.x;
  const char* my_p = nullptr; float my_w = 0.f;
  auto slots_of = [&](int item, const char*& p, float& ww) {
    const int t = t0 + item / kSegs;
    p = lane < 8 && item < items ? rows[t * 8 + lane] : nullptr;
    ww = lane < 8 && item < items ? w[t * 8 + lane] : 0.f;
  };
  slots_of(first, my_p, my_w);
  for (int item = first; item < items; item += warps) {
    const int t = t0 + item / kSegs, seg = item % kSegs;
    const char* nx_p; float nx_w;
    float acc[4][8] = {};
#pragma unroll
    for (int k0 = 0; k0 < 8; k0 += 4) {
      uint4 v[4][4];
      float wj[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const char* p = kShfl ? reinterpret_cast<const char*>(__shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(my_p), k0 + j)) : rows[t * 8 + k0 + j];
        wj[j] = kShfl ? __shfl_sync(0xffffffffu, my_w, k0 + j) : w[t * 8 + k0 + j];
#pragma unroll
        for (int s = 0; s < 4; ++s) v[j][s] = __ldcs(reinterpret_cast<const uint4*>(p + seg * kSeg + s * 512) + lane);
      }
      if (k0 == 0) slots_of(item + warps, nx_p, nx_w);
#pragma unroll
      for (int j = 0; j < 4; ++j) fma8(acc, wj[j], v[j]);
    }
#pragma unroll
    for (int s = 0; s < 4; ++s) out[(static_cast<size_t>(t) * kSegs + seg) * 128 + s * 32 + lane] = pack8(acc[s]);
    my_p = nx_p; my_w = nx_w;
  }
}

__device__ __forceinline__ void mbar_init(uint64_t* b, int n) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"((unsigned)__cvta_generic_to_shared(b)), "r"(n)); }
__device__ __forceinline__ void mbar_expect(uint64_t* b, int bytes) { asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"((unsigned)__cvta_generic_to_shared(b)), "r"(bytes) : "memory"); }
__device__ __forceinline__ void bulk(void* dst, const void* src, int bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(bytes), "r"((unsigned)__cvta_generic_to_shared(b)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, unsigned phase) {
  asm volatile("{ .reg .pred p; W: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1; @!p bra W; }" :: "r"((unsigned)__cvta_generic_to_shared(b)), "r"(phase) : "memory");
}
// TMA: each warp double-buffers its items in shared memory (2 stages x kSlots x 2 KB).
__global__ void __launch_bounds__(256, 1) tma(const char* const* rows, uint4* out, int items) {
  extern __shared__ __align__(128) char smem[];
  __shared__ uint64_t bars[8][2];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  char* buf = smem + w * 2 * kSlots * kSeg;
  if (lane == 0) { mbar_init(&bars[w][0], 1); mbar_init(&bars[w][1], 1); asm volatile("fence.mbarrier_init.release.cluster;"); }
  __syncwarp();
  const int warps = gridDim.x * 8;
  const int first = w * gridDim.x + blockIdx.x;
  auto issue = [&](int item, int st) {
    if (lane == 0 && item < items) {
      const int g = item / kSegs, seg = item % kSegs;
      // The warp's generic reads of this stage (two items ago) before the bulk copy's writes.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      mbar_expect(&bars[w][st], kSlots * kSeg);
      for (int j = 0; j < kSlots; ++j) bulk(buf + (st * kSlots + j) * kSeg, rows[g * kSlots + j] + seg * kSeg, kSeg, &bars[w][st]);
    }
  };
  issue(first, 0);
  unsigned phase[2] = {0, 0};
  int st = 0;
  for (int item = first; item < items; item += warps) {
    issue(item + warps, st ^ 1);
    mbar_wait(&bars[w][st], phase[st]); phase[st] ^= 1;
    uint4 acc[4] = {};
#pragma unroll
    for (int j = 0; j < kSlots; ++j)
#pragma unroll
      for (int s = 0; s < 4; ++s) { uint4 v = reinterpret_cast<const uint4*>(buf + (st * kSlots + j) * kSeg + s * 512)[lane]; acc[s].x += v.x; acc[s].y ^= v.y; acc[s].z += v.z; acc[s].w ^= v.w; }
#pragma unroll
    for (int s = 0; s < 4; ++s) out[(static_cast<size_t>(item) * 4 + s) * 32 + lane] = acc[s];
    __syncwarp();
    st ^= 1;
  }
}

// The rows of the combine-like kernels, laid out as epc's windows lay out y: expert e's rows
// at e x `region`, 32 rows used per expert, in `order`; `base(e)` gives expert e's region.
template <typename Base>
std::vector<const char*> window_rows(const std::vector<int>& order, Base base) {
  std::vector<const char*> rows(kRows);
  for (int i = 0; i < kRows; ++i) rows[i] = base(order[i] % 256) + static_cast<size_t>(order[i] / 256) * kRow;
  return rows;
}

int main() {
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const size_t region = 14ull << 20;  // an expert's rows: R*M = 1024 rows of 14 KB
  char* sparse; CK(cudaMalloc(&sparse, region * 256));  // 3.7 GB, as the 8 windows' y
  char* dense; CK(cudaMalloc(&dense, static_cast<size_t>(kRows) * kRow));
  uint4* out; CK(cudaMalloc(&out, static_cast<size_t>(kRows) * kRow / kSlots));
  float* d_w; CK(cudaMalloc(&d_w, kRows * sizeof(float))); CK(cudaMemset(d_w, 0, kRows * sizeof(float)));
  std::mt19937 rng(1);
  std::vector<int> order(kRows); for (int i = 0; i < kRows; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  const char** d_rows; CK(cudaMalloc(&d_rows, kRows * sizeof(char*)));
  const auto use_rows = [&](const std::vector<const char*>& rows) {
    CK(cudaMemcpy(d_rows, rows.data(), kRows * sizeof(char*), cudaMemcpyHostToDevice));
  };
  CK(cudaFuncSetAttribute(tma, cudaFuncAttributeMaxDynamicSharedMemorySize, 8 * 2 * kSlots * kSeg));
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  // The best mean of 3 batches of 20 launches of `launch`, issued back to back, in us.
  const auto time_us = [&](auto&& launch) {
    float best = 1e9f;
    for (int rep = 0; rep < 3; ++rep) {
      CK(cudaEventRecord(a));
      for (int i = 0; i < 20; ++i) launch();
      CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b)); CK(cudaGetLastError());
      float ms; CK(cudaEventElapsedTime(&ms, a, b)); best = std::min(best, ms / 20);
    }
    return best * 1e3f;
  };
  const auto report = [](const char* what, float us, double rows_per_output) {
    const double bytes = static_cast<double>(kRows) * kRow * (1 + 1.0 / rows_per_output);
    printf("%-66s %8.1f us %7.0f GB/s\n", what, us, bytes / (us * 1e-6) / 1e9);
  };
  const std::vector<const char*> windowed = window_rows(order, [&](int e) { return sparse + e * region; });

  const int items = kRows / kSlots * kSegs;
  for (int layout = 0; layout < 3; ++layout) {
    std::vector<const char*> rows(kRows);
    for (int i = 0; i < kRows; ++i) rows[i] = dense + static_cast<size_t>(layout == 0 ? i : order[i]) * kRow;
    use_rows(layout == 2 ? windowed : rows);
    const char* name[3] = {"rows contiguous, in order", "rows contiguous, random order", "rows as in the windows (14 MB apart)"};
    char what[96];
    snprintf(what, sizeof what, "4 rows per output, loads, %s", name[layout]);
    report(what, time_us([&] { ldg<<<sms, 512>>>(d_rows, out, items); }), kSlots);
    snprintf(what, sizeof what, "4 rows per output, cp.async.bulk, %s", name[layout]);
    report(what, time_us([&] { tma<<<sms, 256, 8 * 2 * kSlots * kSeg>>>(d_rows, out, items); }), kSlots);
  }

  use_rows(windowed);
  report("combine-like, integer adds", time_us([&] { comb8<false><<<sms, 512>>>(d_rows, d_w, out, kRows / 8); }), 8);
  report("combine-like, bf16 FMA", time_us([&] { comb8<true><<<sms, 512>>>(d_rows, d_w, out, kRows / 8); }), 8);
  report("combine-like, grid (16, 8) by rank, slots from the table",
         time_us([&] { comb8r<false><<<dim3(16, 8), 512>>>(d_rows, d_w, out, kRows / 64); }), 8);
  report("combine-like, grid (16, 8) by rank, slots shuffled",
         time_us([&] { comb8r<true><<<dim3(16, 8), 512>>>(d_rows, d_w, out, kRows / 64); }), 8);
  // comb8r<true> launched as epc launches: cooperative, with programmatic stream serialization.
  for (int form = 1; form < 4; ++form) {
    cudaLaunchAttribute at[2]; int na = 0;
    if (form & 1) { at[na].id = cudaLaunchAttributeCooperative; at[na].val.cooperative = 1; na++; }
    if (form & 2) { at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[na].val.programmaticStreamSerializationAllowed = 1; na++; }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(16, 8, 1); cfg.blockDim = dim3(512, 1, 1); cfg.attrs = at; cfg.numAttrs = na;
    char what[96];
    snprintf(what, sizeof what, "combine-like, grid (16, 8), shuffled,%s%s", form & 1 ? " cooperative" : "", form & 2 ? " PDL" : "");
    report(what, time_us([&] { CK(cudaLaunchKernelEx(&cfg, comb8r<true>, (const char* const*)d_rows, (const float*)d_w, out, kRows / 64)); }), 8);
  }
  // The rows in 8 windows of their own (32 experts each), allocated as epc's virtual ranks do
  // (from the stream's pool, zeroed) or with cudaMalloc.
  for (int pool = 0; pool < 2; ++pool) {
    const size_t win = 32 * region + (512ull << 20);  // y and some more, as a window half holds
    char* w8[8];
    for (int r = 0; r < 8; ++r) {
      if (pool) CK(cudaMallocAsync(&w8[r], win, 0)); else CK(cudaMalloc(&w8[r], win));
      CK(cudaMemsetAsync(w8[r], 0, win, 0));
    }
    CK(cudaDeviceSynchronize());
    use_rows(window_rows(order, [&](int e) { return w8[e / 32] + (256ull << 20) + (e % 32) * region; }));
    report(pool ? "combine-like, grid (16, 8), rows in 8 windows (cudaMallocAsync)" : "combine-like, grid (16, 8), rows in 8 windows (cudaMalloc)",
           time_us([&] { comb8r<true><<<dim3(16, 8), 512>>>(d_rows, d_w, out, kRows / 64); }), 8);
    for (int r = 0; r < 8; ++r) { if (pool) CK(cudaFreeAsync(w8[r], 0)); else CK(cudaFree(w8[r])); }
    CK(cudaDeviceSynchronize());
  }
  return 0;
}
