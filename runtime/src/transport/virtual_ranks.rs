//! The `virtual` transport: R ranks on one GPU. Each rank's window is its own allocation, and a
//! device table of the R window bases plays the part of NVLink peer pointers, so kernels run the
//! same code as across GPUs.

use cudarc::driver::{CudaSlice, DevicePtr};

use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// R windows, their pointer table, and R workspaces.
#[derive(Debug)]
pub struct VirtualRanks {
    windows: Vec<CudaSlice<u8>>,
    peers: CudaSlice<u64>,
    workspace: CudaSlice<i32>,
    ranks: usize,
    workspace_ints: usize,
}

impl VirtualRanks {
    /// Allocates `ranks` zeroed windows of `window_bytes` and workspaces of `workspace_ints`.
    pub fn new(
        gpu: &Gpu,
        ranks: usize,
        window_bytes: usize,
        workspace_ints: usize,
    ) -> Result<VirtualRanks, Error> {
        let stream = gpu.stream();
        let mut windows = Vec::with_capacity(ranks);
        let mut bases = Vec::with_capacity(ranks);
        for r in 0..ranks {
            let w = stream.alloc_zeros::<u8>(window_bytes).cuda(&format!(
                "allocating the window of virtual rank {r} ({window_bytes} bytes)"
            ))?;
            {
                let (ptr, _sync) = w.device_ptr(stream);
                bases.push(ptr);
            }
            windows.push(w);
        }
        let peers = stream.clone_htod(&bases).cuda("uploading the peer table")?;
        let workspace = stream
            .alloc_zeros::<i32>(ranks * workspace_ints)
            .cuda("allocating the rank workspaces")?;
        Ok(VirtualRanks {
            windows,
            peers,
            workspace,
            ranks,
            workspace_ints,
        })
    }

    /// Rank `rank`'s window.
    pub fn window(&self, rank: usize) -> &CudaSlice<u8> {
        &self.windows[rank]
    }

    /// Rank `rank`'s window, writable.
    pub fn window_mut(&mut self, rank: usize) -> &mut CudaSlice<u8> {
        &mut self.windows[rank]
    }

    /// The device table of window bases.
    pub fn peers(&self) -> &CudaSlice<u64> {
        &self.peers
    }

    /// All ranks' workspaces, `[R, workspace_ints]`.
    pub fn workspace(&self) -> &CudaSlice<i32> {
        &self.workspace
    }

    /// Mutable workspaces.
    pub fn workspace_mut(&mut self) -> &mut CudaSlice<i32> {
        &mut self.workspace
    }

    /// Ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Ints per workspace.
    pub fn workspace_ints(&self) -> usize {
        self.workspace_ints
    }
}
