/*
 * epc from C: a low-latency call on virtual ranks, and the errors a C caller can get.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I capi/include capi/examples/ll_call.c \
 *      -L target/release -lepc -ldl -o ll_call
 *   LD_LIBRARY_PATH=target/release ./ll_call
 *
 * Without a GPU it checks the error paths and says why it skips the call (exit 0). With one,
 * it makes the built-in gpt-oss-120b-ll spec's 8 ranks on GPU 0, dispatches 64 tokens per rank
 * of x = 1, lets the "experts" return their rows unchanged, combines with weights 1/K, and
 * checks that every output element is 1 (exit 1 otherwise); once with the hook's separate
 * send and receive launches, once with each phase in one launch. Device memory comes from the CUDA
 * driver (libcuda, loaded at run time), so no CUDA header is needed to build it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epc.h"
#include "example.h"

/* Errors a C caller gets back, without a GPU. */
static int error_paths(void) {
  epcGroupConfig_t config;
  memset(&config, 0, sizeof config);
  config.size = sizeof config;
  epcGroup_t group = NULL;

  config.spec_name = "gpt-oss-120b-ll";
  EXPECT(epcCreateGroup(NULL, NULL, &config), epcInvalidArgument);
  EXPECT(epcCreateGroup(&group, NULL, NULL), epcInvalidArgument);
  EXPECT(epcGroupDestroy(NULL), epcInvalidArgument);
  EXPECT(epcCheck(NULL, NULL), epcInvalidArgument);
  EXPECT(epcDispatchSend(NULL, NULL, NULL, NULL, 0, NULL), epcInvalidArgument);
  EXPECT(epcDispatch(NULL, NULL, NULL, NULL, 0, NULL), epcInvalidArgument);
  EXPECT(epcCombine(NULL, NULL, NULL, NULL, 0, NULL), epcInvalidArgument);
  printf("null arguments: %s\n", epcGetLastError());

  config.size = 4; /* an older, smaller struct */
  EXPECT(epcCreateGroup(&group, NULL, &config), epcInvalidArgument);
  printf("struct size: %s\n", epcGetLastError());
  config.size = sizeof config;

  config.spec_yaml = "name: broken\nmode: low_latency\nhidden: 7168\n";
  EXPECT(epcCreateGroup(&group, NULL, &config), epcInvalidArgument); /* two specs given */
  config.spec_name = NULL;
  EXPECT(epcCreateGroup(&group, NULL, &config), epcInvalidSpec);
  printf("bad spec: %s\n", epcGetLastError());

  config.spec_yaml = NULL;
  config.spec_name = "deepseek-v3-l";
  EXPECT(epcCreateGroup(&group, NULL, &config), epcInvalidArgument);
  printf("unknown name: %s\n", epcGetLastError());

  config.spec_name = NULL;
  config.spec_path = "/nonexistent/spec.yaml";
  EXPECT(epcCreateGroup(&group, NULL, &config), epcInvalidSpec);
  printf("missing file: %s\n", epcGetLastError());

  if (group != NULL) {
    fprintf(stderr, "a failed epcCreateGroup wrote the handle\n");
    return 1;
  }
  return 0;
}

int main(void) {
  if (error_paths()) return 1;
  printf("error paths: ok\n");

  epcGroupConfig_t config;
  memset(&config, 0, sizeof config);
  config.size = sizeof config;
  config.spec_name = "gpt-oss-120b-ll";
  epcGroup_t group = NULL;
  epcResult_t made = epcCreateGroup(&group, NULL, &config);
  if (made == epcUnavailable) {
    printf("no GPU here, the call is skipped: %s\n", epcGetLastError());
    return 0;
  }
  EXPECT(made, epcSuccess);
  epcGroupInfo_t info;
  EXPECT(epcGroupGetInfo(group, &info), epcSuccess);
  printf("group: R=%u (%u local) H=%u E=%u K=%u M=%u\n", info.ranks, info.local_ranks, info.hidden,
         info.experts, info.top_k, info.max_tokens_per_rank);
  if (info.dtype != epcBfloat16 || info.dispatch_dtype != epcBfloat16 || info.index_dtype != epcInt64) {
    fprintf(stderr, "the example expects bf16 in and out and int64 ids\n");
    return 1;
  }

  struct driver cu;
  if (load_driver(&cu)) {
    fprintf(stderr, "libcuda.so.1 could not be used\n");
    return 1;
  }
  enum { MAX_RANKS = 64 };
  const uint32_t n = info.local_ranks, h = info.hidden, k = info.top_k;
  const uint64_t t = info.max_tokens_per_rank < 64 ? info.max_tokens_per_rank : 64;
  if (n > MAX_RANKS) return 1;
  epcTensor_t x[MAX_RANKS], ids[MAX_RANKS], w[MAX_RANKS], out[MAX_RANKS];
  uint16_t* ones = malloc(t * h * sizeof(uint16_t));
  int64_t* experts = malloc(t * k * sizeof(int64_t));
  float* weights = malloc(t * k * sizeof(float));
  uint16_t* result = malloc(t * h * sizeof(uint16_t));
  if (!ones || !experts || !weights || !result) return 1;
  for (uint64_t i = 0; i < t * h; ++i) ones[i] = 0x3F80; /* bf16 1.0 */
  for (uint32_t r = 0; r < n; ++r) {
    for (uint64_t i = 0; i < t * k; ++i) {
      /* K distinct experts per token, spread over the ranks. */
      experts[i] = (int64_t)((i / k * 7 + r * 13 + (i % k) * (info.experts / k)) % info.experts);
      weights[i] = 1.0f / (float)k;
    }
    if (upload_rank(&cu, t, h, k, ones, experts, weights, &x[r], &ids[r], &w[r], &out[r])) return 1;
  }

  epcCall_t call = NULL;
  EXPECT(epcCallCreate(group, &call), epcSuccess);
  /* Twice: with the hook (send, then receive), then each phase in one launch. */
  for (int hook = 1; hook >= 0; --hook) {
    if (hook) {
      EXPECT(epcDispatchSend(group, call, x, ids, n, NULL), epcSuccess);
      EXPECT(epcDispatchRecv(group, call, NULL), epcSuccess);
    } else {
      EXPECT(epcDispatch(group, call, x, ids, n, NULL), epcSuccess);
    }
    /* The "experts": y = the received rows, unchanged. */
    for (uint32_t r = 0; r < n; ++r) {
      epcReceived_t got;
      EXPECT(epcGetReceived(group, call, r, &got), epcSuccess);
      size_t bytes = got.recv_x.sizes[0] * got.recv_x.sizes[1] * got.recv_x.sizes[2] * 2;
      if (cu.dtod((uint64_t)(uintptr_t)got.y.data, (uint64_t)(uintptr_t)got.recv_x.data, bytes)) return 1;
    }
    if (hook) {
      EXPECT(epcCombineSend(group, call, NULL), epcSuccess);
      EXPECT(epcCombineRecv(group, call, w, out, n, NULL), epcSuccess);
    } else {
      EXPECT(epcCombine(group, call, w, out, n, NULL), epcSuccess);
    }
    EXPECT(epcCheck(group, NULL), epcSuccess);
    for (uint32_t r = 0; r < n; ++r) {
      if (cu.dtoh(result, (uint64_t)(uintptr_t)out[r].data, t * h * 2)) return 1;
      for (uint64_t i = 0; i < t * h; ++i) {
        if (result[i] != 0x3F80) {
          fprintf(stderr, "rank %u element %llu is 0x%04x, not 1.0\n", r, (unsigned long long)i, result[i]);
          return 1;
        }
      }
    }
    /* Clear the outputs, so that the next round's are its own. */
    memset(result, 0, t * h * sizeof(uint16_t));
    for (uint32_t r = 0; r < n; ++r) {
      if (cu.htod((uint64_t)(uintptr_t)out[r].data, result, t * h * 2)) return 1;
    }
    printf("dispatch and combine (%s) of %llu tokens on each of %u ranks: every output is 1\n",
           hook ? "with the hook" : "one launch each", (unsigned long long)t, n);
  }

  /* A bad id is reported by epcCheck, with where it was. */
  experts[3] = (int64_t)info.experts + 5;
  if (cu.htod((uint64_t)(uintptr_t)ids[0].data, experts, t * k * 8)) return 1;
  EXPECT(epcDispatch(group, call, x, ids, n, NULL), epcSuccess);
  EXPECT(epcCheck(group, NULL), epcDeviceError);
  printf("bad id: %s\n", epcGetLastError());

  EXPECT(epcCallDestroy(call), epcSuccess);
  for (uint32_t r = 0; r < n; ++r) {
    free_rank(&cu, &x[r], &ids[r], &w[r], &out[r]);
  }
  free(ones);
  free(experts);
  free(weights);
  free(result);
  EXPECT(epcGroupDestroy(group), epcSuccess);
  printf("done\n");
  return 0;
}
