//! `epc bench`: dispatch and combine of low-latency and high-throughput specs, each timed against
//! yardsticks measured in the same process (DESIGN.md "Benchmarks"):
//! - a device-to-device copy of the phase's unique payload bytes;
//! - the same-traffic copy: copies (and, for a phase that writes more than it reads, a fill)
//!   moving as many HBM bytes as the phase minimally reads and writes, in the same mix of reads
//!   and writes: the honest limit on one GPU;
//!
//! and, per GPU, GB/s counted the ways NCCL EP's `ep_bench` and DeepEP's tests count them (DESIGN.md
//! "How the anchors count bytes"). Over NCCL every rank measures its own GPU; rank 0 gathers the
//! ranks' times and prints. `--routing-out` writes the routings as NumPy files, so that the
//! baselines in `scripts/bench/` move exactly the same tokens.

mod bytes;
mod ht;
mod ll;
mod report;

pub(super) use ll::inputs as ll_inputs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ep_codegen::{Dtype, Mode, Renderer, Spec, find_builtin, join_component};
use ep_runtime::reference::ll::RankInput;
use ep_runtime::{Gpu, Jit, timing};

use self::bytes::Counts;
use self::report::Row;
use crate::cli::BenchArgs;
use crate::inputs::{load_specs, renderer};
use crate::npy;
use crate::transport::{Placement, Ranks, Role};
use crate::words::count;

/// One phase of one workload as this process measured it, before the ranks' figures are joined.
pub struct Measured {
    workload: String,
    mode: Mode,
    tokens: usize,
    phase: &'static str,
    /// Mean time of the phase (all of this process's ranks together), in microseconds.
    time_us: f64,
    /// The phase's two launches: LL send and receive; HT notify and data (dispatch), data alone
    /// (combine).
    parts: (f64, f64),
    /// Bytes of this process's ranks.
    counts: Counts,
    /// Payload bytes of one row.
    row_bytes: u64,
    /// HT dispatch: its row copies alone (the fan-out copy, see `ht::measure`).
    fanout_us: Option<f64>,
    /// LL: the launch floor and the CUDA-graph figures (see `ll::measure`).
    floor: Option<Floor>,
}

/// An LL phase's launch floor and CUDA-graph figures, microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// The phase's launches made with empty kernels on the same grids, back to back on the
    /// stream.
    pub launches_us: f64,
    /// The phase inside one CUDA graph of many calls: a call measured so, split as the
    /// phases' replays split it ([`ep_runtime::ll::GraphTimes::split`]).
    pub graph_us: f64,
    /// The phase's empty launches inside one CUDA graph of many, back to back.
    pub graph_launches_us: f64,
    /// The phase replayed as a CUDA graph of its own, an event before and after.
    pub graph_replay_us: f64,
    /// A whole call (dispatch and combine) inside one CUDA graph of many calls.
    pub graph_call_us: f64,
    /// The phase alone on the stream, an event before and after.
    pub events_us: f64,
    /// A whole call among many issued back to back on the stream, on the GPU with the host
    /// ahead (queued before the GPU starts them).
    pub stream_call_us: f64,
    /// Such a call issued as the host goes, on the GPU.
    pub stream_call_paced_us: f64,
    /// The host's time issuing such a call (where it matches `stream_call_paced_us`, the host set
    /// the pace).
    pub stream_call_host_us: f64,
}

/// What every measurement needs.
pub struct Bench<'a> {
    gpu: &'a Gpu,
    jit: &'a Jit,
    renderer: &'a Renderer,
    ranks: &'a Ranks,
    args: &'a BenchArgs,
}

impl Bench<'_> {
    /// Writes every rank's routing of one measurement under `--routing-out` (rank 0 only).
    fn dump_routings(&self, spec: &Spec, tokens: usize, inputs: &[RankInput]) -> Result<()> {
        let (Some(dir), true) = (&self.args.routing_out, self.ranks.lead()) else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (rank, input) in inputs.iter().enumerate() {
            let r = &input.routing;
            let stem = format!("{}.T{tokens}.rank{rank}", spec.name());
            let path = |what: &str| -> Result<PathBuf> {
                Ok(join_component(
                    dir,
                    &format!("{stem}.{what}.npy"),
                    "routing file name",
                )?)
            };
            npy::write(
                &path("topk_idx")?,
                &[r.num_tokens, r.top_k],
                npy::Data::I64(&r.topk_idx),
            )?;
            npy::write(
                &path("topk_weights")?,
                &[r.num_tokens, r.top_k],
                npy::Data::F32(&r.topk_weights),
            )?;
        }
        Ok(())
    }

    /// Joins this process's measurement with every rank's (collective over NCCL) and times the
    /// yardsticks on this GPU.
    fn row(&self, spec: &Spec, m: Measured) -> Result<Row> {
        let ranks = self.ranks.gather(
            self.gpu,
            &[
                m.time_us,
                m.counts.deepep as f64,
                m.fanout_us.unwrap_or(f64::NAN),
                m.floor.map_or(f64::NAN, |f| f.launches_us),
                m.floor.map_or(f64::NAN, |f| f.graph_us),
                m.floor.map_or(f64::NAN, |f| f.graph_launches_us),
                m.floor.map_or(f64::NAN, |f| f.graph_replay_us),
                m.floor.map_or(f64::NAN, |f| f.graph_call_us),
                m.floor.map_or(f64::NAN, |f| f.events_us),
                m.floor.map_or(f64::NAN, |f| f.stream_call_us),
                m.floor.map_or(f64::NAN, |f| f.stream_call_host_us),
                m.floor.map_or(f64::NAN, |f| f.stream_call_paced_us),
            ],
        )?;
        let mean_of = |i: usize| ranks.iter().map(|v| v[i]).sum::<f64>() / ranks.len() as f64;
        let times: Vec<f64> = ranks.iter().map(|v| v[0]).collect();
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        // DeepEP reports each rank's own bytes over its own time; the mean of those.
        let deepep_gbps = ranks.iter().map(|v| v[1] / v[0] / 1e3).sum::<f64>() / ranks.len() as f64;
        let iters = self.args.iters.max(10);
        let copy_us = timing::copy_us(self.gpu, m.counts.unique as usize, iters)?;
        let same_traffic_us = timing::traffic_us(
            self.gpu,
            (m.counts.traffic - m.counts.written) as usize,
            m.counts.written as usize,
            iters,
        )?;
        Ok(Row {
            workload: m.workload,
            mode: m.mode,
            layout: spec.high_throughput().map(|h| h.layout),
            ranks: spec.ranks(),
            hidden: spec.hidden(),
            top_k: spec.top_k(),
            experts: spec.experts(),
            tokens: m.tokens,
            phase: m.phase,
            time_us: mean,
            min_us: times.iter().copied().fold(f64::INFINITY, f64::min),
            max_us: times.iter().copied().fold(0.0, f64::max),
            parts: m.parts,
            counts: m.counts,
            row_bytes: m.row_bytes,
            fanout_us: m.fanout_us.map(|_| mean_of(2)),
            floor: m.floor.map(|_| Floor {
                launches_us: mean_of(3),
                graph_us: mean_of(4),
                graph_launches_us: mean_of(5),
                graph_replay_us: mean_of(6),
                graph_call_us: mean_of(7),
                events_us: mean_of(8),
                stream_call_us: mean_of(9),
                stream_call_host_us: mean_of(10),
                stream_call_paced_us: mean_of(11),
            }),
            copy_us,
            same_traffic_us,
            // NCCL EP: rank 0's bytes over the mean per-rank time.
            nccl_ep_gbps: m.counts.nccl_ep.map(|b| b as f64 / mean / 1e3),
            deepep_gbps,
        })
    }
}

/// Names of the built-in specs behind the standard workloads.
const LL_STANDARD: [&str; 3] = ["deepseek-v3-ll", "qwen3-235b-a22b-ll", "gpt-oss-120b-ll"];

fn builtin(name: &str) -> Result<Spec> {
    Ok(find_builtin(name)
        .with_context(|| format!("built-in spec {name}"))?
        .parse()?)
}

/// `spec` with some fields changed, written out and validated again (JSON is YAML).
fn edited(spec: &Spec, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Result<Spec> {
    let mut fields = serde_json::to_value(spec)?;
    fields["name"] = name.into();
    edit(&mut fields);
    Ok(Spec::from_yaml(
        &fields.to_string(),
        Some(&format!("{} as {name}", spec.name())),
    )?)
}

/// The standard workloads of DESIGN.md, derived from the built-in specs: LL DeepSeek-V3 with FP8
/// and BF16 dispatch, Qwen3-235B and gpt-oss-120b; HT DeepSeek-V3 with BF16 and FP8 dispatch,
/// Qwen3-235B (expert-major, the grouped GEMM's layout) and the gpt-oss-120b shape.
pub(super) fn standard() -> Result<Vec<Spec>> {
    let fp8 = builtin(LL_STANDARD[0])?;
    let bf16 = edited(&fp8, "deepseek-v3-ll-bf16", |f| {
        f["dispatch_dtype"] = Dtype::Bf16.as_str().into();
        if let Some(map) = f.as_object_mut() {
            map.remove("fp8");
        }
    })?;
    let ht = builtin("deepseek-v3-ht")?;
    let ht_shape = |name: &str, hidden: u32, experts: u32, top_k: u32| {
        edited(&ht, name, |f| {
            f["hidden"] = hidden.into();
            f["experts"] = experts.into();
            f["top_k"] = top_k.into();
        })
    };
    let ht_fp8 = edited(&ht, "deepseek-v3-ht-fp8", |f| {
        f["dispatch_dtype"] = Dtype::Fp8E4m3.as_str().into();
        f["fp8"] = serde_json::json!({"block": 128, "scale": "f32"});
    })?;
    Ok(vec![
        fp8,
        bf16,
        builtin(LL_STANDARD[1])?,
        builtin(LL_STANDARD[2])?,
        ht.clone(),
        ht_fp8,
        builtin("qwen3-235b-a22b-ht")?,
        ht_shape("gpt-oss-120b-ht", 2880, 128, 4)?,
    ])
}

/// The specs to time, with `--ranks`, `--sms` and `--warps` applied.
fn workloads(args: &BenchArgs, ranks: Option<u32>) -> Result<Vec<Spec>> {
    let mut specs = if args.specs.is_empty() || args.standard {
        standard()?
    } else {
        Vec::new()
    };
    if !args.specs.is_empty() {
        specs.extend(load_specs(&args.specs)?.into_iter().map(|l| l.spec));
    }
    specs
        .iter()
        .map(|s| {
            let s = ranks.map_or(Ok(s.clone()), |r| s.with_ranks(r))?;
            let mut tuning = s.tuning();
            if args.sms.is_some() {
                tuning.sms = args.sms;
            }
            if args.warps.is_some() {
                tuning.warps_per_block = args.warps;
            }
            Ok(s.with_tuning(tuning)?)
        })
        .collect()
}

/// Tokens per rank to time `spec` at.
fn token_counts(spec: &Spec, args: &BenchArgs) -> Result<Vec<usize>> {
    let m = spec.max_tokens_per_rank() as usize;
    let default = match spec.mode() {
        Mode::LowLatency => 128,
        Mode::HighThroughput => 4096,
    };
    if let Some(t) = args.tokens.filter(|&t| t > m) {
        bail!(
            "--tokens {t} exceeds max_tokens_per_rank = {m} of {}",
            spec.name()
        );
    }
    let tokens: Vec<usize> = if args.sweep {
        let end = args.tokens.unwrap_or(m);
        if end == 0 {
            bail!("--sweep ends at --tokens, which must be at least 1");
        }
        (0..=13)
            .map(|p| 1usize << p)
            .filter(|&t| t <= end)
            .collect()
    } else {
        vec![args.tokens.unwrap_or(default.min(m))]
    };
    Ok(tokens)
}

/// Times all workloads and prints, writes CSV and SVG as asked.
pub fn bench(args: &BenchArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let placement = match Placement::for_command(&args.transport, args.ranks)? {
        Role::Here(p) => p,
        Role::Launched(code) => return Ok(code),
    };
    let ranks = placement.ranks().or(args
        .ranks
        .or((args.specs.is_empty() || args.standard).then_some(8)));
    let specs = workloads(args, ranks)?;
    let gpu = Gpu::open(placement.device())?;
    let jit = Jit::nvrtc()?;
    let renderer = renderer(templates)?;
    let mine = Ranks::join(&placement, &args.transport, &gpu)?;
    let ctx = Bench {
        gpu: &gpu,
        jit: &jit,
        renderer: &renderer,
        ranks: &mine,
        args,
    };
    let lead = mine.lead();
    if lead {
        println!(
            "GPU {} ({}, {} SMs); {}; {:?} routings; {} after {}",
            gpu.name(),
            gpu.arch(),
            gpu.sms(),
            match placement {
                Placement::Virtual => "virtual ranks on this GPU".to_owned(),
                _ => format!(
                    "NCCL, one rank per GPU, {}",
                    count(ranks.unwrap_or(1) as usize, "rank")
                ),
            },
            ep_runtime::routing::Pattern::from(args.pattern),
            count(args.iters, "timed call"),
            count(args.warmup, "warm-up")
        );
    }
    let mut rows = Vec::new();
    for spec in &specs {
        let measured = match spec.mode() {
            Mode::LowLatency => ll::measure(&ctx, spec, &token_counts(spec, args)?),
            Mode::HighThroughput => ht::measure(&ctx, spec, &token_counts(spec, args)?),
        }
        .with_context(|| format!("timing {}", spec.name()))?;
        for m in measured {
            rows.push(ctx.row(spec, m)?);
        }
    }
    if !lead {
        return Ok(ExitCode::SUCCESS);
    }
    report::print_table(&rows);
    if let Some(path) = &args.csv {
        std::fs::write(path, report::csv(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::plot(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(dir) = &args.routing_out {
        println!("wrote the routings to {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_workloads_are_valid_and_derived_ones_differ_only_where_meant() {
        let specs = standard().unwrap();
        let names: Vec<&str> = specs.iter().map(Spec::name).collect();
        assert_eq!(
            names,
            [
                "deepseek-v3-ll",
                "deepseek-v3-ll-bf16",
                "qwen3-235b-a22b-ll",
                "gpt-oss-120b-ll",
                "deepseek-v3-ht",
                "deepseek-v3-ht-fp8",
                "qwen3-235b-a22b-ht",
                "gpt-oss-120b-ht"
            ]
        );
        let (fp8, bf16) = (&specs[0], &specs[1]);
        assert_eq!(bf16.dispatch_dtype(), Dtype::Bf16);
        assert!(bf16.fp8().is_none() && fp8.fp8().is_some());
        assert_eq!(
            (bf16.hidden(), bf16.experts(), bf16.top_k(), bf16.ranks()),
            (fp8.hidden(), fp8.experts(), fp8.top_k(), fp8.ranks())
        );
        assert_eq!(bf16.tuning(), fp8.tuning());
        for ht in &specs[4..] {
            let r8 = ht.with_ranks(8).unwrap();
            assert_eq!(r8.ranks(), 8, "{} is timed on 8 ranks", ht.name());
            assert!(ht.max_tokens_per_rank() >= 4096);
        }
        assert!(specs[5].fp8().is_some() && specs[4].fp8().is_none());
        assert_eq!(
            specs[6].high_throughput().map(|h| h.layout),
            Some(ep_codegen::Layout::ExpertMajor)
        );
        assert_eq!(
            (specs[7].hidden(), specs[7].experts(), specs[7].top_k()),
            (2880, 128, 4)
        );
    }

    fn bench_args(args: &[&str]) -> BenchArgs {
        use clap::Parser;
        let argv = ["epc", "bench"].iter().chain(args);
        match crate::cli::Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Some(crate::cli::Command::Bench(b))) => b,
            other => panic!("not a bench command: {other:?}"),
        }
    }

    #[test]
    fn a_sweep_ends_at_tokens_and_tokens_past_the_spec_are_refused() {
        let spec = standard().unwrap().remove(0);
        let counts = |args: &[&str]| token_counts(&spec, &bench_args(args));
        assert_eq!(counts(&["--sweep"]).unwrap(), [1, 2, 4, 8, 16, 32, 64, 128]);
        assert_eq!(
            counts(&["--sweep", "--tokens", "16"]).unwrap(),
            [1, 2, 4, 8, 16]
        );
        assert_eq!(
            counts(&["--sweep", "--tokens", "20"]).unwrap(),
            [1, 2, 4, 8, 16]
        );
        assert_eq!(counts(&["--tokens", "20"]).unwrap(), [20]);
        assert_eq!(counts(&[]).unwrap(), [128]);
        let err = counts(&["--sweep", "--tokens", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
        for args in [&["--tokens", "129"][..], &["--sweep", "--tokens", "129"]] {
            let err = counts(args).unwrap_err().to_string();
            assert!(err.contains("exceeds max_tokens_per_rank = 128"), "{err}");
        }
    }
}
