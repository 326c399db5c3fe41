// epc shim of <cuda.h> (the driver API) for NVRTC: NCCL's device headers include it (2.28.9 and
// later) for CUDA_VERSION and a few types (values as in CUDA's cuda.h); no driver function is
// needed.
#ifndef EPC_SHIM_CUDA_H
#define EPC_SHIM_CUDA_H
#include <stddef.h>
#ifndef CUDA_VERSION
#define CUDA_VERSION (__CUDACC_VER_MAJOR__ * 1000 + __CUDACC_VER_MINOR__ * 10)
#endif
typedef unsigned long long CUdeviceptr;
typedef int CUdevice;
struct CUctx_st;
typedef struct CUctx_st* CUcontext;
struct CUstream_st;
typedef struct CUstream_st* CUstream;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef enum CUmemLocationType_enum {
  CU_MEM_LOCATION_TYPE_INVALID = 0x0,
  CU_MEM_LOCATION_TYPE_DEVICE = 0x1,
  CU_MEM_LOCATION_TYPE_HOST = 0x2,
  CU_MEM_LOCATION_TYPE_HOST_NUMA = 0x3,
  CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT = 0x4,
  CU_MEM_LOCATION_TYPE_MAX = 0x7FFFFFFF
} CUmemLocationType;
#endif
