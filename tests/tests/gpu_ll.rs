//! Low-latency dispatch and combine on virtual ranks against the CPU reference.

use std::time::Duration;

use ep_codegen::Spec;
use ep_runtime::check::ll::{self as ll_check, expert_outputs};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Error, HostCall, LowLatency, RankDispatch};
use ep_tests::{gpu_jit_or_skip, renderer};

/// (ranks, hidden, top_k, experts, dispatch, index) combinations covering every value the issue
/// names: R in {1, 2, 4, 8}, H in {2048, 2880, 4096, 7168}, K in {1, 2, 4, 6, 8}; K = 10,
/// more slots than one of the combine's batches holds (8); and FP8 with H = 2176, whose last
/// 256-channel chunk has one 128-channel scale block (an odd count of scales per row).
const CASES: &[(u32, u32, u32, u32, &str, &str)] = &[
    (8, 7168, 8, 64, "fp8_e4m3\nfp8: {scale: f32}", "i64"),
    (8, 7168, 8, 64, "bf16", "i32"),
    (4, 4096, 6, 32, "fp8_e4m3\nfp8: {scale: ue8m0}", "i64"),
    (2, 2880, 4, 16, "bf16", "i64"),
    (1, 2048, 2, 8, "fp8_e4m3", "i32"),
    (8, 2048, 1, 16, "bf16", "i64"),
    (4, 2880, 8, 128, "bf16", "i32"),
    (4, 2048, 10, 64, "bf16", "i64"),
    (2, 2176, 3, 8, "fp8_e4m3", "i32"),
];

fn spec(r: u32, h: u32, k: u32, e: u32, dispatch: &str, index: &str) -> Spec {
    spec_with_tokens(r, h, k, e, dispatch, index, 32)
}

fn spec_with_tokens(r: u32, h: u32, k: u32, e: u32, dispatch: &str, index: &str, m: u32) -> Spec {
    let yaml = format!(
        "name: ll-r{r}-h{h}-k{k}-m{m}\nmode: low_latency\nhidden: {h}\nexperts: {e}\ntop_k: {k}\n\
         ranks: {r}\nmax_tokens_per_rank: {m}\nindex_dtype: {index}\ndispatch_dtype: {dispatch}\n"
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn check_dispatch(spec: &Spec, inputs: &[RankInput], got: &[RankDispatch], what: &str) {
    ll_check::check_dispatch(spec, inputs, got).unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn check_combine(spec: &Spec, inputs: &[RankInput], out: &[Vec<u16>], what: &str) {
    ll_check::check_combine(spec, inputs, out).unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// Random inputs of every rank for routing `i`: sizes T = 0, T = M and between, by rank.
/// Tokens of each rank in routing `i`: M, 0 or in between.
fn tokens_for(spec: &Spec, i: usize) -> Vec<usize> {
    let ep_codegen::Dims {
        ranks: r,
        tokens: m,
        ..
    } = spec.dims();
    (0..r)
        .map(|rank| match (i + rank) % 4 {
            0 => m,
            1 => 0,
            _ => (i * 13 + rank * 7) % (m + 1),
        })
        .collect()
}

fn inputs_for(spec: &Spec, i: usize) -> Vec<RankInput> {
    inputs_with_tokens(spec, i, &tokens_for(spec, i))
}

/// Routing `i` with the given tokens per rank.
fn inputs_with_tokens(spec: &Spec, i: usize, tokens: &[usize]) -> Vec<RankInput> {
    let ep_codegen::Dims {
        ranks: r,
        top_k: k,
        experts: e,
        ..
    } = spec.dims();
    let pattern = Pattern::ALL[i % Pattern::ALL.len()];
    (0..r)
        .map(|rank| {
            let t = tokens[rank];
            let seed = (i * 100 + rank) as u64;
            RankInput {
                routing: generate(pattern, t, k, e, r, seed),
                x: random_activations(spec, t, seed),
            }
        })
        .collect()
}

/// How a call's phases are launched.
#[derive(Clone, Copy, PartialEq)]
enum Launches {
    /// Each phase in one launch (`LowLatency::dispatch`, `combine`).
    OnePerPhase,
    /// The hook's separate send and receive launches.
    Hook,
}

/// One whole call through `ll`, each phase in one launch, checked against the reference.
fn run_and_check(
    ll: &mut LowLatency,
    call: &mut HostCall,
    spec: &Spec,
    inputs: &[RankInput],
    what: &str,
) {
    run_and_check_as(ll, call, spec, inputs, what, Launches::OnePerPhase);
}

/// One whole call through `ll`, launched as `launches` says, checked against the reference.
fn run_and_check_as(
    ll: &mut LowLatency,
    call: &mut HostCall,
    spec: &Spec,
    inputs: &[RankInput],
    what: &str,
    launches: Launches,
) {
    call.set_inputs(ll.gpu(), inputs).unwrap();
    if launches == Launches::Hook {
        ll.dispatch_send(call).unwrap();
        ll.dispatch_recv(call).unwrap();
    } else {
        ll.dispatch(call).unwrap();
    }
    let got = ll
        .dispatched(call)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_dispatch(spec, inputs, &got, what);
    ll.set_expert_outputs(call, &expert_outputs(spec, &got))
        .unwrap();
    if launches == Launches::Hook {
        ll.combine_send(call).unwrap();
        ll.combine_recv(call).unwrap();
    } else {
        ll.combine(call).unwrap();
    }
    let out = ll.combined(call).unwrap_or_else(|e| panic!("{what}: {e}"));
    check_combine(spec, inputs, &out, what);
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
        .unwrap_or(200);
    for &(r, h, k, e, dispatch, index) in CASES {
        let spec = spec(r, h, k, e, dispatch, index);
        let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
        let mut call = ll.new_call().unwrap();
        for i in 0..routings {
            let inputs = inputs_for(&spec, i);
            let what = format!("{} routing {i}", spec.name());
            // Odd routings with the hook's launches, even ones a launch per phase.
            let launches = [Launches::OnePerPhase, Launches::Hook][i % 2];
            run_and_check_as(&mut ll, &mut call, &spec, &inputs, &what, launches);
        }
        eprintln!("{}: {routings} routings match", spec.name());
    }
}

#[test]
fn every_way_of_sending_matches_the_reference() {
    let test = "every_way_of_sending_matches_the_reference";
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip(test) else {
        return;
    };
    // A rank's send picks its way by its selections (T x K): the owner blocks copy a few, the
    // reserving threads hand out up to one per thread of a block (unless an expert has more
    // than a few: the hot routing, 33 tokens), and beyond that a pass over the selections does.
    // With K = 8 and 512 threads the last starts above 64 tokens.
    let sizes: [[usize; 4]; 4] = [
        [128, 65, 64, 1],
        [33, 64, 2, 100],
        [64, 0, 127, 33],
        [65, 3, 0, 128],
    ];
    for dispatch in ["fp8_e4m3", "bf16"] {
        let spec = spec_with_tokens(4, 2048, 8, 64, dispatch, "i64", 128);
        let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
        let mut call = ll.new_call().unwrap();
        for (i, tokens) in sizes.iter().enumerate() {
            let inputs = inputs_with_tokens(&spec, i, tokens);
            let what = format!("{} tokens {tokens:?}", spec.name());
            let launches = [Launches::OnePerPhase, Launches::Hook][i % 2];
            run_and_check_as(&mut ll, &mut call, &spec, &inputs, &what, launches);
        }
    }
    eprintln!("{test}: 8 calls match");
}

#[test]
fn more_ranks_than_one_launch_holds_take_two_launches_per_phase() {
    let test = "more_ranks_than_one_launch_holds_take_two_launches_per_phase";
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip(test) else {
        return;
    };
    // 128 virtual ranks: two launches of 64 per step, so a phase cannot wait inside one
    // launch for every rank and runs as send, then receive.
    let spec = spec(128, 256, 2, 128, "bf16", "i64");
    if gpu.sms() < ep_codegen::kernels::ll::MAX_LAUNCH_RANKS {
        eprintln!("SKIP {test}: fewer SMs than ranks in one launch");
        return;
    }
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let mut call = ll.new_call().unwrap();
    for i in 0..4 {
        let inputs = inputs_for(&spec, i);
        run_and_check(&mut ll, &mut call, &spec, &inputs, &format!("routing {i}"));
    }
    eprintln!("{test}: 4 routings on 128 ranks match");
}

#[test]
fn two_calls_in_flight_interleave() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("two_calls_in_flight_interleave") else {
        return;
    };
    let spec = spec(4, 4096, 6, 32, "fp8_e4m3", "i64");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let (mut a, mut b) = (ll.new_call().unwrap(), ll.new_call().unwrap());
    for round in 0..4 {
        let (ia, ib) = (
            inputs_for(&spec, 2 * round),
            inputs_for(&spec, 2 * round + 1),
        );
        let what = [
            format!("round {round} call A"),
            format!("round {round} call B"),
        ];
        two_in_flight(&mut ll, [&mut a, &mut b], &spec, [&ia, &ib], &what);
    }
}

/// Calls `a` and `b` in flight together: both sends before either receive (the hook), the
/// receives in order, both combine sends, the receives in reverse; each checked.
fn two_in_flight(
    ll: &mut LowLatency,
    [a, b]: [&mut HostCall; 2],
    spec: &Spec,
    [ia, ib]: [&[RankInput]; 2],
    what: &[String; 2],
) {
    let gpu = ll.gpu().clone();
    a.set_inputs(&gpu, ia).unwrap();
    b.set_inputs(&gpu, ib).unwrap();
    ll.dispatch_send(a).unwrap();
    ll.dispatch_send(b).unwrap();
    ll.dispatch_recv(a).unwrap();
    ll.dispatch_recv(b).unwrap();
    let (ga, gb) = (ll.dispatched(a).unwrap(), ll.dispatched(b).unwrap());
    check_dispatch(spec, ia, &ga, &what[0]);
    check_dispatch(spec, ib, &gb, &what[1]);
    ll.set_expert_outputs(a, &expert_outputs(spec, &ga))
        .unwrap();
    ll.set_expert_outputs(b, &expert_outputs(spec, &gb))
        .unwrap();
    ll.combine_send(a).unwrap();
    ll.combine_send(b).unwrap();
    ll.combine_recv(b).unwrap();
    ll.combine_recv(a).unwrap();
    check_combine(spec, ia, &ll.combined(a).unwrap(), &what[0]);
    check_combine(spec, ib, &ll.combined(b).unwrap(), &what[1]);
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
    let mut call = ll.new_call().unwrap();
    let inputs = inputs_for(&spec, 3);
    call.set_inputs(&gpu, &inputs).unwrap();
    assert!(
        matches!(ll.dispatch_recv(&mut call), Err(Error::Input(_))),
        "receive before any send"
    );
    ll.dispatch_send(&mut call).unwrap();
    ll.dispatch_recv(&mut call).unwrap();
    ll.dispatched(&call).unwrap();
    // No combine send: every rank's receive waits for flags that never come.
    ll.combine_recv(&mut call).unwrap();
    match ll.combined(&call) {
        Err(Error::Timeout { phase, .. }) => assert_eq!(phase, "combine receive"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The group is usable again afterwards.
    run_and_check(&mut ll, &mut call, &spec, &inputs, "after a timeout");
}

/// `epc bench`'s timings queue their calls with the host ahead of the GPU (behind a gate the
/// host opens once they are queued): more calls than one hold takes, every way the bench times
/// them, and the group still gives the reference's results afterwards.
#[test]
fn the_benchmark_s_timings_queue_calls_ahead_and_leave_the_results_right() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("the_benchmark_s_timings_queue_calls_ahead_and_leave_the_results_right")
    else {
        return;
    };
    let spec = spec(4, 2048, 2, 8, "bf16", "i64");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let mut call = ll.new_call().unwrap();
    let inputs = inputs_for(&spec, 3);
    call.set_inputs(&gpu, &inputs).unwrap();
    let calls = ll.time_calls(&mut call, 2, 70).unwrap();
    let phases = ll.time_phases(&mut call, 2, 70).unwrap();
    for (what, us) in [
        ("a call, host ahead", calls.gpu_us),
        ("a call, host-paced", calls.paced.gpu_us),
        ("issuing a call", calls.paced.host_us),
        ("dispatch", phases.dispatch),
        ("combine", phases.combine),
        ("hook dispatch", phases.hook_dispatch()),
        ("hook combine", phases.hook_combine()),
    ] {
        assert!(us.is_finite() && us > 0.0, "{what}: {us} us");
    }
    run_and_check(&mut ll, &mut call, &spec, &inputs, "after the timings");
}

#[test]
fn bad_inputs_are_errors() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("bad_inputs_are_errors") else {
        return;
    };
    let spec = spec(2, 2048, 2, 8, "bf16", "i64");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let mut call = ll.new_call().unwrap();
    let good = |t: usize, seed: u64| RankInput {
        routing: generate(Pattern::Uniform, t, 2, 8, 2, seed),
        x: random_activations(&spec, t, seed),
    };
    let mut set = |inputs: &[RankInput]| call.set_inputs(&gpu, inputs);
    assert!(
        matches!(set(&[good(4, 1)]), Err(Error::Input(_))),
        "one rank missing"
    );
    assert!(
        matches!(set(&[good(4, 1), good(33, 2)]), Err(Error::Input(_))),
        "T > M"
    );
    let mut short = good(4, 3);
    short.x.pop();
    assert!(
        matches!(set(&[good(4, 1), short]), Err(Error::Input(_))),
        "short x"
    );
    let mut bad = good(6, 4);
    bad.routing.topk_idx[5] = 8;
    let inputs = [good(4, 1), bad];
    set(&inputs).unwrap();
    ll.dispatch_send(&mut call).unwrap();
    ll.dispatch_recv(&mut call).unwrap();
    match ll.dispatched(&call) {
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
    // The bad slot is skipped; everything else is delivered and combined.
    let mut fixed = inputs.clone();
    fixed[1].routing.topk_idx[5] = -1;
    let got = ll.dispatched(&call).unwrap();
    check_dispatch(&spec, &fixed, &got, "bad id skipped");
    ll.set_expert_outputs(&call, &expert_outputs(&spec, &got))
        .unwrap();
    ll.combine_send(&call).unwrap();
    ll.combine_recv(&mut call).unwrap();
    check_combine(
        &spec,
        &fixed,
        &ll.combined(&call).unwrap(),
        "bad id skipped",
    );
}

#[test]
fn a_captured_call_replays_100_times_with_new_routings() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("a_captured_call_replays_100_times_with_new_routings")
    else {
        return;
    };
    let spec = spec(4, 2048, 4, 16, "fp8_e4m3", "i32");
    let mut ll = LowLatency::new(&gpu, &jit, &renderer(), &spec).unwrap();
    let mut call = ll.new_call().unwrap();
    // A graph keeps the token counts it was captured with; routings and values change.
    let tokens = tokens_for(&spec, 2);
    call.set_inputs(&gpu, &inputs_with_tokens(&spec, 0, &tokens))
        .unwrap();
    let graphs = ll.capture(&mut call).unwrap();
    for replay in 0..100 {
        let inputs = inputs_with_tokens(&spec, 1000 + replay, &tokens);
        let what = format!("replay {replay}");
        // New routings and tokens in the same input buffers; no launch from the host.
        call.set_inputs(&gpu, &inputs).unwrap();
        graphs.dispatch().unwrap();
        let got = ll
            .dispatched(&call)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        check_dispatch(&spec, &inputs, &got, &what);
        ll.set_expert_outputs(&call, &expert_outputs(&spec, &got))
            .unwrap();
        graphs.combine().unwrap();
        let out = ll.combined(&call).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_combine(&spec, &inputs, &out, &what);
    }
}

/// A group with kernels per token-count bucket (as `epc tune` stores them): calls of up to 8
/// tokens per rank run one variant, up to 16 another, the rest the main kernels; every call
/// matches the reference, also with two calls of different buckets in flight.
#[test]
fn token_buckets_run_their_own_kernels_and_match_the_reference() {
    let test = "token_buckets_run_their_own_kernels_and_match_the_reference";
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip(test) else {
        return;
    };
    let spec = spec(8, 2048, 8, 64, "fp8_e4m3", "i64");
    let variant = |warps: u32, sms: u32| {
        spec.with_tuning(ep_codegen::Tuning {
            warps_per_block: Some(warps),
            sms: Some(sms.min(gpu.sms())),
            ..spec.tuning()
        })
        .unwrap()
    };
    let mut group =
        ep_runtime::LlGroup::virtual_ranks(&gpu, &jit, &spec, &renderer().render(&spec).unwrap())
            .unwrap();
    for (end, s) in [(16, variant(32, 64)), (8, variant(4, 16))] {
        group
            .add_bucket(&jit, end, &s, &renderer().render(&s).unwrap())
            .unwrap();
    }
    let ends: Vec<usize> = group.buckets().iter().map(|b| b.0).collect();
    assert_eq!(ends, [8, 16, 32]);
    // A bucket must end below M, and hold the group's spec with other knobs.
    assert!(
        group
            .add_bucket(&jit, 32, &spec, &renderer().render(&spec).unwrap())
            .is_err()
    );
    let other = spec_with_other_hidden();
    let err = group
        .add_bucket(&jit, 4, &other, &renderer().render(&other).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("more than its tuning"), "{err}");
    let mut ll = LowLatency::from_group(group);
    let mut call = ll.new_call().unwrap();
    for (i, most) in [1, 8, 9, 16, 17, 32, 0, 5].into_iter().enumerate() {
        let tokens: Vec<usize> = (0..8).map(|r| (most + r * 3) % (most + 1)).collect();
        let inputs = inputs_with_tokens(&spec, i, &tokens);
        run_and_check(
            &mut ll,
            &mut call,
            &spec,
            &inputs,
            &format!("at most {most} tokens"),
        );
    }
    // Two calls in flight, one small and one large.
    let (mut a, mut b) = (ll.new_call().unwrap(), ll.new_call().unwrap());
    let (ia, ib) = (
        inputs_with_tokens(&spec, 50, &[4; 8]),
        inputs_with_tokens(&spec, 51, &[32; 8]),
    );
    let what = [
        "small call in flight".to_owned(),
        "large call in flight".to_owned(),
    ];
    two_in_flight(&mut ll, [&mut a, &mut b], &spec, [&ia, &ib], &what);
    eprintln!("{test}: buckets 1-8, 9-16 and 17-32 match the reference");
}

/// The bucket test's spec with another hidden size.
fn spec_with_other_hidden() -> Spec {
    spec(8, 4096, 8, 64, "fp8_e4m3", "i64")
}
