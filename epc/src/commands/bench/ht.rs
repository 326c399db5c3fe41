//! Timing high-throughput notify, dispatch and combine.

use anyhow::Result;
use ep_codegen::kernels::ht::fanout_plan;
use ep_codegen::{Mode, Spec};
use ep_runtime::reference::ll::RankInput;

use super::bytes::{Counts, ht_combine, ht_dispatch, returned_row_bytes, sent_row_bytes};
use super::{Bench, Measured, ll};
use crate::transport::Knobs;

/// Dispatch (notify and the data kernels) and combine of `spec` at each of `tokens` tokens per
/// rank, on the same routing as LL's bench, and the dispatch's row copies alone (its floor).
pub fn measure(ctx: &Bench<'_>, spec: &Spec, tokens: &[usize]) -> Result<Vec<Measured>> {
    let mut group = ctx
        .ranks
        .ht_group(ctx.gpu, ctx.jit, ctx.renderer, spec, Knobs::Tuned)?;
    let fanout = ctx.renderer.render_plan(spec, fanout_plan(spec))?;
    let h = spec.hidden() as usize;
    let mut out = Vec::with_capacity(2 * tokens.len());
    for &t in tokens {
        let all = ll::inputs(spec, t, ctx.args.pattern.into());
        ctx.dump_routings(spec, t, &all)?;
        let mine: Vec<RankInput> = group.ranks().iter().map(|&r| all[r].clone()).collect();
        let got = group.dispatch(&mine)?;
        // The rows' values do not change the time; each rank returns zeros.
        let y: Vec<Vec<u16>> = got.iter().map(|g| vec![0; g.recv_src.len() * h]).collect();
        group.combine(&y)?;
        let times = group.time_phases(ctx.args.warmup, ctx.args.iters)?;
        let fanout_us = group.time_fanout(ctx.jit, &fanout, ctx.args.warmup, ctx.args.iters)?;
        let (mut dispatch, mut combine) = (Counts::default(), Counts::default());
        for (input, g) in mine.iter().zip(&got) {
            // Rows in use (expert-major: padding included), and rows holding a token.
            let rows = g.recv_src.len() as u64;
            let filled = g.recv_src.iter().filter(|&&s| s >= 0).count() as u64;
            dispatch = dispatch.add(ht_dispatch(spec, &input.routing, rows));
            combine = combine.add(ht_combine(spec, &input.routing, filled));
        }
        for (phase, time_us, parts, counts, row_bytes, fanout_us) in [
            (
                "dispatch",
                times.notify + times.dispatch,
                (times.notify, times.dispatch),
                dispatch,
                sent_row_bytes(spec),
                Some(fanout_us),
            ),
            (
                "combine",
                times.combine,
                (times.combine, 0.0),
                combine,
                returned_row_bytes(spec),
                None,
            ),
        ] {
            out.push(Measured {
                workload: spec.name().to_owned(),
                mode: Mode::HighThroughput,
                tokens: t,
                phase,
                time_us,
                parts,
                counts,
                row_bytes,
                fanout_us,
                floor: None,
            });
        }
    }
    Ok(out)
}
