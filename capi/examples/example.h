/*
 * What the C examples share: a check of each epc call's result, and the few CUDA driver calls
 * they need, loaded from libcuda.so.1 at run time so that no CUDA header is needed to build them.
 */
#ifndef EPC_EXAMPLE_H
#define EPC_EXAMPLE_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "epc.h"

/* Returns 1 from the calling function unless `call` returns `want`. */
#define EXPECT(call, want)                                                                  \
  do {                                                                                      \
    epcResult_t got_ = (call);                                                              \
    if (got_ != (want)) {                                                                   \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s: %s\n", __FILE__, __LINE__, #call, \
              epcGetErrorString(got_), epcGetErrorString(want), epcGetLastError());         \
      return 1;                                                                             \
    }                                                                                       \
  } while (0)

typedef int (*cu_init_t)(unsigned);
typedef int (*cu_device_get_t)(int*, int);
typedef int (*cu_primary_retain_t)(void**, int);
typedef int (*cu_ctx_set_t)(void*);
typedef int (*cu_alloc_t)(uint64_t*, size_t);
typedef int (*cu_free_t)(uint64_t);
typedef int (*cu_htod_t)(uint64_t, const void*, size_t);
typedef int (*cu_dtoh_t)(void*, uint64_t, size_t);
typedef int (*cu_dtod_t)(uint64_t, uint64_t, size_t);
struct driver {
  cu_alloc_t alloc;
  cu_free_t free;
  cu_htod_t htod;
  cu_dtoh_t dtoh;
  cu_dtod_t dtod;
};

/* Loads the driver and makes GPU `ordinal`'s primary context (the one epc uses) current. */
static int load_driver_on(struct driver* d, int ordinal) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) return 1;
  cu_init_t init = (cu_init_t)dlsym(lib, "cuInit");
  cu_device_get_t device_get = (cu_device_get_t)dlsym(lib, "cuDeviceGet");
  cu_primary_retain_t retain = (cu_primary_retain_t)dlsym(lib, "cuDevicePrimaryCtxRetain");
  cu_ctx_set_t set = (cu_ctx_set_t)dlsym(lib, "cuCtxSetCurrent");
  d->alloc = (cu_alloc_t)dlsym(lib, "cuMemAlloc_v2");
  d->free = (cu_free_t)dlsym(lib, "cuMemFree_v2");
  d->htod = (cu_htod_t)dlsym(lib, "cuMemcpyHtoD_v2");
  d->dtoh = (cu_dtoh_t)dlsym(lib, "cuMemcpyDtoH_v2");
  d->dtod = (cu_dtod_t)dlsym(lib, "cuMemcpyDtoD_v2");
  if (!init || !device_get || !retain || !set || !d->alloc || !d->free || !d->htod || !d->dtoh ||
      !d->dtod)
    return 1;
  int device = 0;
  void* ctx = NULL;
  /* The device's primary context: the one epc (and the CUDA runtime) use. */
  if (init(0) || device_get(&device, ordinal) || retain(&ctx, device) || set(ctx)) return 1;
  return 0;
}

/* Loads the driver and makes GPU 0's primary context current. */
static inline int load_driver(struct driver* d) { return load_driver_on(d, 0); }

/* The bf16 bits of a small integer (exact). */
static inline uint16_t bf16_of(int v) {
  float f = (float)v;
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return (uint16_t)(bits >> 16);
}

/* One rank's device buffers of `t` tokens: x and out [t, h] bf16, topk_idx [t, k] int64 and
 * topk_weights [t, k] f32, with x, the ids and the weights uploaded from the host arrays. */
static inline int upload_rank(struct driver* cu, uint64_t t, uint64_t h, uint64_t k, const uint16_t* x_host,
                              const int64_t* ids_host, const float* w_host, epcTensor_t* x, epcTensor_t* ids,
                              epcTensor_t* w, epcTensor_t* out) {
  uint64_t px, pi, pw, po;
  if (cu->alloc(&px, t * h * 2) || cu->alloc(&pi, t * k * 8) || cu->alloc(&pw, t * k * 4) ||
      cu->alloc(&po, t * h * 2) || cu->htod(px, x_host, t * h * 2) || cu->htod(pi, ids_host, t * k * 8) ||
      cu->htod(pw, w_host, t * k * 4))
    return 1;
  *x = (epcTensor_t){(void*)(uintptr_t)px, 2, {t, h, 0}, epcBfloat16};
  *ids = (epcTensor_t){(void*)(uintptr_t)pi, 2, {t, k, 0}, epcInt64};
  *w = (epcTensor_t){(void*)(uintptr_t)pw, 2, {t, k, 0}, epcFloat32};
  *out = (epcTensor_t){(void*)(uintptr_t)po, 2, {t, h, 0}, epcBfloat16};
  return 0;
}

/* Frees the buffers of `upload_rank`. */
static inline void free_rank(struct driver* cu, const epcTensor_t* x, const epcTensor_t* ids, const epcTensor_t* w,
                             const epcTensor_t* out) {
  cu->free((uint64_t)(uintptr_t)x->data);
  cu->free((uint64_t)(uintptr_t)ids->data);
  cu->free((uint64_t)(uintptr_t)w->data);
  cu->free((uint64_t)(uintptr_t)out->data);
}

#endif /* EPC_EXAMPLE_H */
