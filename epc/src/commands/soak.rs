//! `epc soak`: many low-latency calls with fresh routings on the spec's virtual ranks (as many
//! as fit on the GPU), as a serving loop makes them: every call's received counts checked
//! against the routing, every `--every`-th call (and the last) checked bit for bit against the
//! CPU reference, and a SHA-256 over every call's counts and the checked calls' received rows
//! and outputs, so that two runs with the same seed can be compared by one line. The group is
//! the one a user gets (tuned knobs and token buckets from the database).

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use ep_codegen::{Mode, Renderer, Spec};
use ep_runtime::check::ll::{check_combine, check_dispatch, expert_outputs};
use ep_runtime::reference::layout;
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, Routing, SplitMix64, generate};
use ep_runtime::{Gpu, HostCall, Jit, LowLatency, ModeGroup, RankDispatch};
use sha2::{Digest, Sha256};

use super::verify::fitting;
use crate::cli::SoakArgs;
use crate::inputs::{load_specs, renderer};
use crate::progress::bar;

/// Errors kept for the report (the count goes on).
const ERRORS_SHOWN: usize = 5;

/// What one spec's soak found.
struct Soaked {
    /// Ranks it ran with.
    ranks: u32,
    calls: usize,
    /// Calls checked bit for bit.
    checked: usize,
    tokens: u64,
    seconds: f64,
    errors: usize,
    first_errors: Vec<String>,
    hash: String,
}

/// Runs `epc soak`.
pub fn soak(args: &SoakArgs, templates: Option<&Path>) -> Result<ExitCode> {
    if args.calls == 0 || args.every == 0 {
        bail!("--calls and --every must be at least 1");
    }
    if let Some(s) = args.seconds.filter(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--seconds {s}: a soak needs a positive, finite number of seconds");
    }
    let specs = load_specs(&args.specs.specs)?;
    let renderer = renderer(templates)?;
    let gpu = Gpu::open(0)?;
    let jit = Jit::nvrtc()?;
    println!("GPU {} ({}, {} SMs)", gpu.name(), gpu.arch(), gpu.sms());
    let mut clean = true;
    for loaded in &specs {
        let spec = &loaded.spec;
        if spec.mode() != Mode::LowLatency {
            println!(
                "{}: a high_throughput spec; epc soak runs low-latency ones",
                spec.name()
            );
            continue;
        }
        let runnable = fitting(&gpu, spec)?;
        let s = soak_one(&gpu, &jit, &renderer, &runnable, args)?;
        println!(
            "{}: {} calls on {} ranks in {:.1} s ({:.0} calls/s, {:.0} tokens/s), {} checked \
             bit for bit, {} errors; hash {}",
            spec.name(),
            s.calls,
            s.ranks,
            s.seconds,
            s.calls as f64 / s.seconds.max(1e-9),
            s.tokens as f64 / s.seconds.max(1e-9),
            s.checked,
            s.errors,
            s.hash
        );
        for e in &s.first_errors {
            println!("  {e}");
        }
        clean &= s.errors == 0;
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every rank's routing of call `i`: a routing pattern in turn, T between 0 and M per rank (M
/// for all ranks every eighth call).
fn routings(spec: &Spec, seed: u64, i: usize) -> Vec<Routing> {
    let d = spec.dims();
    let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let pattern = Pattern::ALL[i % Pattern::ALL.len()];
    (0..d.ranks)
        .map(|_| {
            let t = if i.is_multiple_of(8) {
                d.tokens
            } else {
                (rng.next_u64() % (d.tokens as u64 + 1)) as usize
            };
            generate(pattern, t, d.top_k, d.experts, d.ranks, rng.next_u64())
        })
        .collect()
}

/// The reference's inputs of a call: each rank's routing and the first T rows of its pool.
fn with_rows(spec: &Spec, pools: &[Vec<u16>], routings: &[Routing]) -> Vec<RankInput> {
    routings
        .iter()
        .zip(pools)
        .map(|(r, pool)| RankInput {
            routing: r.clone(),
            x: pool[..r.num_tokens * spec.hidden() as usize].to_vec(),
        })
        .collect()
}

/// Rows each rank's local experts receive, `[rank][local expert]`: one per (token, slot) routed
/// to the expert from any rank, the reference layout's per-expert counts summed over the sources.
fn expected_counts(spec: &Spec, routings: &[Routing]) -> Vec<Vec<i32>> {
    let d = spec.dims();
    let mut per_expert = vec![0i32; d.experts];
    for r in routings {
        let (sent, _) = layout(r, d.experts, d.ranks);
        for (total, n) in per_expert.iter_mut().zip(sent.num_tokens_per_expert) {
            *total += n;
        }
    }
    per_expert.chunks(d.local).map(<[i32]>::to_vec).collect()
}

fn soak_one(
    gpu: &Gpu,
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    args: &SoakArgs,
) -> Result<Soaked> {
    let mut ll = match ModeGroup::new(gpu, jit, renderer, spec, None)? {
        ModeGroup::Ll(group) => LowLatency::from_group(group),
        ModeGroup::Ht(_) => bail!("{} is not a low_latency spec", spec.name()),
    };
    let d = spec.dims();
    let pools: Vec<Vec<u16>> = (0..d.ranks)
        .map(|r| random_activations(spec, d.tokens, args.seed ^ ((r as u64 + 1) << 32)))
        .collect();
    let mut call = ll.new_call()?;
    // The activations go up once (M rows per rank); each call uploads its routing alone.
    let all_rows: Vec<Routing> = (0..d.ranks)
        .map(|_| generate(Pattern::Uniform, d.tokens, d.top_k, d.experts, d.ranks, 0))
        .collect();
    call.set_inputs(gpu, &with_rows(spec, &pools, &all_rows))?;
    let mut hash = Sha256::new();
    let mut s = Soaked {
        ranks: spec.ranks(),
        calls: 0,
        checked: 0,
        tokens: 0,
        seconds: 0.0,
        errors: 0,
        first_errors: Vec::new(),
        hash: String::new(),
    };
    let progress = bar(args.calls, spec.name());
    let start = Instant::now();
    // The routings are made ahead on the other cores (a DeepSeek-V3 call's take ~10 ms on
    // one), call i by producer i % n, each at most two calls ahead.
    let producers = std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 8);
    std::thread::scope(|scope| {
        let ahead: Vec<Receiver<Vec<Routing>>> = (0..producers)
            .map(|j| {
                let (tx, rx) = sync_channel(2);
                scope.spawn(move || {
                    for i in (j..args.calls).step_by(producers) {
                        if tx.send(routings(spec, args.seed, i)).is_err() {
                            return; // the soak stopped
                        }
                    }
                });
                rx
            })
            .collect();
        for i in 0..args.calls {
            if args
                .seconds
                .is_some_and(|limit| start.elapsed().as_secs_f64() > limit)
            {
                break;
            }
            let Ok(routings) = ahead[i % producers].recv() else {
                break;
            };
            let full = i.is_multiple_of(args.every) || i + 1 == args.calls;
            let inputs = full.then(|| with_rows(spec, &pools, &routings));
            let one = Call {
                gpu,
                spec,
                routings: &routings,
                inputs: inputs.as_deref(),
            };
            if let Err(e) = one.run(&mut ll, &mut call, &mut hash) {
                s.errors += 1;
                if s.first_errors.len() < ERRORS_SHOWN {
                    s.first_errors.push(format!("call {i}: {e:#}"));
                }
            }
            s.calls += 1;
            s.checked += usize::from(full);
            s.tokens += routings.iter().map(|r| r.num_tokens as u64).sum::<u64>();
            progress.inc(1);
        }
        drop(ahead); // ends the producers
    });
    // The last call's combine, unless it was checked, reports its errors here.
    if let Err(e) = ll.check() {
        s.errors += 1;
        s.first_errors.push(format!("after the last call: {e}"));
    }
    progress.finish_and_clear();
    s.seconds = start.elapsed().as_secs_f64();
    s.hash = hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(s)
}

/// One call of the soak.
struct Call<'a> {
    gpu: &'a Gpu,
    spec: &'a Spec,
    routings: &'a [Routing],
    /// The reference's inputs when the call is checked bit for bit.
    inputs: Option<&'a [RankInput]>,
}

impl Call<'_> {
    /// Dispatch, the counts (or everything, when checked) compared, combine (compared when
    /// checked); what was read goes into `hash`.
    fn run(&self, ll: &mut LowLatency, call: &mut HostCall, hash: &mut Sha256) -> Result<()> {
        let spec = self.spec;
        call.set_routings(self.gpu, self.routings)?;
        ll.dispatch(call)?;
        let want = expected_counts(spec, self.routings);
        let Some(inputs) = self.inputs else {
            let counts = ll.received_counts(call)?;
            for c in counts.iter().flatten() {
                hash.update(c.to_le_bytes());
            }
            if counts != want {
                return Err(anyhow!(
                    "received counts differ from the routing's: {counts:?} != {want:?}"
                ));
            }
            return Ok(ll.combine(call)?);
        };
        let got = ll.dispatched(call)?;
        for g in &got {
            hash_received(spec, g, hash);
        }
        if got.iter().map(|g| g.recv_count.clone()).collect::<Vec<_>>() != want {
            return Err(anyhow!("received counts differ from the routing's"));
        }
        check_dispatch(spec, inputs, &got).map_err(|e| anyhow!("dispatch: {e}"))?;
        ll.set_expert_outputs(call, &expert_outputs(spec, &got))?;
        ll.combine(call)?;
        let out = ll.combined(call)?;
        for rank in &out {
            for v in rank {
                hash.update(v.to_le_bytes());
            }
        }
        check_combine(spec, inputs, &out).map_err(|e| anyhow!("combine: {e}"))
    }
}

/// Hashes a rank's received rows in an order that does not depend on timing: each expert's
/// count, then its rows (payload and scales) sorted by source. The dispatch places an expert's
/// rows in the order its senders reserved them, which varies from run to run.
fn hash_received(spec: &Spec, got: &RankDispatch, hash: &mut Sha256) {
    let per_expert = (spec.ranks() * spec.max_tokens_per_rank()) as usize;
    let experts = got.recv_count.len().max(1);
    let payload = got.recv_x.len() / (experts * per_expert).max(1);
    let scales = got.recv_scales.len() / (experts * per_expert).max(1);
    for (le, &n) in got.recv_count.iter().enumerate() {
        hash.update(n.to_le_bytes());
        let first = le * per_expert;
        let mut rows: Vec<usize> = (first..first + (n.max(0) as usize).min(per_expert)).collect();
        rows.sort_by_key(|&r| got.recv_src.get(r).copied().unwrap_or(-1));
        for r in rows {
            hash.update(got.recv_src.get(r).copied().unwrap_or(-1).to_le_bytes());
            hash.update(
                got.recv_x
                    .get(r * payload..(r + 1) * payload)
                    .unwrap_or_default(),
            );
            for s in got
                .recv_scales
                .get(r * scales..(r + 1) * scales)
                .unwrap_or_default()
            {
                hash.update(s.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_routing_and_routings_repeat_with_the_seed() {
        let spec: Spec = Spec::from_yaml(
            "name: s\nmode: low_latency\nhidden: 256\nexperts: 16\ntop_k: 4\nranks: 4\n\
             max_tokens_per_rank: 32\n",
            None,
        )
        .unwrap();
        let pools: Vec<Vec<u16>> = (0..4).map(|r| random_activations(&spec, 32, r)).collect();
        for i in 0..20 {
            let a = routings(&spec, 5, i);
            assert_eq!(a, routings(&spec, 5, i));
            if i.is_multiple_of(8) {
                assert!(a.iter().all(|r| r.num_tokens == 32));
            }
            let counts = expected_counts(&spec, &a);
            let slots: usize = a
                .iter()
                .map(|r| r.topk_idx.iter().filter(|&&e| e >= 0).count())
                .sum();
            // Every valid slot is one row.
            assert_eq!(counts.iter().flatten().sum::<i32>() as usize, slots);
            for (input, r) in with_rows(&spec, &pools, &a).iter().zip(&a) {
                assert_eq!(input.x.len(), r.num_tokens * 256);
            }
        }
        assert_ne!(routings(&spec, 5, 1), routings(&spec, 6, 1));
    }

    #[test]
    fn the_received_rows_hash_the_same_in_any_order() {
        let spec: Spec = Spec::from_yaml(
            "name: s\nmode: low_latency\nhidden: 8\nexperts: 2\ntop_k: 1\nranks: 1\n\
             max_tokens_per_rank: 3\n",
            None,
        )
        .unwrap();
        // Two experts of 3 rows each, 2 bytes per row; expert 0 got sources 2 and 0.
        let got = |src: Vec<i32>, x: Vec<u8>| RankDispatch {
            recv_count: vec![2, 1],
            recv_src: src,
            recv_range: Vec::new(),
            recv_x: x,
            recv_scales: Vec::new(),
        };
        let digest = |g: &RankDispatch| {
            let mut h = Sha256::new();
            hash_received(&spec, g, &mut h);
            h.finalize()
        };
        let a = got(
            vec![2, 0, -1, 1, -1, -1],
            vec![5, 5, 7, 7, 0, 0, 9, 9, 0, 0, 0, 0],
        );
        let b = got(
            vec![0, 2, -1, 1, -1, -1],
            vec![7, 7, 5, 5, 0, 0, 9, 9, 0, 0, 0, 0],
        );
        let c = got(
            vec![0, 2, -1, 1, -1, -1],
            vec![5, 5, 7, 7, 0, 0, 9, 9, 0, 0, 0, 0],
        );
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
