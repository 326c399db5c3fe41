//! Running a spec's kernels on the GPU against the CPU reference, and timing them.

use anyhow::{Context, Result, bail};
use ep_codegen::{KernelSource, Spec};
use ep_runtime::reference::{self, Layout};
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Gpu, Jit, LayoutKernel};

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
    let (e, r, k, m) = (
        spec.experts as usize,
        spec.ranks as usize,
        spec.top_k as usize,
        spec.max_tokens_per_rank as usize,
    );
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
            .with_context(|| format!("{}: layout kernel on routing {i}", spec.name))?;
        let (want, _) = reference::layout(&routing, e, r);
        if got != want {
            bail!(
                "{}: the layout kernel differs from the reference (T={}, pattern {p:?}, seed {})",
                spec.name,
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
