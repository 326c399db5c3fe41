//! Low-latency dispatch and combine on virtual ranks against the CPU reference.

use std::time::Duration;

use ep_codegen::Spec;
use ep_runtime::reference::ll::{RankInput, combine, expected_dispatch, random_activations};
use ep_runtime::reference::values::from_f32;
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Error, LowLatency, RankDispatch};
use ep_tests::{gpu_jit_or_skip, renderer};

/// (ranks, hidden, top_k, experts, dispatch, index) combinations covering every value the issue
/// names: R in {1, 2, 4, 8}, H in {2048, 2880, 4096, 7168}, K in {1, 2, 4, 6, 8}.
const CASES: &[(u32, u32, u32, u32, &str, &str)] = &[
    (8, 7168, 8, 64, "fp8_e4m3\nfp8: {scale: f32}", "i64"),
    (8, 7168, 8, 64, "bf16", "i32"),
    (4, 4096, 6, 32, "fp8_e4m3\nfp8: {scale: ue8m0}", "i64"),
    (2, 2880, 4, 16, "bf16", "i64"),
    (1, 2048, 2, 8, "fp8_e4m3", "i32"),
    (8, 2048, 1, 16, "bf16", "i64"),
    (4, 2880, 8, 128, "bf16", "i32"),
];

fn spec(r: u32, h: u32, k: u32, e: u32, dispatch: &str, index: &str) -> Spec {
    let yaml = format!(
        "name: ll-r{r}-h{h}-k{k}\nmode: low_latency\nhidden: {h}\nexperts: {e}\ntop_k: {k}\n\
         ranks: {r}\nmax_tokens_per_rank: 32\nindex_dtype: {index}\ndispatch_dtype: {dispatch}\n"
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The value an expert returns for channel c of (source rank, token, expert): any deterministic
/// function works, as long as the test and the reference agree.
fn expert_value(s: usize, t: usize, e: usize, c: usize) -> u16 {
    let v = ((s * 31 + t * 7 + e * 3 + c) % 29) as f32 * 0.125 - 1.75;
    from_f32(v, ep_codegen::Dtype::Bf16)
}

fn check_dispatch(spec: &Spec, inputs: &[RankInput], got: &[RankDispatch], what: &str) {
    let (r, m) = (spec.ranks as usize, spec.max_tokens_per_rank as usize);
    let payload = spec.hidden as usize * spec.dispatch_dtype.size() as usize;
    let sc = spec.fp8.map_or(0, |_| spec.hidden as usize / 128);
    let want = expected_dispatch(spec, inputs);
    for d in 0..r {
        for (le, expect) in want[d].iter().enumerate() {
            let count = got[d].recv_count[le] as usize;
            assert_eq!(count, expect.len(), "{what}: rank {d} expert {le} count");
            let base = le * r * m;
            // Source groups are contiguous at recv_range.
            for s in 0..r {
                let at = (le * r + s) * 2;
                let (begin, n) = (
                    got[d].recv_range[at] as usize,
                    got[d].recv_range[at + 1] as usize,
                );
                let from_s = expect.iter().filter(|row| row.src_rank == s).count();
                assert_eq!(
                    n, from_s,
                    "{what}: rank {d} expert {le} source {s} range count"
                );
                for i in begin..begin + n {
                    assert_eq!(
                        got[d].recv_src[base + i] as usize / m,
                        s,
                        "{what}: row {i} not from {s}"
                    );
                }
            }
            let mut rows: Vec<usize> = (0..count).collect();
            rows.sort_by_key(|&i| got[d].recv_src[base + i]);
            for (i, row) in rows.into_iter().zip(expect) {
                let src = got[d].recv_src[base + i] as usize;
                assert_eq!(
                    (src / m, src % m),
                    (row.src_rank, row.token),
                    "{what}: rank {d} expert {le}"
                );
                let bytes = &got[d].recv_x[(base + i) * payload..][..payload];
                assert!(
                    bytes == row.payload.as_slice(),
                    "{what}: payload of rank {d} expert {le} from ({}, {})",
                    row.src_rank,
                    row.token
                );
                if sc > 0 {
                    let scales = &got[d].recv_scales[(base + i) * sc..][..sc];
                    let same = scales
                        .iter()
                        .zip(&row.scales)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{what}: scales of rank {d} expert {le}: {scales:?} vs {:?}",
                        row.scales
                    );
                }
            }
        }
    }
}

/// y for every rank, from the dispatch layout, and the reference outputs.
fn expert_outputs(spec: &Spec, got: &[RankDispatch]) -> Vec<Vec<u16>> {
    let (r, l, m, h) = (
        spec.ranks as usize,
        spec.local_experts() as usize,
        spec.max_tokens_per_rank as usize,
        spec.hidden as usize,
    );
    (0..r)
        .map(|d| {
            let mut y = vec![0u16; l * r * m * h];
            for le in 0..l {
                for i in 0..got[d].recv_count[le] as usize {
                    let row = le * r * m + i;
                    let src = got[d].recv_src[row] as usize;
                    for c in 0..h {
                        y[row * h + c] = expert_value(src / m, src % m, d * l + le, c);
                    }
                }
            }
            y
        })
        .collect()
}

#[test]
fn ll_dispatch_and_combine_match_the_reference() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("ll_dispatch_and_combine_match_the_reference")
    else {
        return;
    };
    let routings: usize = std::env::var("EPC_LL_ROUTINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for &(r, h, k, e, dispatch, index) in CASES {
        let spec = spec(r, h, k, e, dispatch, index);
        let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
        let m = spec.max_tokens_per_rank as usize;
        for i in 0..routings {
            let pattern = Pattern::ALL[i % Pattern::ALL.len()];
            let inputs: Vec<RankInput> = (0..r as usize)
                .map(|rank| {
                    // T = 0, T = M and sizes between, varying by rank.
                    let t = match (i + rank) % 4 {
                        0 => m,
                        1 => 0,
                        _ => (i * 13 + rank * 7) % (m + 1),
                    };
                    let seed = (i * 100 + rank) as u64;
                    RankInput {
                        routing: generate(pattern, t, k as usize, e as usize, r as usize, seed),
                        x: random_activations(&spec, t, seed),
                    }
                })
                .collect();
            let what = format!("{} routing {i} ({pattern:?})", spec.name);
            ll.set_inputs(&inputs).unwrap();
            ll.dispatch_send().unwrap();
            ll.dispatch_recv().unwrap();
            let got = ll.dispatched().unwrap_or_else(|e| panic!("{what}: {e}"));
            check_dispatch(&spec, &inputs, &got, &what);

            let y = expert_outputs(&spec, &got);
            ll.set_expert_outputs(&y).unwrap();
            ll.combine_send().unwrap();
            ll.combine_recv().unwrap();
            let out = ll.combined().unwrap_or_else(|e| panic!("{what}: {e}"));
            for (s, input) in inputs.iter().enumerate() {
                let rows: Vec<Vec<Vec<u16>>> = (0..input.routing.num_tokens)
                    .map(|t| {
                        (0..k as usize)
                            .map(|slot| {
                                let ex = input.routing.expert(t, slot).max(0) as usize;
                                (0..h as usize).map(|c| expert_value(s, t, ex, c)).collect()
                            })
                            .collect()
                    })
                    .collect();
                let want = combine(&spec, &input.routing, |t, slot| &rows[t][slot]);
                if out[s] != want {
                    let first = out[s]
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    panic!(
                        "{what}: combine of rank {s} differs first at token {} channel {}: {:#06x} vs {:#06x}",
                        first / h as usize,
                        first % h as usize,
                        out[s][first],
                        want[first]
                    );
                }
            }
        }
        eprintln!("{}: {routings} routings match", spec.name);
    }
}

#[test]
fn a_receive_without_its_senders_times_out_with_an_error() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("a_receive_without_its_senders_times_out_with_an_error")
    else {
        return;
    };
    let spec = spec(4, 2048, 2, 8, "bf16", "i64");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    ll.set_timeout(Duration::from_millis(20));
    let inputs: Vec<RankInput> = (0..4)
        .map(|rank| RankInput {
            routing: generate(Pattern::Uniform, 8, 2, 8, 4, rank),
            x: random_activations(&spec, 8, rank),
        })
        .collect();
    ll.set_inputs(&inputs).unwrap();
    assert!(
        matches!(ll.dispatch_recv(), Err(Error::Input(_))),
        "receive before any send"
    );
    ll.dispatch_send().unwrap();
    ll.dispatch_recv().unwrap();
    ll.dispatched().unwrap();
    // No combine send: every rank's receive waits for flags that never come.
    ll.combine_recv().unwrap();
    match ll.combined() {
        Err(Error::Timeout { phase, .. }) => assert_eq!(phase, "combine receive"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The group is usable again afterwards.
    ll.dispatch_send().unwrap();
    ll.dispatch_recv().unwrap();
    ll.dispatched().unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("bad_inputs_are_errors") else {
        return;
    };
    let spec = spec(2, 2048, 2, 8, "bf16", "i64");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let good = |t: usize, seed: u64| RankInput {
        routing: generate(Pattern::Uniform, t, 2, 8, 2, seed),
        x: random_activations(&spec, t, seed),
    };
    assert!(
        matches!(ll.set_inputs(&[good(4, 1)]), Err(Error::Input(_))),
        "one rank missing"
    );
    assert!(
        matches!(
            ll.set_inputs(&[good(4, 1), good(33, 2)]),
            Err(Error::Input(_))
        ),
        "T > M"
    );
    let mut short = good(4, 3);
    short.x.pop();
    assert!(
        matches!(ll.set_inputs(&[good(4, 1), short]), Err(Error::Input(_))),
        "short x"
    );
    let mut bad = good(6, 4);
    bad.routing.topk_idx[5] = 8;
    ll.set_inputs(&[good(4, 1), bad]).unwrap();
    ll.dispatch_send().unwrap();
    ll.dispatch_recv().unwrap();
    match ll.dispatched() {
        Err(Error::OnRank { rank: 1, source }) => match *source {
            Error::BadExpertId {
                token,
                slot,
                value,
                count,
                ..
            } => {
                assert_eq!((token, slot, value, count), (2, 1, 8, 1));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("expected a bad expert id on rank 1, got {other:?}"),
    }
}
