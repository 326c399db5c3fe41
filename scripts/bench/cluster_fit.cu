// Whether the LL kernels' grid on 8 virtual ranks (16 x 8 blocks of 512 threads, one block per
// SM) can run as thread-block clusters of 1 to 16 blocks (a rank's blocks sharing distributed
// shared memory), launched cooperatively as epc launches it: the clusters that fit at once
// (cudaOccupancyMaxActiveClusters), and whether the cooperative launch is accepted.
//   nvcc -O2 -arch=sm_90 -o cluster_fit scripts/bench/cluster_fit.cu && ./cluster_fit
#include <cstdio>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); } } while (0)
__global__ void __launch_bounds__(512, 1) k(int* p) {
  extern __shared__ int smem[];
  if (threadIdx.x == 0 && p[blockIdx.x] == 12345) smem[0] = 1, p[0] = smem[0];
}
int main() {
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  int* p; CK(cudaMalloc(&p, 1 << 20)); CK(cudaMemset(p, 0, 1 << 20));
  const int smem = 120 * 1024;
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CK(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  printf("SMs %d\n", sms);
  for (int c : {1, 2, 4, 8, 16}) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(16, 8, 1); cfg.blockDim = dim3(512, 1, 1); cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute at[2]; int n = 0;
    at[n].id = cudaLaunchAttributeClusterDimension; at[n].val.clusterDim.x = c; at[n].val.clusterDim.y = 1; at[n].val.clusterDim.z = 1; n++;
    cfg.attrs = at; cfg.numAttrs = n;
    int clusters = -1;
    cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, k, &cfg);
    printf("cluster %2d: max active clusters %d (%s) -> %d blocks co-resident of %d\n", c, clusters, cudaGetErrorString(e), clusters * c, 16 * 8);
    at[n].id = cudaLaunchAttributeCooperative; at[n].val.cooperative = 1; n++;
    cfg.numAttrs = n;
    e = cudaLaunchKernelEx(&cfg, k, p);
    cudaError_t s = cudaDeviceSynchronize();
    printf("            cooperative launch: %s / %s\n", cudaGetErrorString(e), cudaGetErrorString(s));
    cudaGetLastError();
  }
  return 0;
}
