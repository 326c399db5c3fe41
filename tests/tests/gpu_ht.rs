//! High-throughput dispatch and combine on virtual ranks against the CPU reference, bit for bit,
//! in both layouts and with 16-bit and FP8 payloads: flat rows in (source, token) order with
//! rewritten slots, weights and sources, and the combine summed by NVLink domain; expert-major
//! groups in (source, token, slot) order, padded with zero rows, and the combine weighted over
//! the slots; with G < R through the hierarchical path (staged once per domain, forwarded by
//! the proxy there, reduced by domain).

use ep_codegen::Spec;
use ep_runtime::HtGroup;
use ep_runtime::check::ht::{Expected, check_combine, check_dispatch};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, SplitMix64, generate};
use ep_tests::{gpu_jit_or_skip, renderer};

/// A spec of R ranks in domains of G, M tokens per rank, with `extra` YAML lines (layout,
/// payload) and a buffer that holds every row a rank can be sent.
fn spec(ranks: u32, domain: u32, tokens: u32, hidden: u32, extra: &str) -> Spec {
    let expert_major = extra.contains("expert_major");
    let capacity = if expert_major {
        // Every slot of every sender, plus each of the 8 local experts' padding (alignment 64).
        ranks * tokens * 8 + 8 * 63
    } else {
        ranks * tokens
    };
    let yaml = format!(
        "name: ht-r{ranks}-g{domain}\nmode: high_throughput\nhidden: {hidden}\n\
         experts: {}\ntop_k: 8\nranks: {ranks}\nnvlink_domain: {domain}\n\
         max_tokens_per_rank: {tokens}\nmax_recv_tokens_per_rank: {capacity}\n{extra}",
        8 * ranks,
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
    let want = Expected::of(s, &inputs).unwrap();
    let what = format!("{} T={tokens} {pattern:?} seed {seed}", s.name());
    check_dispatch(s, &inputs, &want, &got).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Each rank returns a random row for each row of its buffer.
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
    check_combine(s, &inputs, &want, &y, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// Runs the patterns and token counts of one spec (T = 0, 1, M and partial) on a fresh group.
fn check_spec(gpu: &ep_runtime::Gpu, jit: &ep_runtime::Jit, s: &Spec, seed: u64) -> usize {
    let kernels = renderer().render(s).unwrap();
    let mut group = HtGroup::virtual_ranks(gpu, jit, s, &kernels).unwrap();
    let m = s.max_tokens_per_rank() as usize;
    let calls = [
        (0, Pattern::Uniform),
        (1, Pattern::Uniform),
        (m, Pattern::Uniform),
        (m, Pattern::Hot),
        (m * 3 / 4, Pattern::EmptyRanks),
        (m * 2 / 3, Pattern::Sparse),
    ];
    for (i, (tokens, pattern)) in calls.into_iter().enumerate() {
        check(&mut group, s, tokens, pattern, seed + i as u64);
    }
    calls.len()
}

#[test]
fn ht_flat_dispatch_and_combine_match_the_reference() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("ht_flat_dispatch_and_combine_match_the_reference")
    else {
        return;
    };
    let mut checked = 0;
    for (ranks, domain, extra) in [
        (1, 1, "dtype: bf16\n"),
        (2, 2, "dtype: bf16\n"),
        (4, 4, "dtype: fp16\n"),
        (8, 8, "dtype: bf16\n"),
        (8, 2, "dtype: bf16\n"),
        (16, 16, "dtype: bf16\n"),
        (16, 8, "dtype: bf16\n"),
    ] {
        let s = spec(ranks, domain, 4096, 1024, extra);
        checked += check_spec(&gpu, &jit, &s, 100 * u64::from(ranks));
    }
    eprintln!("{checked} flat HT calls checked");
}

#[test]
fn ht_fp8_and_expert_major_match_the_reference() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("ht_fp8_and_expert_major_match_the_reference")
    else {
        return;
    };
    let fp8 = "dispatch_dtype: fp8_e4m3\nfp8:\n  block: 128\n  scale: f32\n";
    let ue8m0 = "dispatch_dtype: fp8_e4m3\nfp8:\n  block: 128\n  scale: ue8m0\n";
    let major = "layout: expert_major\nexpert_alignment: 64\n";
    let mut checked = 0;
    for (ranks, domain, extra) in [
        (1, 1, fp8.to_owned()),
        (4, 4, fp8.to_owned()),
        (8, 8, ue8m0.to_owned()),
        (16, 16, fp8.to_owned()),
        (1, 1, major.to_owned()),
        (2, 2, major.to_owned()),
        (8, 8, major.to_owned()),
        (16, 16, major.to_owned()),
        (4, 4, format!("{major}{fp8}")),
        (8, 8, format!("{major}{ue8m0}")),
        // The hierarchical path: R = 16 in domains of 8, R = 8 in domains of 2.
        (16, 8, fp8.to_owned()),
        (8, 2, major.to_owned()),
        (16, 8, format!("{major}{fp8}")),
        (8, 2, format!("{major}{ue8m0}")),
    ] {
        let s = spec(ranks, domain, 2048, 1024, &extra);
        checked += check_spec(&gpu, &jit, &s, 300 * u64::from(ranks));
    }
    eprintln!("{checked} FP8 and expert-major HT calls checked");
}

#[test]
fn ht_8192_tokens_per_rank_match_the_reference() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("ht_8192_tokens_per_rank_match_the_reference")
    else {
        return;
    };
    let major_fp8 = "layout: expert_major\nexpert_alignment: 64\ndispatch_dtype: fp8_e4m3\n\
                     fp8:\n  block: 128\n  scale: f32\n";
    let mut checked = 0;
    for (ranks, extra) in [(4, "dtype: bf16\n"), (2, major_fp8)] {
        let s = spec(ranks, ranks, 8192, 1024, extra);
        checked += check_spec(&gpu, &jit, &s, 500 * u64::from(ranks));
    }
    eprintln!("{checked} HT calls of up to 8192 tokens per rank checked");
}

/// The benchmark's fan-out copy (the dispatch's row copies alone) writes every received row
/// where the dispatch put it: after the rows are cleared, it restores them bit for bit.
#[test]
fn ht_fanout_copy_rewrites_every_received_row() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("ht_fanout_copy_rewrites_every_received_row")
    else {
        return;
    };
    let fp8 = "dispatch_dtype: fp8_e4m3\nfp8:\n  block: 128\n  scale: f32\n";
    let major = "layout: expert_major\nexpert_alignment: 64\n";
    let stream = gpu.stream();
    for (ranks, domain, extra) in [
        (8, 8, "dtype: bf16\n".to_owned()),
        (4, 4, format!("{major}{fp8}")),
        (8, 2, fp8.to_owned()),
    ] {
        let s = spec(ranks, domain, 1024, 1024, &extra);
        let d = s.dims();
        let kernels = renderer().render(&s).unwrap();
        let fanout = renderer()
            .render_plan(&s, ep_codegen::kernels::ht::fanout_plan(&s))
            .unwrap();
        let mut group = HtGroup::virtual_ranks(&gpu, &jit, &s, &kernels).unwrap();
        let inputs: Vec<RankInput> = (0..d.ranks)
            .map(|r| RankInput {
                routing: generate(
                    Pattern::Hot,
                    1024,
                    d.top_k,
                    d.experts,
                    d.ranks,
                    40 + r as u64,
                ),
                x: random_activations(&s, 1024, 41 + r as u64),
            })
            .collect();
        let got = group.dispatch(&inputs).unwrap();
        let row_bytes = got[0].recv_x.len() / got[0].recv_src.len().max(1);
        for (i, g) in got.iter().enumerate() {
            let views = group.received(i).unwrap();
            ep_tests::write_view(stream, &views.recv_x, &vec![0u16; g.recv_x.len() / 2]);
            if let Some(scales) = views.recv_scales {
                ep_tests::write_view(stream, &scales, &vec![0u16; g.recv_scales.len() * 2]);
            }
        }
        group.time_fanout(&jit, &fanout, 0, 1).unwrap();
        for (i, g) in got.iter().enumerate() {
            let views = group.received(i).unwrap();
            let x: Vec<u8> = ep_tests::read_view(stream, &views.recv_x, g.recv_x.len());
            let rows = x
                .chunks(row_bytes.max(1))
                .zip(g.recv_x.chunks(row_bytes.max(1)));
            for (row, (a, b)) in rows.enumerate() {
                assert!(
                    a == b,
                    "{} rank {i} row {row} differs after the fan-out copy",
                    s.name()
                );
            }
            if let Some(scales) = views.recv_scales {
                let got_scales: Vec<f32> =
                    ep_tests::read_view(stream, &scales, g.recv_scales.len());
                assert_eq!(got_scales, g.recv_scales, "{} rank {i} scales", s.name());
            }
        }
        eprintln!("{}: the fan-out copy restored every row", s.name());
    }
}
