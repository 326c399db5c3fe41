//! LL and HT over the `nccl` transport: NCCL symmetric windows, LSA peer pointers from NCCL's
//! device API, the same kernels as on virtual ranks. One GPU runs a 1-rank communicator; the 2, 4
//! and 8-GPU tests (one process for all GPUs, and one process per GPU) skip with a printed reason
//! where fewer GPUs exist.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ep_codegen::Spec;
use ep_runtime::check::ht::{self, Expected};
use ep_runtime::check::ll::{check_combine_of, check_dispatch_of, expert_outputs_of};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::reference::values;
use ep_runtime::routing::{Pattern, SplitMix64, generate};
use ep_runtime::transport::{NcclComm, NcclLibrary, NcclUniqueId};
use ep_runtime::{Gpu, HtGroup, LlGroup, LowLatency};
use ep_tests::{fresh_jit, gpu_jit_or_skip, nvrtc_or_skip, renderer};

const ROUNDS: usize = 12;
const HT_ROUNDS: usize = 6;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn required() -> bool {
    std::env::var("EPC_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// NCCL, or `None` after printing why the test is skipped (a failure under EPC_REQUIRE_GPU=1).
fn nccl_or_skip(test: &str) -> Option<&'static NcclLibrary> {
    match NcclLibrary::load() {
        Ok(lib) => {
            say(&format!("{test}: {lib}"));
            Some(lib)
        }
        Err(e) if !required() => {
            say(&format!("SKIP {test}: {e}"));
            None
        }
        Err(e) => panic!("{test}: EPC_REQUIRE_GPU=1 but {e}"),
    }
}

/// NCCL that gives a 1-rank communicator symmetric memory, or `None` after printing why the
/// test is skipped.
fn one_rank_nccl_or_skip(test: &str) -> Option<&'static NcclLibrary> {
    let lib = nccl_or_skip(test)?;
    let v = lib.version;
    if (v.major, v.minor, v.patch) < (2, 28, 9) {
        // NCCL 2.28.0 to 2.28.8 give a communicator of one rank no symmetric memory (the
        // window setup says so; 2.28.9 lifted it): a limit of that NCCL, not a failure here.
        say(&format!(
            "SKIP {test}: NCCL {v} has no symmetric memory for a 1-rank communicator; \
             set EPC_NCCL to NCCL >= 2.28.9 (the nvidia-nccl-cu13 wheel or PyTorch's copy)"
        ));
        return None;
    }
    Some(lib)
}

/// `n` GPUs, or `None` after printing why the test is skipped.
fn gpus_or_skip(test: &str, n: usize) -> Option<Vec<Gpu>> {
    let have = Gpu::count();
    if have < n {
        say(&format!("SKIP {test}: needs {n} GPUs, {have} present"));
        return None;
    }
    say(&format!("GPU {test}: on {n} GPUs"));
    Some(
        (0..n)
            .map(|i| Gpu::open(i).expect("a GPU the driver lists"))
            .collect(),
    )
}

fn spec(ranks: u32, extra: &str) -> Spec {
    let yaml = format!(
        "name: nccl-r{ranks}\nmode: low_latency\nhidden: 7168\nexperts: {}\ntop_k: 8\n\
         ranks: {ranks}\nmax_tokens_per_rank: 32\n{extra}",
        16 * ranks
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// Every rank's inputs of round `round` (the same in every process).
fn inputs(spec: &Spec, round: usize) -> Vec<RankInput> {
    let d = spec.dims();
    (0..d.ranks)
        .map(|rank| {
            let t = [d.tokens, 0, 1, (round * 7 + rank * 5) % (d.tokens + 1)][(round + rank) % 4];
            let seed = (round * 1000 + rank) as u64;
            let pattern = Pattern::ALL[(round + rank) % Pattern::ALL.len()];
            RankInput {
                routing: generate(pattern, t, d.top_k, d.experts, d.ranks, seed),
                x: random_activations(spec, t, seed),
            }
        })
        .collect()
}

/// Gives `group` kernels of its own (4 warps per block, a quarter of the GPU) for calls of up to
/// 8 tokens per rank, as a tuned bucket would: ranks of one round then run different kernels
/// (their token counts differ), which must work together.
fn add_small_bucket(group: &mut LlGroup, jit: &ep_runtime::Jit, spec: &Spec) {
    let small = spec
        .with_tuning(ep_codegen::Tuning {
            warps_per_block: Some(4),
            sms: Some((group.gpu().sms() / 4).max(1)),
            ..spec.tuning()
        })
        .unwrap();
    group
        .add_bucket(jit, 8, &small, &renderer().render(&small).unwrap())
        .unwrap();
}

/// Runs `ROUNDS` calls over the given groups (each driven by this process, on its own GPU) and
/// checks every rank's dispatch and combine against the reference.
/// Rounds of calls over every group (GPU) of this process: even rounds run each phase in one
/// launch (which waits inside for the other GPUs' ranks), odd ones with the hook's two.
fn run_rounds(spec: &Spec, lls: &mut [LowLatency], what: &str) {
    let mut calls: Vec<_> = lls.iter_mut().map(|ll| ll.new_call().unwrap()).collect();
    for round in 0..ROUNDS {
        let hook = round % 2 == 1;
        let all = inputs(spec, round);
        let ranks: Vec<Vec<usize>> = lls.iter_mut().map(|ll| ll.group().ranks()).collect();
        for ((ll, call), mine) in lls.iter_mut().zip(&mut calls).zip(&ranks) {
            let local: Vec<RankInput> = mine.iter().map(|&r| all[r].clone()).collect();
            call.set_inputs(&ll.gpu().clone(), &local).unwrap();
            if hook {
                ll.dispatch_send(call).unwrap();
            } else {
                ll.dispatch(call).unwrap();
            }
        }
        for (ll, call) in lls.iter_mut().zip(&mut calls) {
            if hook {
                ll.dispatch_recv(call).unwrap();
            }
        }
        for ((ll, call), mine) in lls.iter_mut().zip(&calls).zip(&ranks) {
            let got = ll
                .dispatched(call)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
            check_dispatch_of(spec, &all, mine, &got)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
            ll.set_expert_outputs(call, &expert_outputs_of(spec, mine, &got))
                .unwrap();
        }
        for (ll, call) in lls.iter_mut().zip(&mut calls) {
            if hook {
                ll.combine_send(call).unwrap();
            } else {
                ll.combine(call).unwrap();
            }
        }
        for (ll, call) in lls.iter_mut().zip(&mut calls) {
            if hook {
                ll.combine_recv(call).unwrap();
            }
        }
        for ((ll, call), mine) in lls.iter_mut().zip(&calls).zip(&ranks) {
            let out = ll
                .combined(call)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
            check_combine_of(spec, &all, mine, &out)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
        }
    }
    say(&format!("{what}: {ROUNDS} rounds match the reference"));
}

/// A high-throughput spec of `ranks` ranks, all in one NVLink domain.
/// The high-throughput specs every NCCL test runs: flat with BF16 payloads, expert-major with
/// FP8 payloads, and (two ranks or more) flat FP8 through the hierarchical path.
fn ht_specs(ranks: u32) -> Vec<Spec> {
    let base = format!(
        "mode: high_throughput\nhidden: 2048\nexperts: {}\ntop_k: 8\nranks: {ranks}\n\
         nvlink_domain: {ranks}\nmax_tokens_per_rank: 1024\n",
        16 * ranks
    );
    let flat = format!(
        "name: nccl-ht-r{ranks}\n{base}max_recv_tokens_per_rank: {}\n",
        1024 * ranks
    );
    let major = format!(
        "name: nccl-ht-major-r{ranks}\n{base}max_recv_tokens_per_rank: {}\n\
         layout: expert_major\nexpert_alignment: 32\ndispatch_dtype: fp8_e4m3\n\
         fp8:\n  block: 128\n  scale: ue8m0\n",
        1024 * ranks * 8 + 16 * 31
    );
    let mut specs = vec![flat, major];
    if ranks >= 2 {
        // The hierarchical path: domains of half the ranks, staged through the windows.
        specs.push(format!(
            "name: nccl-ht-domains-r{ranks}\n{}max_recv_tokens_per_rank: {}\n\
             dispatch_dtype: fp8_e4m3\nfp8:\n  block: 128\n  scale: f32\n",
            base.replace(
                &format!("nvlink_domain: {ranks}\n"),
                &format!("nvlink_domain: {}\n", ranks / 2)
            ),
            1024 * ranks
        ));
    }
    specs
        .iter()
        .map(|yaml| Spec::from_yaml(yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}")))
        .collect()
}

/// What rank `rank` returns for each of its `rows` rows in round `round` (every process can
/// make every rank's).
fn ht_rows(spec: &Spec, round: usize, rank: usize, rows: usize) -> Vec<u16> {
    let mut rng = SplitMix64::new((round * 7919 + rank) as u64 ^ 0xc0b1);
    (0..rows * spec.hidden() as usize)
        .map(|_| values::from_f32(rng.next_f64() as f32 * 4.0 - 2.0, spec.dtype()))
        .collect()
}

/// Runs `HT_ROUNDS` high-throughput calls over the given groups (each on its own GPU, driven by
/// this process): every group's phase is started before any is finished, and every local
/// rank's dispatch and combine is checked against the reference.
fn run_ht_rounds(spec: &Spec, groups: &mut [HtGroup], what: &str) {
    let d = spec.dims();
    for round in 0..HT_ROUNDS {
        let all = inputs(spec, round);
        let want = Expected::of(spec, &all).unwrap();
        let ranks: Vec<Vec<usize>> = groups.iter().map(HtGroup::ranks).collect();
        for (g, mine) in groups.iter_mut().zip(&ranks) {
            let local: Vec<RankInput> = mine.iter().map(|&r| all[r].clone()).collect();
            g.start_dispatch(&local).unwrap();
        }
        for (g, mine) in groups.iter_mut().zip(&ranks) {
            let got = g
                .finish_dispatch()
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
            ht::check_dispatch_of(spec, &all, &want, mine, &got)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
        }
        let y: Vec<Vec<u16>> = (0..d.ranks)
            .map(|r| ht_rows(spec, round, r, want.rows(r)))
            .collect();
        for (g, mine) in groups.iter_mut().zip(&ranks) {
            let local: Vec<Vec<u16>> = mine.iter().map(|&r| y[r].clone()).collect();
            g.start_combine(&local).unwrap();
        }
        for (g, mine) in groups.iter_mut().zip(&ranks) {
            let out = g
                .finish_combine()
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
            ht::check_combine_of(spec, &all, &want, &y, mine, &out)
                .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
        }
    }
    say(&format!(
        "{what}: {HT_ROUNDS} high-throughput rounds match the reference"
    ));
}

#[test]
fn one_rank_communicator_matches_the_reference_and_replays_graphs() {
    let test = "one_rank_communicator_matches_the_reference_and_replays_graphs";
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip(test) else {
        return;
    };
    if one_rank_nccl_or_skip(test).is_none() {
        return;
    }
    for (spec, borrowed) in [
        (spec(1, "dispatch_dtype: fp8_e4m3\n"), false),
        (spec(1, "index_dtype: i32\n"), true),
    ] {
        let kernels = renderer().render(&spec).unwrap();
        let owned = NcclComm::init_rank(&gpu, &NcclComm::unique_id().unwrap(), 0, 1).unwrap();
        // The second spec runs on a caller's own ncclComm_t, which epc only borrows.
        let comm = if borrowed {
            // SAFETY: `owned` is a live communicator of the loaded libnccl and outlives `comm`
            // and the group's window (both dropped before it, at the end of this iteration).
            unsafe { NcclComm::from_raw(&gpu, owned.raw()) }.unwrap()
        } else {
            owned.clone()
        };
        let group = LlGroup::nccl(&[(&gpu, &comm)], &jit, &spec, &kernels)
            .unwrap()
            .pop()
            .unwrap();
        let mut ll = [LowLatency::from_group(group)];
        run_rounds(&spec, &mut ll, &format!("{} over NCCL", spec.name()));
        // Graph capture and replay with new routings of the same token count.
        let ll = &mut ll[0];
        let mut call = ll.new_call().unwrap();
        let t = spec.max_tokens_per_rank() as usize;
        let with_t = |round: usize| -> Vec<RankInput> {
            let d = spec.dims();
            let seed = 50_000 + round as u64;
            vec![RankInput {
                routing: generate(Pattern::ALL[round % 4], t, d.top_k, d.experts, 1, seed),
                x: random_activations(&spec, t, seed),
            }]
        };
        call.set_inputs(&gpu, &with_t(0)).unwrap();
        let graphs = ll.capture(&mut call).unwrap();
        for replay in 0..50 {
            let inputs = with_t(replay);
            call.set_inputs(&gpu, &inputs).unwrap();
            graphs.dispatch().unwrap();
            let got = ll.dispatched(&call).unwrap();
            check_dispatch_of(&spec, &inputs, &[0], &got)
                .unwrap_or_else(|e| panic!("replay {replay}: {e}"));
            ll.set_expert_outputs(&call, &expert_outputs_of(&spec, &[0], &got))
                .unwrap();
            graphs.combine().unwrap();
            let out = ll.combined(&call).unwrap();
            check_combine_of(&spec, &inputs, &[0], &out)
                .unwrap_or_else(|e| panic!("replay {replay}: {e}"));
        }
        say(&format!(
            "{}: 50 graph replays over NCCL match ({} communicator)",
            spec.name(),
            if borrowed { "a caller's" } else { "epc's own" }
        ));
        drop(graphs);
    }
}

#[test]
fn one_rank_communicator_runs_high_throughput() {
    let test = "one_rank_communicator_runs_high_throughput";
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip(test) else {
        return;
    };
    if one_rank_nccl_or_skip(test).is_none() {
        return;
    }
    let comm = NcclComm::init_rank(&gpu, &NcclComm::unique_id().unwrap(), 0, 1).unwrap();
    for spec in ht_specs(1) {
        let kernels = renderer().render(&spec).unwrap();
        let mut groups = HtGroup::nccl(&[(&gpu, &comm)], &jit, &spec, &kernels).unwrap();
        run_ht_rounds(
            &spec,
            &mut groups,
            &format!("{} over a 1-rank communicator", spec.name()),
        );
        HtGroup::close(groups).unwrap();
    }
}

/// One process drives `n` GPUs with `ncclCommInitAll`.
fn one_process_for_all(n: usize) {
    let test = format!("one_process_drives_{n}_gpus");
    let Some(gpus) = gpus_or_skip(&test, n) else {
        return;
    };
    let Some(nvrtc) = nvrtc_or_skip(&test) else {
        return;
    };
    if nccl_or_skip(&test).is_none() {
        return;
    }
    let (jit, _dir) = fresh_jit(nvrtc);
    let spec = spec(n as u32, "dispatch_dtype: fp8_e4m3\n");
    let kernels = renderer().render(&spec).unwrap();
    let comms = NcclComm::init_all(&gpus).unwrap();
    let members: Vec<(&Gpu, &NcclComm)> = gpus.iter().zip(&comms).collect();
    let mut lls: Vec<LowLatency> = LlGroup::nccl(&members, &jit, &spec, &kernels)
        .unwrap()
        .into_iter()
        .map(|mut g| {
            add_small_bucket(&mut g, &jit, &spec);
            LowLatency::from_group(g)
        })
        .collect();
    run_rounds(&spec, &mut lls, &test);
    // One process closes its GPUs' groups together (each meets the others once more).
    let start = Instant::now();
    LlGroup::close(lls.into_iter().map(LowLatency::into_group).collect())
        .unwrap_or_else(|e| panic!("{test}: closing: {e}"));
    say(&format!("{test}: groups closed in {:?}", start.elapsed()));
    // High-throughput mode on the same communicators.
    for spec in ht_specs(n as u32) {
        let kernels = renderer().render(&spec).unwrap();
        let mut groups = HtGroup::nccl(&members, &jit, &spec, &kernels).unwrap();
        run_ht_rounds(&spec, &mut groups, &format!("{test} ({})", spec.name()));
        HtGroup::close(groups).unwrap_or_else(|e| panic!("{test}: closing HT: {e}"));
    }
}

#[test]
fn one_process_drives_2_gpus() {
    one_process_for_all(2);
}

#[test]
fn one_process_drives_4_gpus() {
    one_process_for_all(4);
}

#[test]
fn one_process_drives_8_gpus() {
    one_process_for_all(8);
}

/// Starts `n` copies of this test executable, each running [`rank_process`] as one rank.
fn one_process_per_gpu(n: usize) {
    let test = format!("one_process_per_gpu_{n}");
    if gpus_or_skip(&test, n).is_none() || nccl_or_skip(&test).is_none() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let id = NcclComm::unique_id().unwrap().to_hex();
    // Each rank writes into a file (a pipe left unread could fill and stall it).
    let logs = tempfile::tempdir().unwrap();
    let log = |rank: usize| logs.path().join(format!("rank{rank}.log"));
    let mut children: Vec<_> = (0..n)
        .map(|rank| {
            let out = std::fs::File::create(log(rank)).unwrap();
            Command::new(&exe)
                .args(["--exact", "rank_process", "--ignored", "--nocapture"])
                .env("EPC_NCCL_TEST_RANK", rank.to_string())
                .env("EPC_NCCL_TEST_RANKS", n.to_string())
                .env("EPC_NCCL_ID", &id)
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .spawn()
                .unwrap()
        })
        .collect();
    // Every rank must end; when one fails the others (waiting for it) are stopped.
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut ended = vec![false; n];
    while ended.contains(&false) {
        for (rank, child) in children.iter_mut().enumerate() {
            if ended[rank] {
                continue;
            }
            if !failed.is_empty() || start.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                let _ = child.wait();
                failed.push(rank);
                ended[rank] = true;
            } else if let Some(status) = child.try_wait().unwrap() {
                if !status.success() {
                    failed.push(rank);
                }
                ended[rank] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for rank in 0..n {
        for line in std::fs::read_to_string(log(rank))
            .unwrap_or_default()
            .lines()
        {
            say(&format!("[rank {rank}] {line}"));
        }
    }
    assert!(failed.is_empty(), "{test}: ranks {failed:?} failed");
}

#[test]
fn one_process_per_gpu_2() {
    one_process_per_gpu(2);
}

#[test]
fn one_process_per_gpu_4() {
    one_process_per_gpu(4);
}

#[test]
fn one_process_per_gpu_8() {
    one_process_per_gpu(8);
}

/// One rank of [`one_process_per_gpu`] (started by it; ignored in a normal run).
#[test]
#[ignore = "started by the one_process_per_gpu tests, one process per rank"]
fn rank_process() {
    let var = |name: &str| -> usize {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is set by the parent test"))
            .parse()
            .unwrap()
    };
    let (rank, ranks) = (var("EPC_NCCL_TEST_RANK"), var("EPC_NCCL_TEST_RANKS"));
    let id = NcclUniqueId::from_hex(&std::env::var("EPC_NCCL_ID").unwrap()).unwrap();
    let gpu = Gpu::open(rank).unwrap();
    let (jit, _dir) = fresh_jit(nvrtc_or_skip("rank_process").unwrap());
    let spec = spec(ranks as u32, "");
    let kernels = renderer().render(&spec).unwrap();
    let comm = NcclComm::init_rank(&gpu, &id, rank, ranks).unwrap();
    let mut group = LlGroup::nccl(&[(&gpu, &comm)], &jit, &spec, &kernels)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(group.ranks(), vec![rank]);
    add_small_bucket(&mut group, &jit, &spec);
    let mut ll = [LowLatency::from_group(group)];
    run_rounds(&spec, &mut ll, &format!("rank {rank} of {ranks}"));
    let [ll] = ll;
    LlGroup::close(vec![ll.into_group()]).unwrap();
    // High-throughput mode on the same communicator.
    for spec in ht_specs(ranks as u32) {
        let kernels = renderer().render(&spec).unwrap();
        let mut groups = HtGroup::nccl(&[(&gpu, &comm)], &jit, &spec, &kernels).unwrap();
        run_ht_rounds(
            &spec,
            &mut groups,
            &format!("rank {rank} of {ranks} ({})", spec.name()),
        );
        HtGroup::close(groups).unwrap();
    }
}
