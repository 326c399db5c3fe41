//! High-throughput mode (prefill and training): the routing layout kernel (which the main job
//! also runs for low-latency specs: it is the routing statistics both modes need), notify (every
//! rank's counts exchanged, offsets derived on the device), and dispatch and combine in the flat
//! and expert-major layouts, on virtual ranks and over NCCL. [`HtGroup`] is the device API
//! (caller tensors, caller stream, no host synchronization); its host-vector helper serves tests
//! and the command line.

mod group;
mod host;
mod layout;
mod notify;

pub use group::{HtCombineInput, HtDispatchInput, HtGroup, HtReceivedViews};
pub use host::{HtReceived, HtTimes};
pub use layout::LayoutKernel;
pub use notify::{HtNotify, NotifyResult, expected_notify};
