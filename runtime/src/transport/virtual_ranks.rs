//! The `virtual` transport: R ranks on one GPU. Each rank's window is its own allocation, and a
//! device table of the R window bases plays the part of NVLink peer pointers, so kernels run the
//! same code as across GPUs.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr};

use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// R zeroed windows and their pointer table.
#[derive(Debug)]
pub struct VirtualRanks {
    windows: Vec<CudaSlice<u8>>,
    bases: Vec<CUdeviceptr>,
    peers: CudaSlice<u64>,
}

impl VirtualRanks {
    /// Allocates `ranks` zeroed windows of `window_bytes` each.
    pub fn new(gpu: &Gpu, ranks: usize, window_bytes: usize) -> Result<VirtualRanks, Error> {
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
        Ok(VirtualRanks {
            windows,
            bases,
            peers,
        })
    }

    /// Device address of rank `rank`'s window.
    pub fn base(&self, rank: usize) -> CUdeviceptr {
        self.bases[rank]
    }

    /// The device table of window bases, `[R]`.
    pub fn peers(&self) -> &CudaSlice<u64> {
        &self.peers
    }

    /// Ranks.
    pub fn ranks(&self) -> usize {
        self.windows.len()
    }
}
