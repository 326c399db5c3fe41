/*
 * epc: MoE expert-parallel dispatch and combine, JIT-compiled per model shape.
 *
 * A group is made from a spec and a communicator (ncclComm_t, passed as void*) or none (all
 * ranks as virtual ranks of one GPU); calls run on caller-owned device buffers (epcTensor_t)
 * and a cudaStream_t (passed as void*). Every function returns an epcResult_t; on failure,
 * epcGetLastError() says why. Licensed MIT OR Apache-2.0.
 */

#ifndef EPC_H
#define EPC_H

/* Generated from capi/src by cbindgen (capi/cbindgen.toml); tests/header.rs keeps it current. Do not edit. */

#include <stdint.h>
#include <stddef.h>
/* Opaque handles. */
typedef struct epcGroup_st *epcGroup_t;
typedef struct epcCall_st *epcCall_t;

// What an epc call returned. Every value but `epcSuccess` leaves a message for
// `epcGetLastError` on the calling thread.
typedef enum epcResult_t {
  // The call did what it says.
  epcSuccess = 0,
  // An argument is null, out of range, or does not match the group (count, shape, dtype).
  epcInvalidArgument = 1,
  // The spec does not parse or breaks a rule (the message says where).
  epcInvalidSpec = 2,
  // Something the call needs is missing on this machine: the CUDA driver, a GPU, NVRTC or
  // NCCL (the message says where epc looked and how to install it).
  epcUnavailable = 3,
  // A CUDA driver, NVRTC or NCCL call failed.
  epcCudaError = 4,
  // A kernel reported an error (an expert id outside `[-1, E)`, a full receive buffer, a peer
  // that never signalled); the results of that call are not valid.
  epcDeviceError = 5,
  // A bug in epc, caught at the boundary; please report the message.
  epcInternalError = 6,
} epcResult_t;

// Element types of the tensors epc takes and returns.
typedef enum epcDataType_t {
  // bfloat16.
  epcBfloat16 = 0,
  // IEEE half.
  epcFloat16 = 1,
  // FP8 e4m3 codes.
  epcFloat8e4m3 = 2,
  // f32.
  epcFloat32 = 3,
  // i32.
  epcInt32 = 4,
  // i64.
  epcInt64 = 5,
  // bool, one byte (0 or 1).
  epcBool = 6,
} epcDataType_t;

// One low-latency call's state (`epcCall_t`): calls alternate between the two halves of the
// windows, so two can be in flight; a call can be reused for consecutive calls.
typedef struct epcCall_st epcCall_st;

// A group (`epcGroup_t`): its kernels' state, in the spec's mode.
typedef struct epcGroup_st epcGroup_st;

// How to make a group. Set `size` to `sizeof(epcGroupConfig_t)` and exactly one of
// `spec_yaml`, `spec_path` and `spec_name`.
typedef struct epcGroupConfig_t {
  // `sizeof(epcGroupConfig_t)`, so that later versions can add fields.
  uint32_t size;
  // CUDA device ordinal of the group's GPU (with a communicator: the communicator's device).
  int32_t device;
  // The spec as YAML text, NUL-terminated, or null.
  const char *spec_yaml;
  // The path of a spec file, or null.
  const char *spec_path;
  // The name of a built-in spec (`"deepseek-v3-ll"`), or null.
  const char *spec_name;
  // How long any wait for a peer lasts before it is reported as `epcDeviceError`, in
  // nanoseconds; 0 keeps the default (10 s).
  uint64_t timeout_ns;
} epcGroupConfig_t;

// What a group runs, as `epcGroupGetInfo` reports it.
typedef struct epcGroupInfo_t {
  // 0: low latency (`epcDispatchSend` and the rest), 1: high throughput.
  int32_t mode;
  // Ranks of the deployment (R).
  uint32_t ranks;
  // Ranks this group drives: R for virtual ranks, 1 over a communicator.
  uint32_t local_ranks;
  // The global rank of the first local rank (0 for virtual ranks).
  uint32_t first_rank;
  // Hidden size (H).
  uint32_t hidden;
  // Experts (E) and experts per rank (E / R).
  uint32_t experts;
  // Experts per rank.
  uint32_t local_experts;
  // Slots per token (K).
  uint32_t top_k;
  // Tokens per rank and call, at most (M).
  uint32_t max_tokens_per_rank;
  // `epcDataType_t` of `x` and `out`.
  int32_t dtype;
  // `epcDataType_t` of the received payload (FP8 codes with scales, or `dtype`).
  int32_t dispatch_dtype;
  // `epcDataType_t` of `topk_idx`.
  int32_t index_dtype;
} epcGroupInfo_t;

// A contiguous, row-major device tensor of `ndim` (1 to 3) dimensions: caller memory on the
// group's GPU, 16-byte aligned, kept alive (and, for inputs, unchanged) until the work given it
// has run on the stream. Sizes past `ndim` are ignored.
typedef struct epcTensor_t {
  // Device address (may be null when a size is 0).
  void *data;
  // Dimensions in use, 1 to 3.
  uint32_t ndim;
  // Sizes of the dimensions, outermost first.
  uint64_t sizes[3];
  // Element type; an out-of-range value is rejected.
  int32_t dtype;
} epcTensor_t;

// What one local rank received in a high-throughput dispatch: views into the group's window
// (and notify's outputs), valid on the stream after `epcHtDispatchRecv` until the next
// dispatch. Every view spans the whole buffer (C = max_recv_tokens_per_rank rows); the rows in
// use are the first `recv_rows` (flat layout) or `group_offset[L]` (expert-major), counts that
// stay on the device unless the caller reads them. `recv_scales` has `ndim` 0 without FP8.
typedef struct epcHtReceived_t {
  // `[C, H]` payload in the dispatch dtype (FP8: e4m3 codes).
  struct epcTensor_t recv_x;
  // `[C, H / 128]` f32 FP8 block scales.
  struct epcTensor_t recv_scales;
  // `[C, K]` the row's token's slots as local expert ids, -1 for slots elsewhere.
  struct epcTensor_t recv_topk_idx;
  // `[C, K]` f32 weights, 0 where -1.
  struct epcTensor_t recv_topk_w;
  // `[C]` i32: `s * M + t` of each row (-1 for expert-major padding rows).
  struct epcTensor_t recv_src;
  // `[C, H]`: what this rank returns for each row, written in place before
  // `epcHtCombineSend` (flat: the row's experts weighted and summed; expert-major: the
  // expert's output for that slot).
  struct epcTensor_t y;
  // `[1]` i32: rows received (flat layout).
  struct epcTensor_t recv_rows;
  // `[L]` i32: slots naming each local expert.
  struct epcTensor_t num_recv_tokens_per_expert;
  // `[L + 1]` i32: the first row of each local expert's group (expert-major); the last entry
  // is the rows in use.
  struct epcTensor_t group_offset;
} epcHtReceived_t;

// What one local rank received in a call's dispatch: views into the group's window, valid on
// the stream after `epcDispatchRecv` until the call's half is used again. `recv_scales` has
// `ndim` 0 without FP8.
typedef struct epcReceived_t {
  // `[L, R*M, H]` payload in the dispatch dtype.
  struct epcTensor_t recv_x;
  // `[L, R*M, H/128]` f32 FP8 scales.
  struct epcTensor_t recv_scales;
  // `[L]` i32: rows received per local expert.
  struct epcTensor_t recv_count;
  // `[L, R*M]` i32: `s * M + t` of each row.
  struct epcTensor_t recv_src;
  // `[L, R, 2]` i32: (first row, rows) of each source rank.
  struct epcTensor_t recv_range;
  // `[L, R*M, H]`: the experts' outputs, written in place before `epcCombineSend`.
  struct epcTensor_t y;
} epcReceived_t;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The message of the last call on this thread that did not return `epcSuccess` (empty when
// none did). The text stays valid until the next failing call on this thread.
const char *epcGetLastError(void);

// A static name for a result code (`"epcInvalidArgument"`), or `"unknown epcResult_t"`.
const char *epcGetErrorString(int32_t result);

// Makes a group of `config`'s spec: with `comm` null, all of the spec's ranks as virtual ranks
// of `config->device`; otherwise one rank per process over the caller's `ncclComm_t` (which
// the caller keeps, alive and unused by other threads, until `epcGroupDestroy`), collective
// over the communicator. Compiles the spec's kernels with NVRTC (cached) and allocates the
// windows. On success `*group` is the new group; on failure it is left unchanged.
//
// # Safety
// `group` must point to writable memory for one handle; `config` to an `epcGroupConfig_t`
// whose strings are NUL-terminated; `comm` must be null or a live `ncclComm_t` of the libnccl
// epc loads (one per process).
enum epcResult_t epcCreateGroup(struct epcGroup_st **group,
                                void *comm,
                                const struct epcGroupConfig_t *config);

// Describes a group.
//
// # Safety
// `group` must be a live group from `epcCreateGroup`, `info` writable memory for one
// `epcGroupInfo_t`.
enum epcResult_t epcGroupGetInfo(struct epcGroup_st *group, struct epcGroupInfo_t *info);

// Destroys a group: over a communicator, collective (every rank meets once more, so that no
// peer still reads this rank's window), then frees its windows. The caller's communicator is
// left alive. The handle is invalid afterwards, also when an error is returned.
//
// # Safety
// `group` must be a live group from `epcCreateGroup` that no other thread is using.
enum epcResult_t epcGroupDestroy(struct epcGroup_st *group);

// Starts a high-throughput call: per local rank i, the layout of `topk_idx[i] [T, K]`, notify
// (every rank learns where its rows go), and `x[i] [T, H]` written straight into the
// receivers' buffers; `topk_weights[i] [T, K]` (f32) travel with the rows. T <= M per rank.
// Bad ids, a full receive buffer and timeouts are reported by `epcCheck`.
//
// # Safety
// `group` must be live; `x`, `topk_idx` and `topk_weights` arrays of `n` descriptors of
// device memory on the group's GPU; `stream` a stream of that GPU (or null).
enum epcResult_t epcHtDispatchSend(struct epcGroup_st *group,
                                   const struct epcTensor_t *x,
                                   const struct epcTensor_t *topk_idx,
                                   const struct epcTensor_t *topk_weights,
                                   uint32_t n,
                                   void *stream);

// The routing layout of `topk_idx [T, K]` into the caller's tensors, on `stream` with no host
// synchronization (DeepEP's `get_dispatch_layout`): `counters [R + E + 2]` (`epcInt32`) gets
// the tokens per rank, the slots per expert, the number of slots whose id is outside `[-1, E)`
// and `2^31 - 1 - (t * K + k)` of the first such slot (0 when none); `is_token_in_rank [T, R]`
// (`epcBool`) whether token t goes to rank r. The dispatch computes its own layout; this is for
// callers that want the counts.
//
// # Safety
// `group` must be live; the three descriptors device memory on the group's GPU; `stream` a
// stream of that GPU (or null).
enum epcResult_t epcHtLayout(struct epcGroup_st *group,
                             const struct epcTensor_t *topk_idx,
                             const struct epcTensor_t *counters,
                             const struct epcTensor_t *is_token_in_rank,
                             void *stream);

// Completes a high-throughput dispatch on `stream` (waits for every sender); the views of
// `epcHtGetReceived` are then valid on the stream.
//
// # Safety
// `group` must be live; `stream` a stream of the group's GPU (or null).
enum epcResult_t epcHtDispatchRecv(struct epcGroup_st *group, void *stream);

// The views of what local rank `local_rank` received (see `epcHtReceived_t`).
//
// # Safety
// `group` must be live; `received` writable memory for one `epcHtReceived_t`.
enum epcResult_t epcHtGetReceived(struct epcGroup_st *group,
                                  uint32_t local_rank,
                                  struct epcHtReceived_t *received);

// Announces, on `stream`, that the group's experts have written `y`.
//
// # Safety
// `group` must be live; `stream` a stream of the group's GPU (or null).
enum epcResult_t epcHtCombineSend(struct epcGroup_st *group, void *stream);

// Pulls the rows returned for each local rank's tokens and reduces them into `out[i] [T, H]`
// (flat: summed over the ranks that received the token, in rank order; expert-major: weighted
// by `topk_weights[i]` over the slots in k order; f32 sums). `topk_idx[i]` and
// `topk_weights[i]` are the dispatch's.
//
// # Safety
// `group` must be live; the arrays hold `n` descriptors of device memory on the group's GPU;
// `stream` a stream of that GPU (or null).
enum epcResult_t epcHtCombineRecv(struct epcGroup_st *group,
                                  const struct epcTensor_t *topk_idx,
                                  const struct epcTensor_t *topk_weights,
                                  const struct epcTensor_t *out,
                                  uint32_t n,
                                  void *stream);

// Makes a call's state for a low-latency group (setup, not the hot path). Every rank makes
// its calls in the same order.
//
// # Safety
// `group` must be a live group; `call` writable memory for one handle.
enum epcResult_t epcCallCreate(struct epcGroup_st *group, struct epcCall_st **call);

// Frees a call's state. Its views are invalid afterwards.
//
// # Safety
// `call` must be a live call from `epcCallCreate` whose work has completed.
enum epcResult_t epcCallDestroy(struct epcCall_st *call);

// Starts a call: each local rank's `x [T, H]` and `topk_idx [T, K]` (`x[i]`, `topk_idx[i]` for
// local rank i, `n` = the group's local ranks, T <= M per rank) are written into the experts'
// windows, on `stream`, with no host synchronization. Ids outside `[-1, E)` are skipped and
// reported by `epcCheck`.
//
// # Safety
// `group` and `call` must be live; `x` and `topk_idx` arrays of `n` descriptors of device
// memory on the group's GPU; `stream` a stream of that GPU (or null).
enum epcResult_t epcDispatchSend(struct epcGroup_st *group,
                                 struct epcCall_st *call,
                                 const struct epcTensor_t *x,
                                 const struct epcTensor_t *topk_idx,
                                 uint32_t n,
                                 void *stream);

// A call's whole dispatch on `stream` (`epcDispatchSend` then `epcDispatchRecv`, in one
// launch where the group's ranks fit one); the views of `epcGetReceived` are then valid on the
// stream.
//
// # Safety
// As `epcDispatchSend`.
enum epcResult_t epcDispatch(struct epcGroup_st *group,
                             struct epcCall_st *call,
                             const struct epcTensor_t *x,
                             const struct epcTensor_t *topk_idx,
                             uint32_t n,
                             void *stream);

// Completes a call's dispatch on `stream`: waits for every rank's rows; the views of
// `epcGetReceived` are then valid on the stream.
//
// # Safety
// `group` and `call` must be live; `stream` a stream of the group's GPU (or null).
enum epcResult_t epcDispatchRecv(struct epcGroup_st *group, struct epcCall_st *call, void *stream);

// The views of what local rank `local_rank` received in `call` (see `epcReceived_t`).
//
// # Safety
// `group` and `call` must be live; `received` writable memory for one `epcReceived_t`.
enum epcResult_t epcGetReceived(struct epcGroup_st *group,
                                struct epcCall_st *call,
                                uint32_t local_rank,
                                struct epcReceived_t *received);

// Announces, on `stream`, that the group's experts have written the call's `y`.
//
// # Safety
// `group` and `call` must be live; `stream` a stream of the group's GPU (or null).
enum epcResult_t epcCombineSend(struct epcGroup_st *group, struct epcCall_st *call, void *stream);

// Pulls each token's expert rows and reduces them into `out[i] [T, H]`:
// `out[t] = sum over k of topk_weights[i][t, k] * y(row of t, k)` in f32, k in order; T is the
// call's dispatch's for local rank i.
//
// # Safety
// `group` and `call` must be live; `topk_weights` and `out` arrays of `n` descriptors of
// device memory on the group's GPU; `stream` a stream of that GPU (or null).
enum epcResult_t epcCombineRecv(struct epcGroup_st *group,
                                struct epcCall_st *call,
                                const struct epcTensor_t *topk_weights,
                                const struct epcTensor_t *out,
                                uint32_t n,
                                void *stream);

// A call's whole combine on `stream` (`epcCombineSend` then `epcCombineRecv`, in one launch
// where the group's ranks fit one).
//
// # Safety
// As `epcCombineRecv`.
enum epcResult_t epcCombine(struct epcGroup_st *group,
                            struct epcCall_st *call,
                            const struct epcTensor_t *topk_weights,
                            const struct epcTensor_t *out,
                            uint32_t n,
                            void *stream);

// Waits for `stream`, then reports the first error the group's kernels recorded (as
// `epcDeviceError`, with the rank, token and slot in the message) and clears them. The one call
// that synchronizes with the host: make it when a result is wanted, not per step.
//
// # Safety
// `group` must be live; `stream` a stream of the group's GPU (or null).
enum epcResult_t epcCheck(struct epcGroup_st *group, void *stream);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* EPC_H */
