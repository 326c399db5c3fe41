//! Timing with CUDA events on the GPU's stream, and the device-to-device copy that benchmarks
//! are measured against.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaGraph, CudaStream};

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

/// Microseconds between two events recorded on the GPU's stream around what `batch` issues
/// there (waits for it).
pub(crate) fn batch_us(
    gpu: &Gpu,
    batch: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    let (start, stop) = (timing_event(gpu)?, timing_event(gpu)?);
    record(gpu, &start)?;
    batch()?;
    record(gpu, &stop)?;
    elapsed_us(&start, &stop)
}

/// Mean time of one replay of `graph` in microseconds: the best of 3 replays, each timed
/// between two events, after one untimed replay. A graph of many calls runs them back to back,
/// as a serving step replayed as one graph does, with no host work between them.
pub(crate) fn replay_us(gpu: &Gpu, graph: &CudaGraph, what: &str) -> Result<f64, Error> {
    graph.launch().cuda(what)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(batch_us(gpu, &mut || graph.launch().cuda(what))?);
    }
    Ok(best)
}

/// Batches a yardstick is timed in, each way it is issued.
const YARDSTICK_BATCHES: usize = 3;

/// The launches and copies `f` makes on `stream`, captured as one instantiated graph.
pub(crate) fn capture_graph(
    stream: &Arc<CudaStream>,
    what: &str,
    f: impl FnOnce() -> Result<(), Error>,
) -> Result<CudaGraph, Error> {
    let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
    stream
        .begin_capture(mode)
        .cuda("beginning a graph capture")?;
    let captured = f();
    let graph = stream.end_capture(flags).cuda("ending a graph capture")?;
    captured?;
    graph.ok_or_else(|| Error::Input(format!("capturing the {what} produced an empty graph")))
}

/// The best mean time of `once`, in microseconds, after 3 untimed calls: a limit is what the
/// copy achieves at best, however it is issued. Batches of `iters` calls are timed between
/// two events on the GPU's stream, [`YARDSTICK_BATCHES`] issued call by call (in one `epc
/// bench` run two such timings of one traffic differed by 14%, and a host that falls behind
/// the GPU enters the figure) and as many replayed as one CUDA graph (no launch gaps: on the
/// H100 faster for LL-sized copies, slower for HT-sized ones).
fn best_batch_us(
    gpu: &Gpu,
    iters: usize,
    once: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    for _ in 0..3 {
        once()?;
    }
    let iters = iters.max(1);
    let mut best = f64::INFINITY;
    let mut time = |batch: &mut dyn FnMut() -> Result<(), Error>| -> Result<(), Error> {
        best = best.min(batch_us(gpu, batch)? / iters as f64);
        Ok(())
    };
    for _ in 0..YARDSTICK_BATCHES {
        time(&mut || (0..iters).try_for_each(|_| once()))?;
    }
    let graph = capture_graph(gpu.stream(), "yardstick copies", || {
        (0..iters).try_for_each(|_| once())
    })?;
    graph.launch().cuda("replaying the yardstick copies")?;
    for _ in 0..YARDSTICK_BATCHES {
        time(&mut || graph.launch().cuda("replaying the yardstick copies"))?;
    }
    Ok(best)
}

/// Time of a device-to-device copy of `bytes` (`cuMemcpyDtoDAsync`), in microseconds: the best
/// mean of batches of `iters` copies, issued one by one and as a CUDA graph.
pub fn copy_us(gpu: &Gpu, bytes: usize, iters: usize) -> Result<f64, Error> {
    let stream = gpu.stream();
    let src = stream
        .alloc_zeros::<u8>(bytes.max(1))
        .cuda("allocating the copy source")?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes.max(1))
        .cuda("allocating the copy destination")?;
    best_batch_us(gpu, iters, &mut || {
        stream.memcpy_dtod(&src, &mut dst).cuda("copying")
    })
}

/// Time of the same-traffic copy of a phase that reads `read` and writes `written` HBM bytes, in
/// microseconds: the best mean of batches of `iters` repetitions, issued one by one and as a
/// CUDA graph. One repetition is a device-to-device copy of
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
    best_batch_us(gpu, iters, &mut once)
}
