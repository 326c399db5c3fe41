//! Transports: how a rank's kernels reach its peers' windows. Kernels see a device table of peer
//! window bases and signal through epoch-tagged flags in the windows, whatever the transport.

pub mod nccl;
mod virtual_ranks;

pub use nccl::{NcclComm, NcclLibrary, NcclUniqueId, NcclVersion, SymmetricWindow};
pub use virtual_ranks::VirtualRanks;

use cudarc::driver::DevicePtr;
use cudarc::driver::sys::CUdeviceptr;

use crate::{Error, Gpu};

/// Registers `bytes`-byte symmetric windows of `spec` for the NCCL members a process drives,
/// after checking that every communicator has the spec's rank count (collective, as
/// [`SymmetricWindow::register`]).
pub(crate) fn register_windows(
    spec: &ep_codegen::Spec,
    members: &[(&Gpu, &NcclComm)],
    bytes: usize,
) -> Result<Vec<SymmetricWindow>, Error> {
    for (_, comm) in members {
        if comm.ranks() != spec.ranks() as usize {
            return Err(Error::Input(format!(
                "spec `{}` has {} ranks; the NCCL communicator of rank {} has {}",
                spec.name(),
                spec.ranks(),
                comm.rank(),
                comm.ranks()
            )));
        }
    }
    SymmetricWindow::register(members, bytes)
}

/// The windows of the ranks a group drives, held to keep them alive while kernels reach them
/// through [`LocalRank`]s.
#[derive(Debug)]
pub(crate) enum Transport {
    /// R windows on this GPU.
    Virtual(#[expect(dead_code, reason = "held only to keep the windows alive")] VirtualRanks),
    /// This GPU's rank's window in NCCL symmetric memory.
    Nccl(#[expect(dead_code, reason = "held only to keep the window alive")] SymmetricWindow),
}

impl Transport {
    /// Whether peers in other processes or on other GPUs reach these windows (then a group
    /// meets its peers once more before freeing them).
    pub(crate) fn is_nccl(&self) -> bool {
        matches!(self, Transport::Nccl(_))
    }
}

/// One rank a process drives: its id and where its window and peer table are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalRank {
    pub rank: usize,
    pub window: CUdeviceptr,
    pub peers: CUdeviceptr,
}

impl LocalRank {
    /// Every rank of `windows`, in rank order.
    pub(crate) fn of_virtual(gpu: &Gpu, windows: &VirtualRanks) -> Vec<LocalRank> {
        let peers = {
            let (ptr, _sync) = windows.peers().device_ptr(gpu.stream());
            ptr
        };
        (0..windows.ranks())
            .map(|rank| LocalRank {
                rank,
                window: windows.base(rank),
                peers,
            })
            .collect()
    }

    /// The rank of an NCCL symmetric window.
    pub(crate) fn of_nccl(window: &SymmetricWindow) -> LocalRank {
        LocalRank {
            rank: window.rank(),
            window: window.base(),
            peers: window.peers_ptr(),
        }
    }
}
