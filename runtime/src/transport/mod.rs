//! Transports: how a rank's kernels reach its peers' windows. Kernels see a device table of peer
//! window bases and signal through epoch-tagged flags in the windows, whatever the transport.

pub mod nccl;
mod virtual_ranks;

pub use nccl::{NcclComm, NcclLibrary, NcclUniqueId, NcclVersion, SymmetricWindow};
pub use virtual_ranks::VirtualRanks;
