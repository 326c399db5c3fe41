// epc shim of <cuda_runtime.h> for NVRTC: nccl.h needs only the stream type and CUDART_VERSION
// (which says whether to include <cuda_bf16.h> and <cuda_fp8.h>, shimmed too). NVRTC itself
// provides the device built-ins (threadIdx, __ldg, vector types, ...).
#ifndef EPC_SHIM_CUDA_RUNTIME_H
#define EPC_SHIM_CUDA_RUNTIME_H
#include <stddef.h>
#ifndef CUDART_VERSION
#define CUDART_VERSION (__CUDACC_VER_MAJOR__ * 1000 + __CUDACC_VER_MINOR__ * 10)
#endif
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
#endif
