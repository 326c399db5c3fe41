//! Running a spec's kernels on the GPU against the CPU reference, and timing them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ep_codegen::{KernelSource, Renderer, Spec};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::reference::{self, Layout};
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{
    Gpu, HtGroup, HtNotify, HtTimes, Jit, LayoutKernel, LowLatency, NotifyResult, PhaseTimes,
    check, expected_notify,
};

use crate::npy;

/// What to run.
pub struct Plan {
    /// Seed of the first routing (later ones use seed + i).
    pub seed: u64,
    /// Tokens of the first (and timed) routing.
    pub tokens: usize,
    /// Pattern of the first routing; later ones rotate through every pattern.
    pub pattern: Pattern,
    /// Routings compared with the reference.
    pub routings: usize,
    /// Timed launches after 10 warm-ups.
    pub iters: usize,
}

/// What one spec's GPU check found.
pub struct Verified {
    /// Routings compared with the reference, all equal.
    pub routings: usize,
    /// The layout of the first routing.
    pub layout: Layout,
    /// Mean time of the layout kernel on the first routing, microseconds.
    pub layout_us: f64,
}

/// Runs the layout kernel on the plan's routings (the first at T = tokens, the rest of random
/// sizes up to M), compares each with the reference, then times the first.
pub fn verify_layout(
    gpu: &Gpu,
    jit: &Jit,
    spec: &Spec,
    kernel: &KernelSource,
    plan: &Plan,
) -> Result<Verified> {
    let (kernel, _) = LayoutKernel::load(gpu, jit, spec, kernel)?;
    let ep_codegen::Dims {
        experts: e,
        ranks: r,
        top_k: k,
        tokens: m,
        ..
    } = spec.dims();
    let routing_of = |i: usize| {
        let (p, t) = if i == 0 {
            (plan.pattern, plan.tokens)
        } else {
            let size = (plan.seed as usize).wrapping_add(i * 7919) % (m + 1);
            (Pattern::ALL[i % Pattern::ALL.len()], size)
        };
        (p, generate(p, t, k, e, r, plan.seed.wrapping_add(i as u64)))
    };
    let mut first = None;
    for i in 0..plan.routings.max(1) {
        let (p, routing) = routing_of(i);
        let got = kernel
            .run(gpu, &routing)
            .with_context(|| format!("{}: layout kernel on routing {i}", spec.name()))?;
        let (want, _) = reference::layout(&routing, e, r);
        if got != want {
            bail!(
                "{}: the layout kernel differs from the reference (T={}, pattern {p:?}, seed {})",
                spec.name(),
                routing.num_tokens,
                plan.seed.wrapping_add(i as u64)
            );
        }
        first.get_or_insert(got);
    }
    let (_, timed) = routing_of(0);
    let layout_us = kernel.time_us(gpu, &timed, 10, plan.iters)?;
    Ok(Verified {
        routings: plan.routings.max(1),
        layout: first.unwrap_or_else(|| unreachable!("at least one routing runs")),
        layout_us,
    })
}

/// Runs high-throughput notify on the spec's R virtual ranks for `routings` calls (each rank's
/// routing of `tokens` tokens, its layout from the GPU's layout kernel) and compares every
/// rank's offsets and counts with their definition. A call whose routing sends some rank more
/// rows than `max_recv_tokens_per_rank` holds must be refused with that rank and row count.
/// Returns the calls checked and how many of them were (rightly) refused.
pub fn verify_notify(
    gpu: &Gpu,
    jit: &Jit,
    spec: &Spec,
    kernels: &[KernelSource],
    plan: &Plan,
) -> Result<(usize, usize)> {
    let layout_source = kernels
        .iter()
        .find(|k| k.name == "layout")
        .ok_or_else(|| anyhow!("{}: no layout kernel rendered", spec.name()))?;
    let (layout, _) = LayoutKernel::load(gpu, jit, spec, layout_source)?;
    let mut notify = HtNotify::virtual_ranks(gpu, jit, spec, kernels)?;
    let ep_codegen::Dims {
        experts: e,
        ranks: r,
        top_k: k,
        ..
    } = spec.dims();
    let ht = spec
        .high_throughput()
        .ok_or_else(|| anyhow!("{}: not a high_throughput spec", spec.name()))?;
    // The rows a rank needs: flat, its rows; expert-major, its padded groups.
    let needed = |w: &NotifyResult| match ht.layout {
        ep_codegen::Layout::Flat => w.recv_rows,
        ep_codegen::Layout::ExpertMajor => w.group_offset.last().copied().unwrap_or(0),
    };
    let capacity = i64::from(ht.max_recv_tokens_per_rank);
    let calls = plan.routings.max(1);
    let mut refused = 0;
    for call in 0..calls {
        let pattern = Pattern::ALL[(plan.pattern as usize + call) % Pattern::ALL.len()];
        let layouts = (0..r)
            .map(|rank| {
                let seed = plan.seed.wrapping_add((call * r + rank) as u64);
                layout.run(gpu, &generate(pattern, plan.tokens, k, e, r, seed))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let want = expected_notify(spec, &layouts);
        let overflow = want
            .iter()
            .enumerate()
            .find(|(_, w)| i64::from(needed(w)) > capacity);
        let what = || {
            format!(
                "{}: notify, call {call} (T={}, pattern {pattern:?})",
                spec.name(),
                plan.tokens
            )
        };
        match (notify.run(&layouts), overflow) {
            (Ok(got), None) if got == want => {}
            (Ok(_), None) => bail!("{} differs from its definition", what()),
            (Ok(_), Some((rank, _))) => bail!("{} missed the overflow of rank {rank}", what()),
            (Err(ep_runtime::Error::Capacity { rank, rows, .. }), Some((want_rank, w)))
                if rank == want_rank && i64::try_from(rows).ok() == Some(i64::from(needed(w))) =>
            {
                refused += 1;
            }
            (Err(err), _) => return Err(err).with_context(what),
        }
    }
    Ok((calls, refused))
}

/// Runs high-throughput dispatch and combine (either layout) on the spec's R virtual ranks for
/// `routings` calls of `tokens` tokens per rank and compares every received row, slot, weight
/// and source, and every combined output, with the reference bit for bit; then times the last
/// call's phases (`plan.iters` replays).
pub fn verify_ht(
    gpu: &Gpu,
    jit: &Jit,
    spec: &Spec,
    kernels: &[KernelSource],
    plan: &Plan,
    dump: Option<&Path>,
) -> Result<HtVerified> {
    let mut group = HtGroup::virtual_ranks(gpu, jit, spec, kernels)?;
    let d = spec.dims();
    let calls = plan.routings.max(1);
    let mut received_rows = 0;
    let mut dispatched = false;
    let mut dumped = false;
    for call in 0..calls {
        let (inputs, seed) = ht_call_inputs(spec, plan, call);
        let what = || ht_call_name(spec, plan, call);
        let want = match check::ht::Expected::of(spec, &inputs) {
            Ok(want) => want,
            // A routing this spec's buffer cannot hold: notify must refuse it (checked above).
            Err(_) => continue,
        };
        let got = group.dispatch(&inputs).with_context(what)?;
        received_rows = got.iter().map(|g| g.recv_src.len()).sum();
        dispatched = true;
        check::ht::check_dispatch(spec, &inputs, &want, &got)
            .map_err(|e| anyhow!("{}: dispatch: {e}", what()))?;
        // Each rank returns a pseudo-random row for each row it received.
        let y: Vec<Vec<u16>> = got
            .iter()
            .enumerate()
            .map(|(rank, g)| random_activations(spec, g.recv_src.len(), seed ^ 0xc0 ^ rank as u64))
            .collect();
        let out = group.combine(&y).with_context(what)?;
        check::ht::check_combine(spec, &inputs, &want, &y, &out)
            .map_err(|e| anyhow!("{}: {e}", what()))?;
        if let (Some(dir), false) = (dump, dumped) {
            dump_ht_call(dir, spec, &inputs, &got, &y, &out)?;
            dumped = true;
        }
    }
    // Every routing may have overflowed the buffer (nothing dispatched, nothing to time).
    let times = if dispatched {
        Some(group.time_phases(3, plan.iters)?)
    } else {
        None
    };
    Ok(HtVerified {
        calls,
        times,
        received_bytes: received_rows * d.hidden * spec.dispatch_dtype().size() as usize,
    })
}

/// Every rank's inputs of high-throughput check call `call` of `plan` (the patterns in turn from
/// the plan's), and the call's seed.
fn ht_call_inputs(spec: &Spec, plan: &Plan, call: usize) -> (Vec<RankInput>, u64) {
    let d = spec.dims();
    let pattern = Pattern::ALL[(plan.pattern as usize + call) % Pattern::ALL.len()];
    let seed = plan.seed.wrapping_add((call * d.ranks) as u64);
    let inputs = (0..d.ranks)
        .map(|r| RankInput {
            routing: generate(
                pattern,
                plan.tokens,
                d.top_k,
                d.experts,
                d.ranks,
                seed + r as u64,
            ),
            x: random_activations(spec, plan.tokens, seed ^ ((r as u64) << 20)),
        })
        .collect();
    (inputs, seed)
}

/// How a high-throughput check call is named in errors.
fn ht_call_name(spec: &Spec, plan: &Plan, call: usize) -> String {
    let pattern = Pattern::ALL[(plan.pattern as usize + call) % Pattern::ALL.len()];
    format!(
        "{}: HT call {call} (T={}, pattern {pattern:?})",
        spec.name(),
        plan.tokens
    )
}

/// What one spec's high-throughput check found.
pub struct HtVerified {
    /// Calls compared with the reference, all equal.
    pub calls: usize,
    /// The last call's phases, timed over all ranks (`None` when no routing fitted the buffer).
    pub times: Option<HtTimes>,
    /// Bytes the last call's dispatch wrote into the receivers' windows (all ranks).
    pub received_bytes: usize,
}

/// What one spec's low-latency check found.
pub struct LlVerified {
    /// Ranks it ran with (the spec's, or fewer when the spec's do not fit on one GPU).
    pub ranks: u32,
    /// Calls compared with the reference, all equal.
    pub routings: usize,
    /// Launch times at T = M on every rank.
    pub times: PhaseTimes,
}

/// The spec as it can run on this GPU: its own rank count when its windows fit in 80% of the
/// free memory, else 8 ranks (or fewer) of the same deployment.
pub fn fitting(gpu: &Gpu, spec: &Spec) -> Result<Spec> {
    let (free, _) = gpu.context().mem_get_info()?;
    let fits = |s: &Spec| LowLatency::memory_bytes(s) < free as u64 / 10 * 8;
    if fits(spec) {
        return Ok(spec.clone());
    }
    for r in [8, 4, 2, 1] {
        if r < spec.ranks() && spec.experts().is_multiple_of(r) {
            let smaller = spec.with_ranks(r)?;
            if fits(&smaller) {
                return Ok(smaller);
            }
        }
    }
    bail!(
        "{} does not fit on this GPU even with one rank",
        spec.name()
    )
}

/// What a low-latency check runs.
pub struct LlPlan<'a> {
    /// Seed of the routings.
    pub seed: u64,
    /// Calls compared with the reference.
    pub routings: usize,
    /// Timed calls.
    pub iters: usize,
    /// Where to write the first call's tensors.
    pub dump: Option<&'a Path>,
}

/// Runs `routings` low-latency calls (rotating through the routing patterns, sizes between 0
/// and M, the first at T = M) and compares dispatch and combine with the reference; then times
/// a call at T = M. With `dump`, writes the first call's tensors there as `.npy`.
pub fn verify_ll(
    gpu: &Gpu,
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    plan: &LlPlan<'_>,
) -> Result<LlVerified> {
    let mut ll = LowLatency::new(gpu, jit, renderer, spec)?;
    verify_ll_on(&mut ll, spec, plan)
}

/// [`verify_ll`] on the ranks of any group (all virtual ranks, or this process's NCCL rank):
/// every rank's inputs are made from the seed, so each process checks its own ranks.
pub fn verify_ll_on(ll: &mut LowLatency, spec: &Spec, plan: &LlPlan<'_>) -> Result<LlVerified> {
    let (seed, routings) = (plan.seed, plan.routings);
    let gpu = ll.gpu().clone();
    let mine = ll.group().ranks();
    let mut call = ll.new_call()?;
    let ep_codegen::Dims {
        ranks: r,
        top_k: k,
        experts: e,
        tokens: m,
        ..
    } = spec.dims();
    let inputs_of = |i: usize| -> Vec<RankInput> {
        (0..r)
            .map(|rank| {
                let t = if i == 0 {
                    m
                } else {
                    (i * 7919 + rank * 104_729) % (m + 1)
                };
                let s = seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((i * r + rank) as u64);
                RankInput {
                    routing: generate(Pattern::ALL[i % Pattern::ALL.len()], t, k, e, r, s),
                    x: random_activations(spec, t, s),
                }
            })
            .collect()
    };
    let local = |all: &[RankInput]| -> Vec<RankInput> {
        mine.iter().map(|&rank| all[rank].clone()).collect()
    };
    for i in 0..routings.max(1) {
        let inputs = inputs_of(i);
        call.set_inputs(&gpu, &local(&inputs))?;
        // Even calls run each phase in one launch, odd ones with the hook's two.
        let hook = i % 2 == 1;
        if hook {
            ll.dispatch_send(&mut call)?;
            ll.dispatch_recv(&mut call)?;
        } else {
            ll.dispatch(&mut call)?;
        }
        let got = ll.dispatched(&call)?;
        check::ll::check_dispatch_of(spec, &inputs, &mine, &got).map_err(|why| {
            anyhow!(
                "{}: dispatch of call {i} differs from the reference: {why}",
                spec.name()
            )
        })?;
        let y = check::ll::expert_outputs_of(spec, &mine, &got);
        ll.set_expert_outputs(&call, &y)?;
        if hook {
            ll.combine_send(&call)?;
            ll.combine_recv(&mut call)?;
        } else {
            ll.combine(&mut call)?;
        }
        let out = ll.combined(&call)?;
        check::ll::check_combine_of(spec, &inputs, &mine, &out).map_err(|why| {
            anyhow!(
                "{}: combine of call {i} differs from the reference: {why}",
                spec.name()
            )
        })?;
        if let (0, Some(dir)) = (i, plan.dump) {
            dump_call(dir, spec, &mine, &inputs, &got, &y, &out)?;
        }
    }
    call.set_inputs(&gpu, &local(&inputs_of(0)))?;
    let times = ll.time_phases(&mut call, 10, plan.iters)?;
    Ok(LlVerified {
        ranks: spec.ranks(),
        routings: routings.max(1),
        times,
    })
}

/// Writes one high-throughput call's tensors as `rank<r>.<tensor>.npy`, named as in DESIGN.md:
/// the inputs, the rows in use of each receive buffer (`recv_x`, FP8 `recv_scales`,
/// `recv_topk_idx`, `recv_topk_w`, `recv_src`), notify's `num_recv_tokens_per_expert` and
/// `group_offset`, the rows returned (`y`) and the combined `out`.
fn dump_ht_call(
    dir: &Path,
    spec: &Spec,
    inputs: &[RankInput],
    got: &[ep_runtime::HtReceived],
    y: &[Vec<u16>],
    out: &[Vec<u16>],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = spec.dims();
    for (rank, ((input, g), (y, out))) in inputs.iter().zip(got).zip(y.iter().zip(out)).enumerate()
    {
        let t = input.routing.num_tokens;
        let rows = g.recv_src.len();
        let file = |name: &str| dir.join(format!("rank{rank}.{name}.npy"));
        dump_inputs(&file, spec, input)?;
        dump_recv_x(&file, spec, &[rows, d.hidden], &g.recv_x, &g.recv_scales)?;
        npy::write(
            &file("recv_topk_idx"),
            &[rows, d.top_k],
            npy::Data::I64(&g.recv_topk_idx),
        )?;
        npy::write(
            &file("recv_topk_w"),
            &[rows, d.top_k],
            npy::Data::F32(&g.recv_topk_w),
        )?;
        npy::write(&file("recv_src"), &[rows], npy::Data::I32(&g.recv_src))?;
        npy::write(
            &file("num_recv_tokens_per_expert"),
            &[d.local],
            npy::Data::I32(&g.notify.recv_tokens_per_expert),
        )?;
        npy::write(
            &file("group_offset"),
            &[d.local + 1],
            npy::Data::I32(&g.notify.group_offset),
        )?;
        npy::write(&file("y"), &[rows, d.hidden], npy::Data::U16(y))?;
        npy::write(&file("out"), &[t, d.hidden], npy::Data::U16(out))?;
    }
    Ok(())
}

/// Writes a rank's inputs: `x`, `topk_idx`, `topk_weights`.
fn dump_inputs(file: &dyn Fn(&str) -> PathBuf, spec: &Spec, input: &RankInput) -> Result<()> {
    let (t, h, k) = (
        input.routing.num_tokens,
        spec.hidden() as usize,
        spec.top_k() as usize,
    );
    npy::write(&file("x"), &[t, h], npy::Data::U16(&input.x))?;
    npy::write(
        &file("topk_idx"),
        &[t, k],
        npy::Data::I64(&input.routing.topk_idx),
    )?;
    npy::write(
        &file("topk_weights"),
        &[t, k],
        npy::Data::F32(&input.routing.topk_weights),
    )
}

/// Writes `recv_x` of `shape` (FP8 codes as uint8 with `recv_scales`, whose last dimension is
/// the scales per row; else 16-bit patterns).
fn dump_recv_x(
    file: &dyn Fn(&str) -> PathBuf,
    spec: &Spec,
    shape: &[usize],
    recv_x: &[u8],
    recv_scales: &[f32],
) -> Result<()> {
    if spec.fp8().is_some() {
        npy::write(&file("recv_x"), shape, npy::Data::U8(recv_x))?;
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let mut scales = shape.to_vec();
        if let Some(last) = scales.last_mut() {
            *last = recv_scales.len() / rows.max(1);
        }
        npy::write(&file("recv_scales"), &scales, npy::Data::F32(recv_scales))
    } else {
        let halves: Vec<u16> = recv_x
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        npy::write(&file("recv_x"), shape, npy::Data::U16(&halves))
    }
}

/// Writes one call's tensors as `rank<r>.<tensor>.npy`, named as in DESIGN.md.
fn dump_call(
    dir: &Path,
    spec: &Spec,
    ranks: &[usize],
    inputs: &[RankInput],
    got: &[ep_runtime::RankDispatch],
    y: &[Vec<u16>],
    out: &[Vec<u16>],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ep_codegen::Dims {
        ranks: r,
        local: l,
        tokens: m,
        hidden: h,
        ..
    } = spec.dims();
    let rows = r * m;
    for (i, &rank) in ranks.iter().enumerate() {
        let input = &inputs[rank];
        let t = input.routing.num_tokens;
        let file = |name: &str| dir.join(format!("rank{rank}.{name}.npy"));
        dump_inputs(&file, spec, input)?;
        let g = &got[i];
        dump_recv_x(&file, spec, &[l, rows, h], &g.recv_x, &g.recv_scales)?;
        npy::write(&file("recv_count"), &[l], npy::Data::I32(&g.recv_count))?;
        npy::write(&file("recv_src"), &[l, rows], npy::Data::I32(&g.recv_src))?;
        npy::write(
            &file("recv_range"),
            &[l, r, 2],
            npy::Data::I32(&g.recv_range),
        )?;
        npy::write(&file("y"), &[l, rows, h], npy::Data::U16(&y[i]))?;
        npy::write(&file("out"), &[t, h], npy::Data::U16(&out[i]))?;
    }
    Ok(())
}

/// [`verify_ht`] on the ranks of any group (all virtual ranks, or this process's NCCL rank):
/// `routings` calls of `tokens` tokens per rank, every rank's inputs and returned rows made from
/// the seed, so each process checks its own ranks' dispatch and combine bit for bit.
pub fn verify_ht_on(group: &mut HtGroup, spec: &Spec, plan: &Plan) -> Result<()> {
    let d = spec.dims();
    let mine = group.ranks();
    for call in 0..plan.routings.max(1) {
        let (all, seed) = ht_call_inputs(spec, plan, call);
        let what = || ht_call_name(spec, plan, call);
        let Ok(want) = check::ht::Expected::of(spec, &all) else {
            continue; // a routing this spec's buffer cannot hold
        };
        let local: Vec<RankInput> = mine.iter().map(|&r| all[r].clone()).collect();
        let got = group.dispatch(&local).with_context(what)?;
        check::ht::check_dispatch_of(spec, &all, &want, &mine, &got)
            .map_err(|e| anyhow!("{}: dispatch: {e}", what()))?;
        let y: Vec<Vec<u16>> = (0..d.ranks)
            .map(|r| random_activations(spec, want.rows(r), seed ^ 0xc0 ^ r as u64))
            .collect();
        let local_y: Vec<Vec<u16>> = mine.iter().map(|&r| y[r].clone()).collect();
        let out = group.combine(&local_y).with_context(what)?;
        check::ht::check_combine_of(spec, &all, &want, &y, &mine, &out)
            .map_err(|e| anyhow!("{}: {e}", what()))?;
    }
    Ok(())
}
