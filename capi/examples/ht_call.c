/*
 * epc from C: a high-throughput call (flat layout) on 8 virtual ranks of GPU 0.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I capi/include capi/examples/ht_call.c \
 *      -L target/release -lepc -ldl -o ht_call
 *   LD_LIBRARY_PATH=target/release ./ht_call
 *
 * The spec is given as YAML text. Each rank dispatches 256 tokens of x = 1; every receiving rank
 * returns its rows unchanged, so the flat combine (the sum over the ranks that received a token)
 * gives, for each token, the number of ranks its experts live on: checked for every element.
 * Without a GPU it says why it skips the call (exit 0).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epc.h"
#include "example.h"

static const char* kSpec =
    "name: c-example-ht\n"
    "mode: high_throughput\n"
    "hidden: 1024\n"
    "dtype: bf16\n"
    "experts: 64\n"
    "top_k: 4\n"
    "ranks: 8\n"
    "max_tokens_per_rank: 256\n"
    "max_recv_tokens_per_rank: 2048\n"
    "layout: flat\n";

/* bf16 of a small whole number. */
int main(void) {
  epcGroupConfig_t config;
  memset(&config, 0, sizeof config);
  config.size = sizeof config;
  config.spec_yaml = kSpec;
  epcGroup_t group = NULL;
  epcResult_t made = epcCreateGroup(&group, NULL, &config);
  if (made == epcUnavailable) {
    printf("no GPU here, the call is skipped: %s\n", epcGetLastError());
    return 0;
  }
  EXPECT(made, epcSuccess);
  epcGroupInfo_t info;
  EXPECT(epcGroupGetInfo(group, &info), epcSuccess);
  if (info.mode != 1) return 1;
  /* A low-latency call on a high-throughput group is refused. */
  EXPECT(epcCallCreate(group, NULL), epcInvalidArgument);

  struct driver cu;
  if (load_driver(&cu)) {
    fprintf(stderr, "libcuda.so.1 could not be used\n");
    return 1;
  }
  enum { RANKS = 8 };
  const uint64_t t = info.max_tokens_per_rank, h = info.hidden, k = info.top_k;
  if (info.local_ranks != RANKS) return 1;
  epcTensor_t x[RANKS], ids[RANKS], w[RANKS], out[RANKS];
  int ranks_of[RANKS][256];
  uint16_t* ones = malloc(t * h * 2);
  int64_t* experts = malloc(t * k * 8);
  float* weights = malloc(t * k * 4);
  uint16_t* result = malloc(t * h * 2);
  if (!ones || !experts || !weights || !result || t > 256) return 1;
  for (uint64_t i = 0; i < t * h; ++i) ones[i] = bf16_of(1);
  for (uint32_t r = 0; r < RANKS; ++r) {
    for (uint64_t tok = 0; tok < t; ++tok) {
      int seen = 0, distinct = 0;
      for (uint64_t s = 0; s < k; ++s) {
        /* K distinct experts, on 1 to K ranks depending on the token. */
        int64_t e = (int64_t)((tok * 5 + r * 3 + s * (tok % 3 == 0 ? 1 : 17)) % info.experts);
        experts[tok * k + s] = e;
        weights[tok * k + s] = 0.5f;
        int rank = (int)(e / info.local_experts);
        if (!(seen & (1 << rank))) ++distinct;
        seen |= 1 << rank;
      }
      ranks_of[r][tok] = distinct;
    }
    if (upload_rank(&cu, t, h, k, ones, experts, weights, &x[r], &ids[r], &w[r], &out[r])) return 1;
  }

  /* A wrong shape is refused before anything runs. */
  epcTensor_t wrong = x[0];
  wrong.sizes[1] = h + 8;
  epcTensor_t bad_x[RANKS];
  memcpy(bad_x, x, sizeof x);
  bad_x[0] = wrong;
  EXPECT(epcHtDispatchSend(group, bad_x, ids, w, RANKS, NULL), epcInvalidArgument);
  printf("wrong shape: %s\n", epcGetLastError());

  EXPECT(epcHtDispatchSend(group, x, ids, w, RANKS, NULL), epcSuccess);
  EXPECT(epcHtDispatchRecv(group, NULL), epcSuccess);
  uint64_t rows_total = 0;
  for (uint32_t r = 0; r < RANKS; ++r) {
    epcHtReceived_t got;
    EXPECT(epcHtGetReceived(group, r, &got), epcSuccess);
    int32_t rows = 0;
    if (cu.dtoh(&rows, (uint64_t)(uintptr_t)got.recv_rows.data, sizeof rows)) return 1;
    rows_total += (uint64_t)rows;
    /* The "experts": y = the received rows, unchanged. */
    if (rows > 0 && cu.dtod((uint64_t)(uintptr_t)got.y.data, (uint64_t)(uintptr_t)got.recv_x.data,
                            (size_t)rows * h * 2))
      return 1;
  }
  EXPECT(epcHtCombineSend(group, NULL), epcSuccess);
  EXPECT(epcHtCombineRecv(group, ids, w, out, RANKS, NULL), epcSuccess);
  EXPECT(epcCheck(group, NULL), epcSuccess);
  for (uint32_t r = 0; r < RANKS; ++r) {
    if (cu.dtoh(result, (uint64_t)(uintptr_t)out[r].data, t * h * 2)) return 1;
    for (uint64_t i = 0; i < t * h; ++i) {
      uint16_t want = bf16_of(ranks_of[r][i / h]);
      if (result[i] != want) {
        fprintf(stderr, "rank %u element %llu is 0x%04x, expected 0x%04x\n", r, (unsigned long long)i,
                result[i], want);
        return 1;
      }
    }
  }
  printf("HT dispatch (%llu rows received) and combine on %d ranks: every output is its token's rank count\n",
         (unsigned long long)rows_total, RANKS);
  for (uint32_t r = 0; r < RANKS; ++r) {
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
