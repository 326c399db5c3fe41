// epc shim of <cuda_fp8.h> for NVRTC: nccl.h includes it but uses none of its types in the
// parts of NCCL's device API that epc compiles (window pointers and teams), so it is empty.
