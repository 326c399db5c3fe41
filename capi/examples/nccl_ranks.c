/*
 * epc from C over the caller's own NCCL communicator: one process per GPU, each one rank.
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I capi/include capi/examples/nccl_ranks.c \
 *      -L target/release -lepc -ldl -o nccl_ranks
 *   LD_LIBRARY_PATH=target/release ./nccl_ranks [N]
 *
 * Starts N processes (default: one per GPU), which agree on an NCCL unique id through shared
 * memory, each make an ncclComm_t with ncclCommInitRank on its GPU and an epc group on it. Each
 * rank dispatches 64 tokens of x = 1 in low-latency mode, its "experts" return the received
 * rows unchanged, and the combine with weights 1/K must give 1 everywhere; then the same in
 * high-throughput mode, where the output is the number of ranks each token reached.
 *
 * NCCL is loaded at run time the way epc loads it (EPC_NCCL, else libnccl.so.2 from the dynamic
 * loader's path), so that the communicator and epc use one library; no NCCL or CUDA header is
 * needed. Without a GPU or NCCL it says why (a line starting with "SKIP:") and exits 0.
 */
#define _DEFAULT_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "epc.h"
#include "example.h"

/* The three NCCL functions used, as nccl.h declares them (ncclUniqueId is 128 bytes). */
typedef struct {
  char internal[128];
} nccl_id_t;
typedef int (*nccl_get_unique_id_t)(nccl_id_t*);
typedef int (*nccl_init_rank_t)(void**, int, nccl_id_t, int);
typedef int (*nccl_destroy_t)(void*);
struct nccl {
  nccl_get_unique_id_t get_unique_id;
  nccl_init_rank_t init_rank;
  nccl_destroy_t destroy;
};

static int load_nccl(struct nccl* n) {
  const char* path = getenv("EPC_NCCL");
  void* lib = dlopen(path && *path ? path : "libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) return 1;
  n->get_unique_id = (nccl_get_unique_id_t)dlsym(lib, "ncclGetUniqueId");
  n->init_rank = (nccl_init_rank_t)dlsym(lib, "ncclCommInitRank");
  n->destroy = (nccl_destroy_t)dlsym(lib, "ncclCommDestroy");
  return !n->get_unique_id || !n->init_rank || !n->destroy;
}

/* What the ranks share: rank 0 publishes the unique id. */
struct shared {
  atomic_int ready;
  nccl_id_t id;
};

enum { TOKENS = 64, HIDDEN = 1024, TOP_K = 4, EXPERTS_PER_RANK = 8 };

/* Device copies of one rank's inputs and output. */
struct buffers {
  epcTensor_t x, ids, w, out;
};

/* Every output element must be `want[token]`. */
static int check_out(struct driver* cu, const struct buffers* b, const uint16_t* want, int rank, const char* what) {
  static uint16_t got[TOKENS * HIDDEN];
  if (cu->dtoh(got, (uint64_t)(uintptr_t)b->out.data, sizeof got)) return 1;
  for (uint64_t i = 0; i < (uint64_t)TOKENS * HIDDEN; ++i) {
    if (got[i] != want[i / HIDDEN]) {
      fprintf(stderr, "rank %d %s: element %llu is 0x%04x, expected 0x%04x\n", rank, what, (unsigned long long)i,
              got[i], want[i / HIDDEN]);
      return 1;
    }
  }
  return 0;
}

static int make_group(epcGroup_t* group, void* comm, int rank, int ranks, const char* mode) {
  char yaml[512];
  snprintf(yaml, sizeof yaml,
           "name: c-nccl-%s-r%d\nmode: %s\nhidden: %d\nexperts: %d\ntop_k: %d\nranks: %d\n"
           "max_tokens_per_rank: %d\n",
           mode, ranks, mode, HIDDEN, EXPERTS_PER_RANK * ranks, TOP_K, ranks, TOKENS);
  if (strcmp(mode, "high_throughput") == 0) {
    size_t used = strlen(yaml);
    snprintf(yaml + used, sizeof yaml - used, "layout: flat\nmax_recv_tokens_per_rank: %d\n", TOKENS * ranks);
  }
  epcGroupConfig_t config;
  memset(&config, 0, sizeof config);
  config.size = sizeof config;
  config.device = rank;
  config.spec_yaml = yaml;
  EXPECT(epcCreateGroup(group, comm, &config), epcSuccess);
  epcGroupInfo_t info;
  EXPECT(epcGroupGetInfo(*group, &info), epcSuccess);
  if (info.local_ranks != 1 || info.first_rank != (uint32_t)rank || info.ranks != (uint32_t)ranks) {
    fprintf(stderr, "rank %d: the group says rank %u of %u (%u local)\n", rank, info.first_rank, info.ranks,
            info.local_ranks);
    return 1;
  }
  return 0;
}

static int run_rank(struct shared* shared, int rank, int ranks) {
  struct nccl nccl;
  struct driver cu;
  if (load_nccl(&nccl) || load_driver_on(&cu, rank)) {
    fprintf(stderr, "rank %d: NCCL or the CUDA driver could not be loaded\n", rank);
    return 1;
  }
  if (rank == 0) {
    if (nccl.get_unique_id(&shared->id)) return 1;
    atomic_store(&shared->ready, 1);
  }
  for (int waited = 0; !atomic_load(&shared->ready); ++waited) {
    if (waited > 60000) return 1; /* 60 s */
    usleep(1000);
  }
  void* comm = NULL;
  if (nccl.init_rank(&comm, ranks, shared->id, rank)) {
    fprintf(stderr, "rank %d: ncclCommInitRank failed\n", rank);
    return 1;
  }

  /* Every rank's routing: K distinct experts per token, on 1 to K ranks. */
  const int experts = EXPERTS_PER_RANK * ranks;
  static int64_t ids[TOKENS * TOP_K];
  static float weights[TOKENS * TOP_K];
  static uint16_t ones[TOKENS * HIDDEN], want_ll[TOKENS], want_ht[TOKENS];
  for (int i = 0; i < TOKENS * HIDDEN; ++i) ones[i] = bf16_of(1);
  for (int t = 0; t < TOKENS; ++t) {
    unsigned seen = 0;
    int reached = 0;
    for (int s = 0; s < TOP_K; ++s) {
      int e = (t * 5 + rank * 3 + s * (t % 3 == 0 ? 1 : 2 * EXPERTS_PER_RANK + 1)) % experts;
      ids[t * TOP_K + s] = e;
      weights[t * TOP_K + s] = 1.0f / TOP_K;
      unsigned bit = 1u << (e / EXPERTS_PER_RANK);
      reached += !(seen & bit);
      seen |= bit;
    }
    want_ll[t] = bf16_of(1);
    want_ht[t] = bf16_of(reached);
  }
  struct buffers b;
  if (upload_rank(&cu, TOKENS, HIDDEN, TOP_K, ones, ids, weights, &b.x, &b.ids, &b.w, &b.out)) return 1;

  /* Low latency. */
  epcGroup_t group = NULL;
  if (make_group(&group, comm, rank, ranks, "low_latency")) return 1;
  epcCall_t call = NULL;
  EXPECT(epcCallCreate(group, &call), epcSuccess);
  for (int round = 0; round < 3; ++round) {
    const int hook = round != 1; /* round 1 runs each phase in one launch */
    if (hook) {
      EXPECT(epcDispatchSend(group, call, &b.x, &b.ids, 1, NULL), epcSuccess);
      EXPECT(epcDispatchRecv(group, call, NULL), epcSuccess);
    } else {
      EXPECT(epcDispatch(group, call, &b.x, &b.ids, 1, NULL), epcSuccess);
    }
    epcReceived_t got;
    EXPECT(epcGetReceived(group, call, 0, &got), epcSuccess);
    size_t bytes = got.recv_x.sizes[0] * got.recv_x.sizes[1] * got.recv_x.sizes[2] * 2;
    if (cu.dtod((uint64_t)(uintptr_t)got.y.data, (uint64_t)(uintptr_t)got.recv_x.data, bytes)) return 1;
    if (hook) {
      EXPECT(epcCombineSend(group, call, NULL), epcSuccess);
      EXPECT(epcCombineRecv(group, call, &b.w, &b.out, 1, NULL), epcSuccess);
    } else {
      EXPECT(epcCombine(group, call, &b.w, &b.out, 1, NULL), epcSuccess);
    }
    EXPECT(epcCheck(group, NULL), epcSuccess);
    if (check_out(&cu, &b, want_ll, rank, "low latency")) return 1;
  }
  EXPECT(epcCallDestroy(call), epcSuccess);
  EXPECT(epcGroupDestroy(group), epcSuccess);

  /* High throughput: the output is x summed over the ranks each token reached. */
  if (make_group(&group, comm, rank, ranks, "high_throughput")) return 1;
  for (int i = 0; i < TOKENS * TOP_K; ++i) weights[i] = 0.5f; /* combine ignores the weights' values */
  EXPECT(epcHtDispatchSend(group, &b.x, &b.ids, &b.w, 1, NULL), epcSuccess);
  EXPECT(epcHtDispatchRecv(group, NULL), epcSuccess);
  epcHtReceived_t got;
  EXPECT(epcHtGetReceived(group, 0, &got), epcSuccess);
  int32_t rows = 0;
  if (cu.dtoh(&rows, (uint64_t)(uintptr_t)got.recv_rows.data, sizeof rows)) return 1;
  if (rows > 0 &&
      cu.dtod((uint64_t)(uintptr_t)got.y.data, (uint64_t)(uintptr_t)got.recv_x.data, (size_t)rows * HIDDEN * 2))
    return 1;
  EXPECT(epcHtCombineSend(group, NULL), epcSuccess);
  EXPECT(epcHtCombineRecv(group, &b.ids, &b.w, &b.out, 1, NULL), epcSuccess);
  EXPECT(epcCheck(group, NULL), epcSuccess);
  if (check_out(&cu, &b, want_ht, rank, "high throughput")) return 1;
  EXPECT(epcGroupDestroy(group), epcSuccess);

  free_rank(&cu, &b.x, &b.ids, &b.w, &b.out);
  if (nccl.destroy(comm)) return 1;
  printf("rank %d of %d: low latency (3 calls) and high throughput match over the caller's ncclComm_t "
         "(%d rows received)\n",
         rank, ranks, rows);
  return 0;
}

/* The GPUs present, or -1 without a driver. */
static int gpu_count(void) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) return -1;
  int (*init)(unsigned) = (int (*)(unsigned))dlsym(lib, "cuInit");
  int (*count)(int*) = (int (*)(int*))dlsym(lib, "cuDeviceGetCount");
  int n = 0;
  if (!init || !count || init(0) || count(&n)) return -1;
  return n;
}

int main(int argc, char** argv) {
  /* Counted in a child, so that this process makes no CUDA context before it forks. */
  int gpus = -1;
  int fds[2];
  if (pipe(fds)) return 1;
  pid_t counter = fork();
  if (counter == 0) {
    int n = gpu_count();
    ssize_t wrote = write(fds[1], &n, sizeof n);
    _exit(wrote == (ssize_t)sizeof n ? 0 : 1);
  }
  if (counter < 0 || read(fds[0], &gpus, sizeof gpus) != (ssize_t)sizeof gpus) return 1;
  waitpid(counter, NULL, 0);
  if (gpus < 1) {
    printf("SKIP: no GPU (the CUDA driver %s)\n", gpus < 0 ? "is missing" : "lists none");
    return 0;
  }
  int ranks = argc > 1 ? atoi(argv[1]) : gpus;
  if (ranks > gpus) {
    printf("SKIP: %d GPUs present, %d needed\n", gpus, ranks);
    return 0;
  }
  struct nccl probe;
  if (load_nccl(&probe)) {
    printf("SKIP: no NCCL (set EPC_NCCL to libnccl.so.2)\n");
    return 0;
  }
  if (ranks < 1 || ranks > 32) {
    fprintf(stderr, "ranks must be 1 to 32\n");
    return 1;
  }
  struct shared* shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) return 1;
  atomic_init(&shared->ready, 0);
  pid_t children[32];
  for (int r = 0; r < ranks; ++r) {
    children[r] = fork();
    if (children[r] == 0) _exit(run_rank(shared, r, ranks));
    if (children[r] < 0) return 1;
  }
  /* When one rank fails, its peers would wait for it: they are stopped. */
  int failed = 0;
  for (int left = ranks; left > 0; --left) {
    int status = 0;
    pid_t done = wait(&status);
    if (done < 0) return 1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      for (int r = 0; r < ranks; ++r) {
        if (children[r] == done) fprintf(stderr, "rank %d failed\n", r);
        else if (!failed) kill(children[r], SIGKILL);
      }
      failed = 1;
    }
  }
  if (failed) return 1;
  printf("done: %d ranks\n", ranks);
  return 0;
}
