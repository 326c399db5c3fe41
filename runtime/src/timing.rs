//! Timing with CUDA events on the GPU's stream, and the device-to-device copy that benchmarks
//! are measured against.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cudarc::driver::sys::{self, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, CudaStream};

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

/// Work issued on the GPU's stream, timed both ways, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Issued {
    /// On the GPU: between an event recorded before the work and one after it.
    pub gpu_us: f64,
    /// On the host: the calls that issued it (they return before the GPU has run it). Where it
    /// matches `gpu_us`, the host set the pace.
    pub host_us: f64,
}

impl Issued {
    /// One of `n` equal parts.
    pub fn per(self, n: usize) -> Issued {
        let n = n.max(1) as f64;
        Issued {
            gpu_us: self.gpu_us / n,
            host_us: self.host_us / n,
        }
    }
}

/// What `batch` issues on the GPU's stream, timed between two events there and on the host's
/// clock (waits for it).
pub(crate) fn issued_batch(
    gpu: &Gpu,
    batch: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<Issued, Error> {
    let (start, stop) = (timing_event(gpu)?, timing_event(gpu)?);
    record(gpu, &start)?;
    let began = Instant::now();
    batch()?;
    let host_us = began.elapsed().as_secs_f64() * 1e6;
    record(gpu, &stop)?;
    Ok(Issued {
        gpu_us: elapsed_us(&start, &stop)?,
        host_us,
    })
}

/// Microseconds between two events recorded on the GPU's stream around what `batch` issues
/// there (waits for it).
pub(crate) fn batch_us(
    gpu: &Gpu,
    batch: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    issued_batch(gpu, batch).map(|t| t.gpu_us)
}

/// How long a [`Gate`] holds the stream back at most: where the host cannot queue its work
/// by then (a launch call blocks once the driver's queue is full), the gate opens anyway and
/// the timing is refused.
const GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Rounds queued behind a [`Gate`] at once: at most a few hundred launches and events, well
/// within what the driver queues.
const ROUNDS_PER_HOLD: usize = 32;

/// `rounds` rounds (at least one) as the index ranges queued behind a [`Gate`] at once.
pub(crate) fn holds(rounds: usize) -> impl Iterator<Item = Range<usize>> {
    let rounds = rounds.max(1);
    (0..rounds)
        .step_by(ROUNDS_PER_HOLD)
        .map(move |first| first..(first + ROUNDS_PER_HOLD).min(rounds))
}

/// Holds the GPU's stream back while the host queues work, so that the GPU then runs it back
/// to back, with no gap that the host's speed makes: what the work costs the GPU on a stream.
/// The stream first runs a host function (`cuLaunchHostFunc`) that returns once the work is
/// queued.
pub(crate) struct Gate {
    gpu: Gpu,
}

/// What a gate's host function waits for: `open`, set once the work is queued.
#[derive(Default)]
struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Latch {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.opened.notify_all();
    }
}

/// The host function of a gate: waits until its latch opens, or [`GATE_TIMEOUT`]. It makes no
/// CUDA call, and unwinds nothing into the driver.
extern "C" fn wait_for_latch(latch: *mut c_void) {
    // SAFETY: `latch` is the `Arc<Latch>` that `Gate::hold` gave up for this one call
    // (`Arc::into_raw`); the driver calls this function once, so it is taken back once.
    let latch = unsafe { Arc::from_raw(latch.cast_const().cast::<Latch>()) };
    let open = latch.open.lock().unwrap_or_else(PoisonError::into_inner);
    let waited = latch
        .opened
        .wait_timeout_while(open, GATE_TIMEOUT, |open| !*open);
    drop(waited);
}

impl Gate {
    /// A gate on the GPU's stream.
    pub(crate) fn new(gpu: &Gpu) -> Gate {
        Gate { gpu: gpu.clone() }
    }

    /// Queues what `batch` issues on the GPU's stream behind the gate, then opens it.
    pub(crate) fn hold(&self, batch: &mut dyn FnMut() -> Result<(), Error>) -> Result<(), Error> {
        // Before the host function is queued: its wait cannot end before `began` + the timeout.
        let began = Instant::now();
        let latch = Arc::new(Latch::default());
        let data = Arc::into_raw(Arc::clone(&latch))
            .cast_mut()
            .cast::<c_void>();
        self.gpu
            .context()
            .bind_to_thread()
            .cuda("binding the context")?;
        // SAFETY: the stream is the GPU's, in the context bound above; `wait_for_latch` takes
        // back the `Arc` behind `data` when the driver calls it.
        let held = unsafe {
            sys::cuLaunchHostFunc(self.gpu.stream().cu_stream(), Some(wait_for_latch), data)
        }
        .result();
        if let Err(e) = held {
            // SAFETY: the driver refused the call, so it never runs: the `Arc` is still ours.
            drop(unsafe { Arc::from_raw(data.cast_const().cast::<Latch>()) });
            return Err(e).cuda("holding the stream back");
        }
        let issued = batch();
        let late = began.elapsed() >= GATE_TIMEOUT;
        latch.open();
        issued?;
        if late {
            return Err(Error::Input(format!(
                "the host could not queue its work ahead of the GPU within {} s: a launch \
                 waited for the GPU while the stream was held (a profiler that serializes \
                 kernels, such as Nsight Compute, does so; what it profiled before this stands), \
                 or the host is too slow to queue one hold's calls (time fewer at once)",
                GATE_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    /// Mean GPU time of `round` over `rounds` of them, in microseconds: queued behind the gate
    /// in [`holds`], each hold's rounds timed between two events after one untimed round (so the
    /// first timed one follows another, as all do).
    pub(crate) fn mean_us(
        &self,
        rounds: usize,
        round: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<f64, Error> {
        let gpu = self.gpu.clone();
        let (start, stop) = (timing_event(&gpu)?, timing_event(&gpu)?);
        let mut total = 0.0;
        for hold in holds(rounds) {
            self.hold(&mut || {
                round()?;
                record(&gpu, &start)?;
                hold.clone().try_for_each(|_| round())?;
                record(&gpu, &stop)
            })?;
            total += elapsed_us(&start, &stop)?;
        }
        Ok(total / rounds.max(1) as f64)
    }
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
/// H100 faster for LL-sized copies, slower for HT-sized ones). `once` gets a running count of
/// its calls (see [`Ring`]).
fn best_batch_us(
    gpu: &Gpu,
    iters: usize,
    once: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<f64, Error> {
    let mut calls = 0..;
    let mut next = move || calls.next().unwrap_or_default();
    for _ in 0..3 {
        once(next())?;
    }
    let iters = iters.max(1);
    let mut best = f64::INFINITY;
    let mut time = |batch: &mut dyn FnMut() -> Result<(), Error>| -> Result<(), Error> {
        best = best.min(batch_us(gpu, batch)? / iters as f64);
        Ok(())
    };
    for _ in 0..YARDSTICK_BATCHES {
        time(&mut || (0..iters).try_for_each(|_| once(next())))?;
    }
    let graph = capture_graph(gpu.stream(), "yardstick copies", || {
        (0..iters).try_for_each(|_| once(next()))
    })?;
    graph.launch().cuda("replaying the yardstick copies")?;
    for _ in 0..YARDSTICK_BATCHES {
        time(&mut || graph.launch().cuda("replaying the yardstick copies"))?;
    }
    Ok(best)
}

/// Where the repetitions of a yardstick find their bytes: `sets` copies of each of its buffers,
/// laid end to end, repetition `i` using copy `i % sets`, so that repetitions cycle through
/// at least twice the L2 cache. A copy repeated on buffers that fit in L2 runs from L2 and
/// measures no HBM traffic at all (on the H100, with 50 MiB of L2, the same-traffic copy of
/// gpt-oss-120b's combine of 128 tokens on 8 ranks, 29.5 MB, ran at 5.4 TB/s, above HBM3's
/// 3.35), while the phase it stands for finds its rows in HBM. A repetition still finds bytes
/// in L2 where all the repetitions of a batch move less than the L2 holds: copies so small
/// that their time is latency, not bandwidth.
struct Ring {
    sets: usize,
}

impl Ring {
    /// Most copies of a buffer a ring makes (tiny yardsticks: at most 4 MiB per buffer).
    const MAX_SETS: usize = 1024;
    /// Every copy starts this aligned (the alignment a device allocation has).
    const ALIGN: usize = 4096;

    /// The ring for repetitions that each touch `footprint` bytes.
    fn new(gpu: &Gpu, footprint: usize) -> Ring {
        let sets = (2 * gpu.l2_bytes()).div_ceil(footprint.max(1));
        Ring {
            sets: sets.clamp(1, Self::MAX_SETS),
        }
    }

    /// The distance between two copies of a buffer of `bytes`.
    fn stride(bytes: usize) -> usize {
        bytes.max(1).next_multiple_of(Self::ALIGN)
    }

    /// Allocates the `sets` copies of a buffer of `bytes`, zeroed.
    fn alloc(&self, gpu: &Gpu, bytes: usize, what: &str) -> Result<CudaSlice<u8>, Error> {
        gpu.stream()
            .alloc_zeros::<u8>(Self::stride(bytes) * self.sets)
            .cuda(what)
    }

    /// The byte range of repetition `i`'s copy of a buffer of `bytes`.
    fn range(&self, bytes: usize, i: usize) -> Range<usize> {
        let start = Self::stride(bytes) * (i % self.sets);
        start..start + bytes
    }
}

/// Time of a device-to-device copy of `bytes` (`cuMemcpyDtoDAsync`), in microseconds: the best
/// mean of batches of `iters` copies, issued one by one and as a CUDA graph, from and to HBM
/// (the copies cycle through buffers spanning twice the L2).
pub fn copy_us(gpu: &Gpu, bytes: usize, iters: usize) -> Result<f64, Error> {
    // A balanced traffic is one copy.
    traffic_us(gpu, bytes.max(1), bytes.max(1), iters)
}

/// Time of the same-traffic copy of a phase that reads `read` and writes `written` HBM bytes, in
/// microseconds: the best mean of batches of `iters` repetitions, issued one by one and as a
/// CUDA graph, from and to HBM (the repetitions cycle through buffers spanning twice the L2).
/// One repetition is a device-to-device copy of
/// `min(read, written)` bytes (reads and writes in equal parts), then the rest of the traffic: a
/// fill of `written - read` bytes when the phase writes more than it reads (HBM writes alone
/// run slower than a copy, so a write-heavy phase is held to what the memory can do for its
/// mix), else a copy of half of `read - written` (the same bytes in a balanced mix).
pub fn traffic_us(gpu: &Gpu, read: usize, written: usize, iters: usize) -> Result<f64, Error> {
    let stream = gpu.stream();
    let balanced = read.min(written) + read.saturating_sub(written) / 2;
    let fill = written.saturating_sub(read);
    let ring = Ring::new(gpu, 2 * balanced + fill);
    let src = ring.alloc(gpu, balanced, "allocating the copy source")?;
    let mut dst = ring.alloc(gpu, balanced, "allocating the copy destination")?;
    let mut filled = ring.alloc(gpu, fill, "allocating the fill destination")?;
    let mut once = |i: usize| -> Result<(), Error> {
        if balanced > 0 {
            let r = ring.range(balanced, i);
            stream
                .memcpy_dtod(&src.slice(r.clone()), &mut dst.slice_mut(r))
                .cuda("copying")?;
        }
        if fill > 0 {
            stream
                .memset_zeros(&mut filled.slice_mut(ring.range(fill, i)))
                .cuda("filling")?;
        }
        Ok(())
    };
    best_batch_us(gpu, iters, &mut once)
}

#[cfg(test)]
mod tests {
    use super::{Issued, holds};

    #[test]
    fn holds_cover_every_round_once_in_order_and_at_least_one() {
        let ranges: Vec<_> = holds(70).collect();
        assert_eq!(ranges, vec![0..32, 32..64, 64..70]);
        assert_eq!(holds(32).collect::<Vec<_>>(), vec![0..32]);
        assert_eq!(holds(0).collect::<Vec<_>>(), vec![0..1]);
    }

    #[test]
    fn issued_work_splits_both_clocks_into_equal_parts_and_never_by_zero() {
        let batch = Issued {
            gpu_us: 900.0,
            host_us: 450.0,
        };
        assert_eq!(
            batch.per(100),
            Issued {
                gpu_us: 9.0,
                host_us: 4.5
            }
        );
        assert_eq!(batch.per(0), batch);
    }
}
