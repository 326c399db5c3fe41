//! Timing low-latency dispatch and combine.

use anyhow::Result;
use ep_codegen::kernels::ll::empty_plan;
use ep_codegen::{Mode, Spec};
use ep_runtime::ll::GraphTimes;
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, generate};

use super::bytes::{Counts, ll_combine, ll_dispatch, returned_row_bytes, sent_row_bytes};
use super::{Bench, Floor, Measured};
use crate::transport::Knobs;

/// Every rank's inputs at `tokens` tokens, seeded by the rank, so every process makes the same:
/// with `Pattern::Uniform`, NCCL EP's LL routing (top-k of random scores, a few slots dropped).
pub fn inputs(spec: &Spec, tokens: usize, pattern: Pattern) -> Vec<RankInput> {
    let d = spec.dims();
    (0..d.ranks)
        .map(|rank| RankInput {
            routing: generate(pattern, tokens, d.top_k, d.experts, d.ranks, rank as u64),
            x: random_activations(spec, tokens, rank as u64),
        })
        .collect()
}

/// Dispatch and combine of `spec` at each of `tokens` tokens per rank; each phase also replayed
/// as a CUDA graph (a call of its own) and as it costs inside one graph of many calls, and the
/// launch floor under both (empty kernels on the same grids).
pub fn measure(ctx: &Bench<'_>, spec: &Spec, tokens: &[usize]) -> Result<Vec<Measured>> {
    let mut ll = ctx
        .ranks
        .ll_group(ctx.gpu, ctx.jit, ctx.renderer, spec, Knobs::Tuned)?;
    let empty = ctx.renderer.render_plan(spec, empty_plan(spec))?;
    let mut call = ll.new_call()?;
    let mut graphed = ll.new_call()?;
    let (warmup, iters) = (ctx.args.warmup, ctx.args.iters);
    let mut out = Vec::with_capacity(2 * tokens.len());
    for &t in tokens {
        let all = inputs(spec, t, ctx.args.pattern.into());
        ctx.dump_routings(spec, t, &all)?;
        let mine: Vec<RankInput> = ll
            .group()
            .ranks()
            .iter()
            .map(|&rank| all[rank].clone())
            .collect();
        call.set_inputs(ctx.gpu, &mine)?;
        let times = ll.time_phases(&mut call, warmup, iters)?;
        let alone = GraphTimes {
            dispatch: times.dispatch,
            combine: times.combine,
        };
        let stream_call = ll.time_calls(&mut call, warmup, iters)?;
        let stream = GraphTimes::split(&alone, stream_call.gpu_us);
        let floor = ll.time_launch_floor(ctx.jit, &empty, &call, warmup, iters)?;
        graphed.set_inputs(ctx.gpu, &mine)?;
        let replayed = ll.time_graphs(&mut graphed, warmup, iters)?;
        let call_us = ll.time_calls_in_graph(&mut graphed, warmup, iters)?;
        let graphs = GraphTimes::split(&replayed, call_us);
        // Every LL count has NCCL EP's figure, so the sum starts from Some(0).
        let zero = Counts {
            nccl_ep: Some(0),
            ..Counts::default()
        };
        let sum = |f: fn(&Spec, &ep_runtime::routing::Routing) -> Counts| {
            mine.iter()
                .map(|i| f(spec, &i.routing))
                .fold(zero, Counts::add)
        };
        let (dispatch, combine) = (sum(ll_dispatch), sum(ll_combine));
        let dispatch_floor = Floor {
            launches_us: floor.back_to_back.dispatch,
            graph_us: graphs.dispatch,
            graph_launches_us: floor.in_graph.dispatch,
            graph_replay_us: replayed.dispatch,
            graph_call_us: call_us,
            events_us: alone.dispatch,
            stream_call_us: stream_call.gpu_us,
            stream_call_paced_us: stream_call.paced.gpu_us,
            stream_call_host_us: stream_call.paced.host_us,
        };
        let combine_floor = Floor {
            launches_us: floor.back_to_back.combine,
            graph_us: graphs.combine,
            graph_launches_us: floor.in_graph.combine,
            graph_replay_us: replayed.combine,
            graph_call_us: call_us,
            events_us: alone.combine,
            stream_call_us: stream_call.gpu_us,
            stream_call_paced_us: stream_call.paced.gpu_us,
            stream_call_host_us: stream_call.paced.host_us,
        };
        for (phase, time_us, parts, counts, row_bytes, floor) in [
            (
                "dispatch",
                stream.dispatch,
                (times.dispatch_send, times.dispatch_recv),
                dispatch,
                sent_row_bytes(spec),
                dispatch_floor,
            ),
            (
                "combine",
                stream.combine,
                (times.combine_send, times.combine_recv),
                combine,
                returned_row_bytes(spec),
                combine_floor,
            ),
        ] {
            out.push(Measured {
                workload: spec.name().to_owned(),
                mode: Mode::LowLatency,
                tokens: t,
                phase,
                time_us,
                parts,
                counts,
                row_bytes,
                fanout_us: None,
                floor: Some(floor),
            });
        }
    }
    Ok(out)
}
