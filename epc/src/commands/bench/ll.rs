//! Timing low-latency dispatch and combine.

use anyhow::Result;
use ep_codegen::{Mode, Spec};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, generate};

use super::bytes::{Counts, ll_combine, ll_dispatch, returned_row_bytes, sent_row_bytes};
use super::{Bench, Measured};

/// Every rank's inputs at `tokens` tokens: NCCL EP's LL routing (top-k of random scores, a few
/// slots dropped), seeded by the rank, so every process makes the same.
pub fn inputs(spec: &Spec, tokens: usize) -> Vec<RankInput> {
    let d = spec.dims();
    (0..d.ranks)
        .map(|rank| RankInput {
            routing: generate(
                Pattern::Uniform,
                tokens,
                d.top_k,
                d.experts,
                d.ranks,
                rank as u64,
            ),
            x: random_activations(spec, tokens, rank as u64),
        })
        .collect()
}

/// Dispatch and combine of `spec` at each of `tokens` tokens per rank.
pub fn measure(ctx: &Bench<'_>, spec: &Spec, tokens: &[usize]) -> Result<Vec<Measured>> {
    let mut ll = ctx.ranks.ll_group(ctx.gpu, ctx.jit, ctx.renderer, spec)?;
    let mut call = ll.new_call()?;
    let mut out = Vec::with_capacity(2 * tokens.len());
    for &t in tokens {
        let all = inputs(spec, t);
        ctx.dump_routings(spec, t, &all)?;
        let mine: Vec<RankInput> = ll
            .group()
            .ranks()
            .iter()
            .map(|&rank| all[rank].clone())
            .collect();
        call.set_inputs(ctx.gpu, &mine)?;
        let times = ll.time_phases(&mut call, ctx.args.warmup, ctx.args.iters)?;
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
        for (phase, time_us, parts, counts, row_bytes) in [
            (
                "dispatch",
                times.dispatch(),
                (times.dispatch_send, times.dispatch_recv),
                dispatch,
                sent_row_bytes(spec),
            ),
            (
                "combine",
                times.combine(),
                (times.combine_send, times.combine_recv),
                combine,
                returned_row_bytes(spec),
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
            });
        }
    }
    Ok(out)
}
