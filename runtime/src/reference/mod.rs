//! CPU references: the definition of what each kernel must produce. GPU results are compared
//! with these bitwise, so every formula here is the one the kernels implement, written once.

pub mod fp8;
pub mod ht;
pub mod ll;
mod routing_layout;
pub mod values;

pub use routing_layout::{BadSlot, Layout, layout};
