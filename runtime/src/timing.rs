//! Timing with CUDA events on the GPU's stream, and the device-to-device copy that benchmarks
//! are measured against.

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// An event that can time (created with `CU_EVENT_DEFAULT`).
pub fn timing_event(gpu: &Gpu) -> Result<CudaEvent, Error> {
    gpu.context()
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .cuda("creating a timing event")
}

/// Records `event` on the GPU's stream.
pub fn record(gpu: &Gpu, event: &CudaEvent) -> Result<(), Error> {
    event.record(gpu.stream()).cuda("recording an event")
}

/// Microseconds between two recorded events (waits for the second).
pub fn elapsed_us(start: &CudaEvent, stop: &CudaEvent) -> Result<f64, Error> {
    stop.synchronize().cuda("waiting for an event")?;
    Ok(f64::from(start.elapsed_ms(stop).cuda("reading an event timer")?) * 1e3)
}

/// Mean time of a device-to-device copy of `bytes` (`cuMemcpyDtoDAsync`), in microseconds,
/// over `iters` copies after 3 warm-ups.
pub fn copy_us(gpu: &Gpu, bytes: usize, iters: usize) -> Result<f64, Error> {
    let stream = gpu.stream();
    let src = stream
        .alloc_zeros::<u8>(bytes.max(1))
        .cuda("allocating the copy source")?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes.max(1))
        .cuda("allocating the copy destination")?;
    for _ in 0..3 {
        stream.memcpy_dtod(&src, &mut dst).cuda("copying")?;
    }
    let (start, stop) = (timing_event(gpu)?, timing_event(gpu)?);
    record(gpu, &start)?;
    for _ in 0..iters.max(1) {
        stream.memcpy_dtod(&src, &mut dst).cuda("copying")?;
    }
    record(gpu, &stop)?;
    Ok(elapsed_us(&start, &stop)? / iters.max(1) as f64)
}
