//! Low-latency calls: dispatch send (returns at once: the hook), dispatch receive, the received
//! views, combine send and combine receive, on the caller's buffers and `cudaStream_t`.

use std::ffi::c_void;

use ep_runtime::{CombineInput, DispatchInput, LlCall, LlGroup, ModeGroup, Stream};

use crate::error::{Failure, boundary, epcResult_t};
use crate::group::{epcGroup, group_mut};
use crate::tensor::{epcTensor_t, tensors};

/// One low-latency call's state (`epcCall_t`): calls alternate between the two halves of the
/// windows, so two can be in flight; a call can be reused for consecutive calls.
pub struct epcCall {
    call: LlCall,
}

/// What one local rank received in a call's dispatch: views into the group's window, valid on
/// the stream after `epcDispatchRecv` until the call's half is used again. `recv_scales` has
/// `ndim` 0 without FP8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct epcReceived_t {
    /// `[L, R*M, H]` payload in the dispatch dtype.
    pub recv_x: epcTensor_t,
    /// `[L, R*M, H/128]` f32 FP8 scales.
    pub recv_scales: epcTensor_t,
    /// `[L]` i32: rows received per local expert.
    pub recv_count: epcTensor_t,
    /// `[L, R*M]` i32: `s * M + t` of each row.
    pub recv_src: epcTensor_t,
    /// `[L, R, 2]` i32: (first row, rows) of each source rank.
    pub recv_range: epcTensor_t,
    /// `[L, R*M, H]`: the experts' outputs, written in place before `epcCombineSend`.
    pub y: epcTensor_t,
}

fn ll<'a>(group: *mut epcGroup) -> Result<&'a mut LlGroup, Failure> {
    match &mut group_mut(group)?.kind {
        ModeGroup::Ll(l) => Ok(l),
        ModeGroup::Ht(_) => Err(Failure::argument(
            "this group's spec is high-throughput; low-latency calls need a low_latency spec",
        )),
    }
}

fn call_mut<'a>(call: *mut epcCall) -> Result<&'a mut LlCall, Failure> {
    if call.is_null() {
        return Err(Failure::argument("call is null"));
    }
    // SAFETY: a non-null call comes from epcCallCreate and is not yet destroyed (the caller's
    // contract).
    Ok(unsafe { &mut (*call).call })
}

/// The caller's `cudaStream_t`.
pub(crate) fn caller_stream(raw: *mut c_void) -> Stream<'static> {
    // SAFETY: a cudaStream_t is a CUstream of the current context (null: the legacy default
    // stream); the caller's contract is that it belongs to the group's GPU and outlives the work.
    unsafe { Stream::from_raw(raw.cast()) }
}

/// Makes a call's state for a low-latency group (setup, not the hot path). Every rank makes
/// its calls in the same order.
///
/// # Safety
/// `group` must be a live group; `call` writable memory for one handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCallCreate(
    group: *mut epcGroup,
    call: *mut *mut epcCall,
) -> epcResult_t {
    boundary("epcCallCreate", || {
        let g = ll(group)?;
        if call.is_null() {
            return Err(Failure::argument("call (the output) is null"));
        }
        let made = g.new_call()?;
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { call.write(Box::into_raw(Box::new(epcCall { call: made }))) };
        Ok(())
    })
}

/// Frees a call's state. Its views are invalid afterwards.
///
/// # Safety
/// `call` must be a live call from `epcCallCreate` whose work has completed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCallDestroy(call: *mut epcCall) -> epcResult_t {
    boundary("epcCallDestroy", || {
        if call.is_null() {
            return Err(Failure::argument("call is null"));
        }
        // SAFETY: a live handle from epcCallCreate, taken back once (the caller's contract).
        drop(unsafe { Box::from_raw(call) });
        Ok(())
    })
}

/// Starts a call: each local rank's `x [T, H]` and `topk_idx [T, K]` (`x[i]`, `topk_idx[i]` for
/// local rank i, `n` = the group's local ranks, T <= M per rank) are written into the experts'
/// windows, on `stream`, with no host synchronization. Ids outside `[-1, E)` are skipped and
/// reported by `epcCheck`.
///
/// # Safety
/// `group` and `call` must be live; `x` and `topk_idx` arrays of `n` descriptors of device
/// memory on the group's GPU; `stream` a stream of that GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcDispatchSend(
    group: *mut epcGroup,
    call: *mut epcCall,
    x: *const epcTensor_t,
    topk_idx: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcDispatchSend", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        let inputs = dispatch_inputs(x, topk_idx, n)?;
        Ok(g.dispatch_send(c, &inputs, caller_stream(stream))?)
    })
}

/// A call's whole dispatch on `stream` (`epcDispatchSend` then `epcDispatchRecv`, in one
/// launch where the group's ranks fit one); the views of `epcGetReceived` are then valid on the
/// stream.
///
/// # Safety
/// As `epcDispatchSend`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcDispatch(
    group: *mut epcGroup,
    call: *mut epcCall,
    x: *const epcTensor_t,
    topk_idx: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcDispatch", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        let inputs = dispatch_inputs(x, topk_idx, n)?;
        Ok(g.dispatch(c, &inputs, caller_stream(stream))?)
    })
}

/// Completes a call's dispatch on `stream`: waits for every rank's rows; the views of
/// `epcGetReceived` are then valid on the stream.
///
/// # Safety
/// `group` and `call` must be live; `stream` a stream of the group's GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcDispatchRecv(
    group: *mut epcGroup,
    call: *mut epcCall,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcDispatchRecv", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        Ok(g.dispatch_recv(c, caller_stream(stream))?)
    })
}

/// The views of what local rank `local_rank` received in `call` (see `epcReceived_t`).
///
/// # Safety
/// `group` and `call` must be live; `received` writable memory for one `epcReceived_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcGetReceived(
    group: *mut epcGroup,
    call: *mut epcCall,
    local_rank: u32,
    received: *mut epcReceived_t,
) -> epcResult_t {
    boundary("epcGetReceived", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        if received.is_null() {
            return Err(Failure::argument("received is null"));
        }
        let r = c.received(g, local_rank as usize)?;
        let views = epcReceived_t {
            recv_x: epcTensor_t::of(&r.recv_x),
            recv_scales: r
                .recv_scales
                .as_ref()
                .map_or(epcTensor_t::none(), epcTensor_t::of),
            recv_count: epcTensor_t::of(&r.recv_count),
            recv_src: epcTensor_t::of(&r.recv_src),
            recv_range: epcTensor_t::of(&r.recv_range),
            y: epcTensor_t::of(&r.y),
        };
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { received.write(views) };
        Ok(())
    })
}

/// Announces, on `stream`, that the group's experts have written the call's `y`.
///
/// # Safety
/// `group` and `call` must be live; `stream` a stream of the group's GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCombineSend(
    group: *mut epcGroup,
    call: *mut epcCall,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcCombineSend", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        Ok(g.combine_send(c, caller_stream(stream))?)
    })
}

/// Pulls each token's expert rows and reduces them into `out[i] [T, H]`:
/// `out[t] = sum over k of topk_weights[i][t, k] * y(row of t, k)` in f32, k in order; T is the
/// call's dispatch's for local rank i.
///
/// # Safety
/// `group` and `call` must be live; `topk_weights` and `out` arrays of `n` descriptors of
/// device memory on the group's GPU; `stream` a stream of that GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCombineRecv(
    group: *mut epcGroup,
    call: *mut epcCall,
    topk_weights: *const epcTensor_t,
    out: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcCombineRecv", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        let inputs = combine_inputs(topk_weights, out, n)?;
        Ok(g.combine_recv(c, &inputs, caller_stream(stream))?)
    })
}

/// A call's whole combine on `stream` (`epcCombineSend` then `epcCombineRecv`, in one launch
/// where the group's ranks fit one).
///
/// # Safety
/// As `epcCombineRecv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCombine(
    group: *mut epcGroup,
    call: *mut epcCall,
    topk_weights: *const epcTensor_t,
    out: *const epcTensor_t,
    n: u32,
    stream: *mut c_void,
) -> epcResult_t {
    boundary("epcCombine", || {
        let g = ll(group)?;
        let c = call_mut(call)?;
        let inputs = combine_inputs(topk_weights, out, n)?;
        Ok(g.combine(c, &inputs, caller_stream(stream))?)
    })
}

/// Waits for `stream`, then reports the first error the group's kernels recorded (as
/// `epcDeviceError`, with the rank, token and slot in the message) and clears them. The one call
/// that synchronizes with the host: make it when a result is wanted, not per step.
///
/// # Safety
/// `group` must be live; `stream` a stream of the group's GPU (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCheck(group: *mut epcGroup, stream: *mut c_void) -> epcResult_t {
    boundary("epcCheck", || {
        let g = group_mut(group)?;
        let s = caller_stream(stream);
        Ok(g.kind.check(s)?)
    })
}

/// Each local rank's dispatch inputs from the caller's `n` descriptors of each tensor.
fn dispatch_inputs(
    x: *const epcTensor_t,
    topk_idx: *const epcTensor_t,
    n: u32,
) -> Result<Vec<DispatchInput>, Failure> {
    Ok(DispatchInput::per_rank(
        tensors(x, n, "x")?,
        tensors(topk_idx, n, "topk_idx")?,
    )?)
}

/// Each local rank's combine inputs from the caller's `n` descriptors of each tensor.
fn combine_inputs(
    topk_weights: *const epcTensor_t,
    out: *const epcTensor_t,
    n: u32,
) -> Result<Vec<CombineInput>, Failure> {
    Ok(CombineInput::per_rank(
        tensors(topk_weights, n, "topk_weights")?,
        tensors(out, n, "out")?,
    )?)
}
