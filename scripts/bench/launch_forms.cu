// The cost of a launch by its form, on one GPU: cooperative or not, with programmatic dependent
// launch (PDL) or not; issued on a stream with the host ahead (queued behind a 5 ms kernel), on a
// stream as the host goes, and inside one CUDA graph. Empty bodies and bodies of 2 and 4 us; 16 x 8
// blocks of 512 threads, one per SM (as the LL kernels on 8 virtual ranks). Also the host time of
// each launch call.
//   nvcc -O2 -arch=sm_90 -o launch_forms scripts/bench/launch_forms.cu && ./launch_forms
#include <cstdio>
#include <chrono>
#include <vector>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

__device__ __forceinline__ unsigned long long now() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__global__ void __launch_bounds__(512, 1) work(int* p, unsigned ns, int pdl) {
  extern __shared__ int smem[];
  if (pdl) { asm volatile("griddepcontrol.wait;" ::: "memory"); asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
  if (ns) { unsigned long long t0 = now(); while (now() - t0 < ns) {} }
  if (threadIdx.x == 0 && p[blockIdx.x] == 12345) smem[0] = 1, p[0] = smem[0];
}
__global__ void spin(unsigned long long ns) { unsigned long long t0 = now(); while (now() - t0 < ns) {} }

int* g_p;
void launch(cudaStream_t s, int coop, int pdl, unsigned ns, int blocks, int smem) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks, 8, 1); cfg.blockDim = dim3(512, 1, 1); cfg.dynamicSmemBytes = smem; cfg.stream = s;
  cudaLaunchAttribute at[2]; int n = 0;
  if (coop) { at[n].id = cudaLaunchAttributeCooperative; at[n].val.cooperative = 1; n++; }
  if (pdl) { at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[n].val.programmaticStreamSerializationAllowed = 1; n++; }
  cfg.attrs = at; cfg.numAttrs = n;
  CK(cudaLaunchKernelEx(&cfg, work, g_p, ns, pdl));
}
int main() {
  cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CK(cudaMalloc(&g_p, 1 << 20)); CK(cudaMemset(g_p, 0, 1 << 20));
  const int smem = 120 * 1024; CK(cudaFuncSetAttribute(work, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int blocks = sms / 8;
  cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
  const int N = 200;
  printf("grid %d x 8 x 512 threads, 120 KB smem (1 block/SM), N=%d\n", blocks, N);
  printf("%-5s %-4s %-6s | %12s %12s %12s %10s\n", "coop", "pdl", "body", "host-ahead", "host-paced", "graph", "host us");
  for (unsigned ns : {0u, 2000u, 4000u})
  for (int coop = 0; coop < 2; ++coop) for (int pdl = 0; pdl < 2; ++pdl) {
    for (int i = 0; i < 20; ++i) launch(s, coop, pdl, ns, blocks, smem);
    CK(cudaStreamSynchronize(s));
    float best_ahead = 1e9, best_paced = 1e9, best_graph = 1e9; double host = 1e9;
    for (int rep = 0; rep < 3; ++rep) {
      spin<<<1, 1, 0, s>>>(5000000ull);
      CK(cudaEventRecord(a, s));
      auto h0 = std::chrono::steady_clock::now();
      for (int i = 0; i < N; ++i) launch(s, coop, pdl, ns, blocks, smem);
      auto h1 = std::chrono::steady_clock::now();
      CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b));
      float ms; CK(cudaEventElapsedTime(&ms, a, b)); best_ahead = std::min(best_ahead, ms * 1000 / N);
      host = std::min(host, std::chrono::duration<double, std::micro>(h1 - h0).count() / N);
      CK(cudaEventRecord(a, s));
      for (int i = 0; i < N; ++i) launch(s, coop, pdl, ns, blocks, smem);
      CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b));
      CK(cudaEventElapsedTime(&ms, a, b)); best_paced = std::min(best_paced, ms * 1000 / N);
    }
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < N; ++i) launch(s, coop, pdl, ns, blocks, smem);
    CK(cudaStreamEndCapture(s, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s)); CK(cudaStreamSynchronize(s));
    for (int rep = 0; rep < 3; ++rep) {
      CK(cudaEventRecord(a, s)); CK(cudaGraphLaunch(ge, s)); CK(cudaEventRecord(b, s)); CK(cudaEventSynchronize(b));
      float ms; CK(cudaEventElapsedTime(&ms, a, b)); best_graph = std::min(best_graph, ms * 1000 / N);
    }
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    printf("%-5d %-4d %-6u | %12.2f %12.2f %12.2f %10.2f\n", coop, pdl, ns, best_ahead, best_paced, best_graph, host);
  }
  return 0;
}
