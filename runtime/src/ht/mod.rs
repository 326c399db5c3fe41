//! High-throughput mode (prefill and training). Built so far: the routing layout kernel, which
//! the main job also runs for low-latency specs (it is the routing statistics both modes need),
//! and notify (every rank's counts exchanged, offsets derived on the device), on virtual ranks.

mod group;
mod layout;
mod notify;

pub use group::{HtGroup, HtReceived, HtTimes};
pub use layout::LayoutKernel;
pub use notify::{HtNotify, NotifyResult, expected_notify};
