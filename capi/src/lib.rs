//! The C interface of epc: `libepc.so` with the header `include/epc.h` (generated from this
//! crate by cbindgen; a test keeps it current).
//!
//! A group is made from a spec (YAML text, a file or a built-in name) and either the caller's
//! `ncclComm_t` (one rank per process and GPU) or nothing (all of the spec's ranks as virtual
//! ranks of one GPU). Low-latency calls (`epcDispatchSend` ...) and high-throughput ones
//! (`epcHtDispatchSend` ...) then run on caller-owned device buffers, described by `epcTensor_t`,
//! and the caller's `cudaStream_t`, with no host synchronization until `epcCheck`.
//! Names and argument order follow NCCL EP's C API where that serves C users (the group first,
//! the stream last). No Rust type crosses the boundary: handles are opaque pointers, every
//! entry point checks its arguments and catches panics, and a failure is a result code with a
//! message from `epcGetLastError`.
#![allow(non_camel_case_types)]

mod error;
mod group;
mod ht;
mod ll;
mod tensor;

pub use error::{epcGetErrorString, epcGetLastError, epcResult_t};
pub use group::{
    epcCreateGroup, epcGroup, epcGroupConfig_t, epcGroupDestroy, epcGroupGetInfo, epcGroupInfo_t,
};
pub use ht::{
    epcHtCombineRecv, epcHtCombineSend, epcHtDispatchRecv, epcHtDispatchSend, epcHtGetReceived,
    epcHtLayout, epcHtReceived_t,
};
pub use ll::{
    epcCall, epcCallCreate, epcCallDestroy, epcCheck, epcCombineRecv, epcCombineSend,
    epcDispatchRecv, epcDispatchSend, epcGetReceived, epcReceived_t,
};
pub use tensor::{epcDataType_t, epcTensor_t};
