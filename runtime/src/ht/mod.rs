//! High-throughput mode (prefill and training). Built so far: the routing layout kernel, which
//! the main job also runs for low-latency specs (it is the routing statistics both modes need).

mod layout;

pub use layout::LayoutKernel;
