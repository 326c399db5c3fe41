//! CUDA-graph capture and timing of whole calls of a [`LowLatency`] group.

use super::harness::{HostCall, LowLatency};
use crate::error::CudaContextExt;
use crate::{Error, timing};

/// A call captured as CUDA graphs (see [`LowLatency::capture`]).
pub struct LlGraphs {
    /// Dispatch send and receive.
    pub dispatch: cudarc::driver::CudaGraph,
    /// Combine send and receive.
    pub combine: cudarc::driver::CudaGraph,
}

impl LlGraphs {
    /// Replays the dispatch of a new call.
    pub fn dispatch(&self) -> Result<(), Error> {
        self.dispatch.launch().cuda("replaying the dispatch graph")
    }

    /// Replays the combine of the current call.
    pub fn combine(&self) -> Result<(), Error> {
        self.combine.launch().cuda("replaying the combine graph")
    }
}

/// Mean time of each launch of a call, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    /// Dispatch send.
    pub dispatch_send: f64,
    /// Dispatch receive.
    pub dispatch_recv: f64,
    /// Combine send.
    pub combine_send: f64,
    /// Combine receive.
    pub combine_recv: f64,
}

impl PhaseTimes {
    /// Dispatch, send and receive.
    pub fn dispatch(&self) -> f64 {
        self.dispatch_send + self.dispatch_recv
    }

    /// Combine, send and receive.
    pub fn combine(&self) -> f64 {
        self.combine_send + self.combine_recv
    }
}

type Step = dyn Fn(&mut LowLatency, &mut HostCall) -> Result<(), Error>;

impl LowLatency {
    /// Captures a call's launches into two CUDA graphs on the GPU's stream: dispatch (send and
    /// receive) and combine (send and receive). Replays need no host work: new inputs written
    /// with [`HostCall::set_inputs`] (the same token counts) are picked up, and each dispatch
    /// replay starts a new call on the same window half.
    pub fn capture(&mut self, call: &mut HostCall) -> Result<LlGraphs, Error> {
        let stream = self.gpu().stream().clone();
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
        let mut graph = |what: &str, f: &Step| {
            stream
                .begin_capture(mode)
                .cuda("beginning a graph capture")?;
            let captured = f(self, call);
            let graph = stream.end_capture(flags).cuda("ending a graph capture")?;
            captured?;
            graph.ok_or_else(|| {
                Error::Input(format!("capturing the {what} produced an empty graph"))
            })
        };
        let dispatch = graph("dispatch", &|ll, call| {
            ll.dispatch_send(call)?;
            ll.dispatch_recv(call)
        })?;
        let combine = graph("combine", &|ll, call| {
            ll.combine_send(call)?;
            ll.combine_recv(call)
        })?;
        Ok(LlGraphs { dispatch, combine })
    }

    /// Times whole calls on the current inputs of `call`: `warmup` calls, then `iters` calls
    /// with an event between each of the four launches. Returns the mean of each launch in
    /// microseconds; checks for errors.
    pub fn time_phases(
        &mut self,
        call: &mut HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<PhaseTimes, Error> {
        for _ in 0..warmup {
            self.dispatch_send(call)?;
            self.dispatch_recv(call)?;
            self.combine_send(call)?;
            self.combine_recv(call)?;
        }
        let iters = iters.max(1);
        let gpu = self.gpu().clone();
        let mut events = Vec::with_capacity(5 * iters);
        for _ in 0..5 * iters {
            events.push(timing::timing_event(&gpu)?);
        }
        for i in 0..iters {
            let ev = &events[5 * i..5 * i + 5];
            timing::record(&gpu, &ev[0])?;
            self.dispatch_send(call)?;
            timing::record(&gpu, &ev[1])?;
            self.dispatch_recv(call)?;
            timing::record(&gpu, &ev[2])?;
            self.combine_send(call)?;
            timing::record(&gpu, &ev[3])?;
            self.combine_recv(call)?;
            timing::record(&gpu, &ev[4])?;
        }
        let mut sums = [0f64; 4];
        for i in 0..iters {
            let ev = &events[5 * i..5 * i + 5];
            for (j, sum) in sums.iter_mut().enumerate() {
                *sum += timing::elapsed_us(&ev[j], &ev[j + 1])?;
            }
        }
        self.check()?;
        let n = iters as f64;
        Ok(PhaseTimes {
            dispatch_send: sums[0] / n,
            dispatch_recv: sums[1] / n,
            combine_send: sums[2] / n,
            combine_recv: sums[3] / n,
        })
    }
}
