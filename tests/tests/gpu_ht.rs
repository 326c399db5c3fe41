//! High-throughput dispatch and combine (flat layout) on virtual ranks against the CPU reference,
//! bit for bit: rows in (source, token) order with rewritten slots, weights and sources, and the
//! combine summed by NVLink domain.

use ep_codegen::Spec;
use ep_runtime::HtGroup;
use ep_runtime::check::ht::{check_flat_combine, check_flat_dispatch};
use ep_runtime::reference::ht::dispatch_flat;
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, SplitMix64, generate};
use ep_tests::{gpu_jit_or_skip, renderer};

fn spec(ranks: u32, domain: u32, tokens: u32, dtype: &str) -> Spec {
    let yaml = format!(
        "name: ht-r{ranks}-g{domain}\nmode: high_throughput\nhidden: 1024\ndtype: {dtype}\n\
         experts: {}\ntop_k: 8\nranks: {ranks}\nnvlink_domain: {domain}\n\
         max_tokens_per_rank: {tokens}\nmax_recv_tokens_per_rank: {}\n",
        8 * ranks,
        ranks * tokens
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn check(group: &mut HtGroup, s: &Spec, tokens: usize, pattern: Pattern, seed: u64) {
    let d = s.dims();
    let inputs: Vec<RankInput> = (0..d.ranks)
        .map(|r| {
            // Ranks send different numbers of tokens.
            let t = if tokens <= 1 {
                tokens
            } else {
                tokens - r * tokens / (2 * d.ranks)
            };
            RankInput {
                routing: generate(pattern, t, d.top_k, d.experts, d.ranks, seed + r as u64),
                x: random_activations(s, t, seed ^ (r as u64) << 20),
            }
        })
        .collect();
    let got = group.dispatch(&inputs).unwrap();
    let want = dispatch_flat(s, &inputs).unwrap();
    let what = format!("{} T={tokens} {pattern:?} seed {seed}", s.name());
    check_flat_dispatch(s, &got, &want).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Each rank returns a random row for each row it received.
    let mut rng = SplitMix64::new(seed ^ 0x7);
    let y: Vec<Vec<u16>> = got
        .iter()
        .map(|g| {
            (0..g.recv_src.len() * d.hidden)
                .map(|_| {
                    ep_runtime::reference::values::from_f32(
                        rng.next_f64() as f32 * 4.0 - 2.0,
                        s.dtype(),
                    )
                })
                .collect()
        })
        .collect();
    let out = group.combine(&y).unwrap();
    check_flat_combine(s, &inputs, &got, &y, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn ht_flat_dispatch_and_combine_match_the_reference() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("ht_flat_dispatch_and_combine_match_the_reference")
    else {
        return;
    };
    let renderer = renderer();
    let mut checked = 0;
    for (ranks, domain, dtype) in [
        (1, 1, "bf16"),
        (2, 2, "bf16"),
        (4, 4, "fp16"),
        (8, 8, "bf16"),
        (8, 2, "bf16"),
        (16, 16, "bf16"),
    ] {
        let s = spec(ranks, domain, 4096, dtype);
        let kernels = renderer.render(&s).unwrap();
        let mut group = HtGroup::virtual_ranks(&gpu, &jit, &s, &kernels).unwrap();
        let m = s.max_tokens_per_rank() as usize;
        for (i, (tokens, pattern)) in [
            (0, Pattern::Uniform),
            (1, Pattern::Uniform),
            (m, Pattern::Uniform),
            (m, Pattern::Hot),
            (m * 3 / 4, Pattern::EmptyRanks),
            (m * 2 / 3, Pattern::Sparse),
        ]
        .into_iter()
        .enumerate()
        {
            check(
                &mut group,
                &s,
                tokens,
                pattern,
                100 * u64::from(ranks) + i as u64,
            );
            checked += 1;
        }
    }
    eprintln!("{checked} HT calls checked");
}
