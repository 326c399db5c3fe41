//! Low-latency mode (decode): dispatch and combine with send and receive as separate launches.
//!
//! The device API is [`LlGroup`]: made from a spec and a transport (R virtual ranks of one GPU,
//! or one rank per GPU over NCCL), it takes the caller's device tensors ([`Tensor`]) on the
//! caller's stream ([`Stream`]) and returns views into the windows ([`Received`]). Each
//! [`LlCall`] is one call's state; two calls on different window halves can be in flight.
//! [`LowLatency`] adds host-vector helpers on top, for tests, `epc run` and the main job;
//! [`LlKernels`] gives typed handles for specs declared in Rust.

mod call;
mod errors;
mod graphs;
mod group;
mod harness;
mod launch;
mod nccl;
mod tensor;
mod typed;

pub use call::{CombineInput, DispatchInput, LlCall, Received};
pub use graphs::{GraphTimes, LaunchFloor, LlGraphs, PhaseTimes, StreamCall};
pub use group::{DEFAULT_TIMEOUT, LlGroup};
pub use harness::{HostCall, LowLatency, RankDispatch};
pub use tensor::{Elem, Stream, Tensor};
pub use typed::{LlKernels, SpecCall};
