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

/// Mean time of the same-traffic copy of a phase that reads `read` and writes `written` HBM
/// bytes, in microseconds, over `iters` repetitions after 3 warm-ups: a device-to-device copy of
/// `min(read, written)` bytes (reads and writes in equal parts), then the rest of the traffic: a
/// fill of `written - read` bytes when the phase writes more than it reads (HBM writes alone
/// run slower than a copy, so a write-heavy phase is held to what the memory can do for its
/// mix), else a copy of half of `read - written` (the same bytes in a balanced mix).
pub fn traffic_us(gpu: &Gpu, read: usize, written: usize, iters: usize) -> Result<f64, Error> {
    let stream = gpu.stream();
    let balanced = read.min(written) + read.saturating_sub(written) / 2;
    let fill = written.saturating_sub(read);
    let src = stream
        .alloc_zeros::<u8>(balanced.max(1))
        .cuda("allocating the copy source")?;
    let mut dst = stream
        .alloc_zeros::<u8>(balanced.max(1))
        .cuda("allocating the copy destination")?;
    let mut filled = stream
        .alloc_zeros::<u8>(fill.max(1))
        .cuda("allocating the fill destination")?;
    let mut once = || -> Result<(), Error> {
        if balanced > 0 {
            stream.memcpy_dtod(&src, &mut dst).cuda("copying")?;
        }
        if fill > 0 {
            stream.memset_zeros(&mut filled).cuda("filling")?;
        }
        Ok(())
    };
    for _ in 0..3 {
        once()?;
    }
    let (start, stop) = (timing_event(gpu)?, timing_event(gpu)?);
    record(gpu, &start)?;
    for _ in 0..iters.max(1) {
        once()?;
    }
    record(gpu, &stop)?;
    Ok(elapsed_us(&start, &stop)? / iters.max(1) as f64)
}
