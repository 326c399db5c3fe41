//! High-throughput calls: dispatch send (layout, notify and the rows, with no host
//! synchronization), dispatch receive, the received views, combine send and combine receive, on
//! the caller's buffers and `cudaStream_t`.

use std::ffi::c_void;

use ep_runtime::{HtCombineInput, HtDispatchInput, HtGroup, ModeGroup};

use crate::error::{Failure, boundary, epcResult_t};
use crate::group::{epcGroup, group_mut};
use crate::ll::caller_stream;
use crate::tensor::{epcTensor_t, tensors};

/// What one local rank received in a high-throughput dispatch: views into the group's window
/// (and notify's outputs), valid on the stream after `epcHtDispatchRecv` until the next
/// dispatch. Every view spans the whole buffer (C = max_recv_tokens_per_rank rows); the rows in
/// use are the first `recv_rows` (flat layout) or `group_offset[L]` (expert-major), counts that
/// stay on the device unless the caller reads them. `recv_scales` has `ndim` 0 without FP8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct epcHtReceived_t {
    /// `[C, H]` payload in the dispatch dtype (FP8: e4m3 codes).
    pub recv_x: epcTensor_t,
    /// `[C, H / 128]` f32 FP8 block scales.
    pub recv_scales: epcTensor_t,
    /// `[C, K]` the row's token's slots as local expert ids, -1 for slots elsewhere.
    pub recv_topk_idx: epcTensor_t,
    /// `[C, K]` f32 weights, 0 where -1.
    pub recv_topk_w: epcTensor_t,
    /// `[C]` i32: `s * M + t` of each row (-1 for expert-major padding rows).
    pub recv_src: epcTensor_t,
    /// `[C, H]`: what this rank returns for each row, written in place before
    /// `epcHtCombineSend` (flat: the row's experts weighted and summed; expert-major: the
    /// expert's output for that slot).
    pub y: epcTensor_t,
    /// `[1]` i32: rows received (flat layout).
    pub recv_rows: epcTensor_t,
    /// `[L]` i32: slots naming each local expert.
    pub num_recv_tokens_per_expert: epcTensor_t,
    /// `[L + 1]` i32: the first row of each local expert's group (expert-major); the last entry
    /// is the rows in use.
    pub group_offset: epcTensor_t,
}

fn ht<'a>(group: *mut epcGroup) -> Result<&'a mut HtGroup, Failure> {
    match &mut group_mut(group)?.kind {
        ModeGroup::Ht(h) => Ok(h),
        ModeGroup::Ll(_) => Err(Failure::argument(
            "this group's spec is low-latency; epcHt calls need a high_throughput spec",
        )),
    }
}

/// Starts a high-throughput call: per local rank i, the layout of `topk_idx[i] [T, K]`, notify
/// (every rank learns where its rows go), and `x[i] [T, H]` written straight into the
/// receivers' buffers; `topk_weights[i] [T, K]` (f32) travel with the rows. T <= M per rank.
/// Bad ids, a full receive buffer and timeouts are reported by `epcCheck`.
///
/// # Safety
/// `group` must be live; `x`, `topk_idx` and `topk_weights` arrays of `n` descriptors of
/// device memory on the group's GPU; `stream` a stream of that GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtDispatchSend(
    group: *mut epcGroup,
    x: *const epcTensor_t,
    topk_idx: *const epcTensor_t,
    topk_weights: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcHtDispatchSend", || {
        let g = ht(group)?;
        let inputs = HtDispatchInput::per_rank(
            tensors(x, n, "x")?,
            tensors(topk_idx, n, "topk_idx")?,
            tensors(topk_weights, n, "topk_weights")?,
        )?;
        Ok(g.dispatch_send(&inputs, caller_stream(stream))?)
    })
}

/// The routing layout of `topk_idx [T, K]` into the caller's tensors, on `stream` with no host
/// synchronization (DeepEP's `get_dispatch_layout`): `counters [R + E + 2]` (`epcInt32`) gets
/// the tokens per rank, the slots per expert, the number of slots whose id is outside `[-1, E)`
/// and `2^31 - 1 - (t * K + k)` of the first such slot (0 when none); `is_token_in_rank [T, R]`
/// (`epcBool`) whether token t goes to rank r. The dispatch computes its own layout; this is for
/// callers that want the counts.
///
/// # Safety
/// `group` must be live; the three descriptors device memory on the group's GPU; `stream` a
/// stream of that GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtLayout(
    group: *mut epcGroup,
    topk_idx: *const epcTensor_t,
    counters: *const epcTensor_t,
    is_token_in_rank: *const epcTensor_t,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcHtLayout", || {
        let g = ht(group)?;
        let one = |ptr: *const epcTensor_t, what: &str| -> Result<_, Failure> {
            Ok(tensors(ptr, 1, what)?.remove(0))
        };
        Ok(g.layout(
            one(topk_idx, "topk_idx")?,
            one(counters, "counters")?,
            one(is_token_in_rank, "is_token_in_rank")?,
            caller_stream(stream),
        )?)
    })
}

/// Completes a high-throughput dispatch on `stream` (waits for every sender); the views of
/// `epcHtGetReceived` are then valid on the stream.
///
/// # Safety
/// `group` must be live; `stream` a stream of the group's GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtDispatchRecv(
    group: *mut epcGroup,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcHtDispatchRecv", || {
        Ok(ht(group)?.dispatch_recv(caller_stream(stream))?)
    })
}

/// The views of what local rank `local_rank` received (see `epcHtReceived_t`).
///
/// # Safety
/// `group` must be live; `received` writable memory for one `epcHtReceived_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtGetReceived(
    group: *mut epcGroup,
    local_rank: u32,
    received: *mut epcHtReceived_t,
) -> epcResult_t {
    boundary("epcHtGetReceived", || {
        let g = ht(group)?;
        if received.is_null() {
            return Err(Failure::argument("received is null"));
        }
        let r = g.received(local_rank as usize)?;
        let views = epcHtReceived_t {
            recv_x: epcTensor_t::of(&r.recv_x),
            recv_scales: r
                .recv_scales
                .as_ref()
                .map_or(epcTensor_t::none(), epcTensor_t::of),
            recv_topk_idx: epcTensor_t::of(&r.recv_topk_idx),
            recv_topk_w: epcTensor_t::of(&r.recv_topk_w),
            recv_src: epcTensor_t::of(&r.recv_src),
            y: epcTensor_t::of(&r.y),
            recv_rows: epcTensor_t::of(&r.recv_rows),
            num_recv_tokens_per_expert: epcTensor_t::of(&r.num_recv_tokens_per_expert),
            group_offset: epcTensor_t::of(&r.group_offset),
        };
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { received.write(views) };
        Ok(())
    })
}

/// Announces, on `stream`, that the group's experts have written `y`.
///
/// # Safety
/// `group` must be live; `stream` a stream of the group's GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtCombineSend(
    group: *mut epcGroup,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcHtCombineSend", || {
        Ok(ht(group)?.combine_send(caller_stream(stream))?)
    })
}

/// Pulls the rows returned for each local rank's tokens and reduces them into `out[i] [T, H]`
/// (flat: summed over the ranks that received the token, in rank order; expert-major: weighted
/// by `topk_weights[i]` over the slots in k order; f32 sums). `topk_idx[i]` and
/// `topk_weights[i]` are the dispatch's.
///
/// # Safety
/// `group` must be live; the arrays hold `n` descriptors of device memory on the group's GPU;
/// `stream` a stream of that GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcHtCombineRecv(
    group: *mut epcGroup,
    topk_idx: *const epcTensor_t,
    topk_weights: *const epcTensor_t,
    out: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcHtCombineRecv", || {
        let g = ht(group)?;
        let inputs = HtCombineInput::per_rank(
            tensors(topk_idx, n, "topk_idx")?,
            tensors(topk_weights, n, "topk_weights")?,
            tensors(out, n, "out")?,
        )?;
        Ok(g.combine_recv(&inputs, caller_stream(stream))?)
    })
}
