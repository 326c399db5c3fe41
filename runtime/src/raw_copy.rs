//! Host copies to and from raw device addresses (windows in NCCL symmetric memory are not
//! cudarc slices), ordered on a stream and waited for: for the host-vector helpers only.

use cudarc::driver::sys::CUdeviceptr;

use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// Fills `dst` from `src`, after the work queued on `gpu`'s stream.
///
/// # Safety
/// `src` must address at least `dst.len()` bytes of `gpu`'s memory that stays allocated until
/// the copy ends (this function waits for it).
pub(crate) unsafe fn read(gpu: &Gpu, src: CUdeviceptr, dst: &mut [u8]) -> Result<(), Error> {
    if dst.is_empty() {
        return Ok(());
    }
    // The stream must belong to the current context (a process may drive several GPUs).
    gpu.context()
        .bind_to_thread()
        .cuda("making the GPU's context current")?;
    let stream = gpu.stream();
    // SAFETY: the caller guarantees `src` holds `dst.len()` bytes; `dst` lives until the
    // synchronization below.
    unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }
        .cuda("reading device memory")?;
    stream.synchronize().cuda("reading device memory")
}

/// Writes `data` at `dst`, ordered after the work queued on `gpu`'s stream, and waits for it.
///
/// # Safety
/// `dst` must address at least `data.len()` bytes of `gpu`'s memory that no kernel uses while
/// the copy runs and that stays allocated until it ends (this function waits for it).
pub(crate) unsafe fn write(gpu: &Gpu, dst: CUdeviceptr, data: &[u8]) -> Result<(), Error> {
    if data.is_empty() {
        return Ok(());
    }
    gpu.context()
        .bind_to_thread()
        .cuda("making the GPU's context current")?;
    let stream = gpu.stream();
    // SAFETY: the caller guarantees `dst` holds `data.len()` bytes; `data` lives until the
    // synchronization below.
    unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, stream.cu_stream()) }
        .cuda("writing device memory")?;
    stream.synchronize().cuda("writing device memory")
}
