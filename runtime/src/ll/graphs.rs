//! CUDA-graph capture and timing of whole calls of a [`LowLatency`] group, and of the launch
//! floor under them.

use cudarc::driver::CudaFunction;
use ep_codegen::KernelSource;

use super::group::LlLaunch;
use super::harness::{HostCall, LowLatency};
use super::tensor::Stream;
use crate::error::CudaContextExt;
use crate::timing::{self, Gate, Issued, capture_graph, holds};
use crate::{Error, Gpu, Jit};

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

/// Mean time of each phase of a call, in microseconds: in one launch each, and as the hook's
/// four launches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    /// Dispatch in one launch ([`LlGroup::dispatch`](super::LlGroup::dispatch)).
    pub dispatch: f64,
    /// Combine in one launch.
    pub combine: f64,
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
    /// From the times of the one-launch phases (dispatch, combine) and of the hook's four
    /// launches, as [`time_steps`] returns them.
    fn of(one: &[f64], hook: &[f64]) -> PhaseTimes {
        PhaseTimes {
            dispatch: one[0],
            combine: one[1],
            dispatch_send: hook[0],
            dispatch_recv: hook[1],
            combine_send: hook[2],
            combine_recv: hook[3],
        }
    }

    /// Dispatch with the hook: send and receive.
    pub fn hook_dispatch(&self) -> f64 {
        self.dispatch_send + self.dispatch_recv
    }

    /// Combine with the hook: send and receive.
    pub fn hook_combine(&self) -> f64 {
        self.combine_send + self.combine_recv
    }
}

/// Mean time of each phase of a call, in microseconds (replayed as CUDA graphs, or as one of
/// the splits of [`GraphTimes::split`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphTimes {
    /// Dispatch (send and receive).
    pub dispatch: f64,
    /// Combine (send and receive).
    pub combine: f64,
}

impl GraphTimes {
    /// A call's phases as they cost among many calls issued back to back: `call_us` (a call
    /// measured so: [`LowLatency::time_calls_in_graph`], [`LowLatency::time_calls`]) split as
    /// the phases timed alone (`alone`: each between two events, [`LowLatency::time_graphs`],
    /// [`LowLatency::time_phases`]) split it. Each phase alone is taken less half of what the
    /// two exceed the call by: what timing a phase alone adds (events, a graph launch of its
    /// own), the same for both phases (on the H100 about 2.5 us in a graph, 2 on the stream).
    pub fn split(alone: &GraphTimes, call_us: f64) -> GraphTimes {
        let extra = (alone.dispatch + alone.combine - call_us) / 2.0;
        GraphTimes {
            dispatch: alone.dispatch - extra,
            combine: alone.combine - extra,
        }
    }
}

/// The launch floor under a call ([`LowLatency::time_launch_floor`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaunchFloor {
    /// The empty launches of each phase inside one graph of many, back to back: what they cost
    /// in a serving step replayed as one graph.
    pub in_graph: GraphTimes,
    /// The empty launches of each phase issued back to back on the stream, timed as a batch.
    pub back_to_back: GraphTimes,
}

/// How timed rounds are issued.
#[derive(Debug, Clone, Copy)]
enum Issue {
    /// Captured as one CUDA graph of all the rounds, back to back, and replayed.
    InGraph,
    /// Back to back on the GPU's stream with the host ahead (queued behind a [`Gate`]), timed
    /// in batches (an event before and after each).
    BackToBack,
}

/// A call's time on the stream ([`LowLatency::time_calls`]), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamCall {
    /// On the GPU, the calls queued with the host ahead (behind a host function that returns
    /// once they are queued): what a call costs the GPU on a stream, whatever the host's speed.
    pub gpu_us: f64,
    /// Issued as the host goes: on the GPU and on the host's clock (where the two match, the
    /// host set the pace).
    pub paced: Issued,
}

/// Mean time of one round of `steps(0..n)` over `iters` rounds issued as `issue` says, in
/// microseconds.
fn time_rounds(
    gpu: &Gpu,
    issue: Issue,
    iters: usize,
    n: usize,
    step: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<f64, Error> {
    let iters = iters.max(1);
    match issue {
        Issue::InGraph => {
            let rounds = || (0..iters).try_for_each(|_| (0..n).try_for_each(&mut *step));
            let graph = capture_graph(gpu.stream(), "rounds", rounds)?;
            Ok(timing::replay_us(gpu, &graph, "replaying a graph of rounds")? / iters as f64)
        }
        Issue::BackToBack => Gate::new(gpu).mean_us(iters, &mut || (0..n).try_for_each(&mut *step)),
    }
}

/// Mean time of each of `n` steps over `iters` rounds (after `warmup` untimed rounds), with an
/// event recorded on the GPU's stream between steps, in microseconds. The rounds are queued
/// with the host ahead (behind a [`Gate`] in [`holds`], after one untimed round each time), so
/// the events time the GPU, not the host's pace.
fn time_steps(
    gpu: &Gpu,
    warmup: usize,
    iters: usize,
    n: usize,
    step: &mut dyn FnMut(usize) -> Result<(), Error>,
) -> Result<Vec<f64>, Error> {
    for _ in 0..warmup {
        for j in 0..n {
            step(j)?;
        }
    }
    let iters = iters.max(1);
    let events = (0..(n + 1) * iters)
        .map(|_| timing::timing_event(gpu))
        .collect::<Result<Vec<_>, _>>()?;
    let gate = Gate::new(gpu);
    for hold in holds(iters) {
        gate.hold(&mut || {
            (0..n).try_for_each(&mut *step)?;
            for i in hold.clone() {
                let ev = &events[(n + 1) * i..][..n + 1];
                timing::record(gpu, &ev[0])?;
                for j in 0..n {
                    step(j)?;
                    timing::record(gpu, &ev[j + 1])?;
                }
            }
            Ok(())
        })?;
    }
    let mut sums = vec![0f64; n];
    for i in 0..iters {
        let ev = &events[(n + 1) * i..][..n + 1];
        for (j, sum) in sums.iter_mut().enumerate() {
            *sum += timing::elapsed_us(&ev[j], &ev[j + 1])?;
        }
    }
    Ok(sums.into_iter().map(|s| s / iters as f64).collect())
}

impl LowLatency {
    /// Captures a call's launches into two CUDA graphs on the GPU's stream: dispatch and
    /// combine, each as [`LowLatency::dispatch`] and [`LowLatency::combine`] launch it. Replays
    /// need no host work: new inputs written with [`HostCall::set_inputs`] (the same token
    /// counts) are picked up, and each dispatch replay starts a new call on the same window half.
    pub fn capture(&mut self, call: &mut HostCall) -> Result<LlGraphs, Error> {
        let stream = self.gpu().stream().clone();
        let dispatch = capture_graph(&stream, "dispatch", || self.dispatch(call))?;
        let combine = capture_graph(&stream, "combine", || self.combine(call))?;
        Ok(LlGraphs { dispatch, combine })
    }

    /// Times whole calls on the current inputs of `call`: `warmup` calls, then `iters` calls
    /// with an event between phases; then the same with the hook's four launches, an event
    /// between each (all queued with the host ahead, see `time_steps`). Returns the means in
    /// microseconds; checks for errors.
    pub fn time_phases(
        &mut self,
        call: &mut HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<PhaseTimes, Error> {
        let gpu = self.gpu().clone();
        let one = time_steps(&gpu, warmup, iters, 2, &mut |step| match step {
            0 => self.dispatch(call),
            _ => self.combine(call),
        })?;
        let t = time_steps(&gpu, warmup, iters, 4, &mut |step| match step {
            0 => self.dispatch_send(call),
            1 => self.dispatch_recv(call),
            2 => self.combine_send(call),
            _ => self.combine_recv(call),
        })?;
        self.check()?;
        Ok(PhaseTimes::of(&one, &t))
    }

    /// Captures `call` ([`LowLatency::capture`]) and times replays of its two graphs: `warmup`
    /// replays, then `iters` with an event between dispatch and combine. Means in microseconds;
    /// checks for errors. Use a call of its own: its replays reuse one window half.
    pub fn time_graphs(
        &mut self,
        call: &mut HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<GraphTimes, Error> {
        let graphs = self.capture(call)?;
        let gpu = self.gpu().clone();
        let t = time_steps(&gpu, warmup, iters, 2, &mut |step| match step {
            0 => graphs.dispatch(),
            _ => graphs.combine(),
        })?;
        self.check()?;
        Ok(GraphTimes {
            dispatch: t[0],
            combine: t[1],
        })
    }

    /// Mean time of a whole call (dispatch, then combine) among `iters` calls issued back to
    /// back on the stream, after `warmup` calls, in microseconds: what a call costs the GPU with
    /// the host ahead (the calls queued before the GPU starts them), and, issued as the host
    /// goes, on the GPU and on the host's clock. Checks for errors.
    pub fn time_calls(
        &mut self,
        call: &mut HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<StreamCall, Error> {
        self.warm_up(call, warmup)?;
        let gpu = self.gpu().clone();
        let iters = iters.max(1);
        let mut one = || {
            self.dispatch(call)?;
            self.combine(call)
        };
        let gpu_us = Gate::new(&gpu).mean_us(iters, &mut one)?;
        let paced = timing::issued_batch(&gpu, &mut || (0..iters).try_for_each(|_| one()))?;
        self.check()?;
        Ok(StreamCall {
            gpu_us,
            paced: paced.per(iters),
        })
    }

    /// Mean time of a whole call (dispatch, then combine) inside one CUDA graph of `iters`
    /// calls, back to back, after `warmup` calls on the stream, in microseconds: what a call
    /// costs in a serving step replayed as one graph. Checks for errors. Use a call of its own:
    /// the graph's calls reuse one window half.
    pub fn time_calls_in_graph(
        &mut self,
        call: &mut HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<f64, Error> {
        self.warm_up(call, warmup)?;
        let gpu = self.gpu().clone();
        let t = time_rounds(&gpu, Issue::InGraph, iters, 2, &mut |phase| match phase {
            0 => self.dispatch(call),
            _ => self.combine(call),
        })?;
        self.check()?;
        Ok(t)
    }

    /// `warmup` calls (dispatch, then combine), untimed.
    fn warm_up(&mut self, call: &mut HostCall, warmup: usize) -> Result<(), Error> {
        for _ in 0..warmup {
            self.dispatch(call)?;
            self.combine(call)?;
        }
        Ok(())
    }

    /// The launch floor under `call`'s phases: each phase's launches (one, or the hook's two
    /// where the group's ranks do not fit one) made with empty kernels of the same parameter on
    /// the same grids (`empty`: the spec's rendered [`ep_codegen::kernels::ll::empty_plan`]),
    /// after `warmup` untimed rounds, timed back to back inside one CUDA graph of `iters` and on
    /// the stream, as [`LowLatency::time_calls_in_graph`] and [`LowLatency::time_calls`] time
    /// the real ones. Needs a dispatch of `call` first (its tokens pick the grids).
    pub fn time_launch_floor(
        &mut self,
        jit: &Jit,
        empty: &KernelSource,
        call: &HostCall,
        warmup: usize,
        iters: usize,
    ) -> Result<LaunchFloor, Error> {
        if empty.name != "ll_empty" {
            return Err(Error::Input(format!(
                "{} is not the empty kernels of `empty_plan`",
                empty.name
            )));
        }
        let gpu = self.gpu().clone();
        let [send, recv, fused] = <[CudaFunction; 3]>::try_from(jit.load(&gpu, empty)?.functions)
            .map_err(|_| {
            Error::Input("the empty kernels need a send, a receive and a one-launch entry".into())
        })?;
        let cuda = gpu.stream().clone();
        let stream = Stream::from(&*cuda);
        let group = &*self.group();
        let llcall = call.call();
        let launch = |step: usize| -> Result<(), Error> {
            let (f, which) = match step {
                0 => (&fused, LlLaunch::Dispatch),
                1 => (&fused, LlLaunch::Combine),
                2 => (&send, LlLaunch::DispatchSend),
                3 => (&recv, LlLaunch::DispatchRecv),
                4 => (&recv, LlLaunch::CombineSend),
                _ => (&send, LlLaunch::CombineRecv),
            };
            group.launch_like(f, llcall, which, stream)
        };
        // A phase is one launch where the group's ranks fit one, else the hook's two.
        let phase: [&[usize]; 2] = if group.one_launch() {
            [&[0], &[1]]
        } else {
            [&[2, 3], &[4, 5]]
        };
        let run = |steps: &[usize]| steps.iter().try_for_each(|&step| launch(step));
        let run_phase = |step: usize| run(phase[step]);
        for _ in 0..warmup {
            run_phase(0)?;
            run_phase(1)?;
        }
        let floor = |issue| -> Result<GraphTimes, Error> {
            Ok(GraphTimes {
                dispatch: time_rounds(&gpu, issue, iters, 1, &mut |_| run_phase(0))?,
                combine: time_rounds(&gpu, issue, iters, 1, &mut |_| run_phase(1))?,
            })
        };
        Ok(LaunchFloor {
            in_graph: floor(Issue::InGraph)?,
            back_to_back: floor(Issue::BackToBack)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::GraphTimes;

    #[test]
    fn split_divides_the_call_and_takes_the_same_from_both_phases() {
        let replayed = GraphTimes {
            dispatch: 9.0,
            combine: 6.5,
        };
        let t = GraphTimes::split(&replayed, 10.5);
        assert!((t.dispatch + t.combine - 10.5).abs() < 1e-12);
        assert!((replayed.dispatch - t.dispatch - 2.5).abs() < 1e-12);
        assert!((replayed.combine - t.combine - 2.5).abs() < 1e-12);
    }
}
