//! `epc bench`: low-latency dispatch and combine against a device-to-device copy.
//!
//! On one GPU the virtual ranks move every byte through the same HBM, so the honest yardstick is
//! a device-to-device copy of the same unique bytes, timed in the same process. Unique bytes:
//! dispatch, one row per valid (token, slot) in the dispatch dtype (FP8 rows with their
//! scales); combine, one 16-bit row per valid (token, slot). The target of each phase is
//! 1.3 x the copy's time + 10 us.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ep_codegen::{Dtype, Mode, Spec, find_builtin};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Gpu, Jit, LowLatency, timing};

use crate::cli::BenchArgs;
use crate::inputs::{load_specs, renderer};
use crate::svg;
use crate::transport::{Placement, Ranks, launch};
use crate::words::count;

/// One measurement.
struct Row {
    workload: String,
    tokens: usize,
    phase: &'static str,
    time_us: f64,
    send_us: f64,
    recv_us: f64,
    bytes: u64,
    copy_us: f64,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.time_us / 1e3
    }
    fn target_us(&self) -> f64 {
        1.3 * self.copy_us + 10.0
    }
}

/// The standard workloads of DESIGN.md, derived from the built-in specs.
fn standard() -> Result<Vec<Spec>> {
    let base = |name: &str| -> Result<Spec> {
        Ok(find_builtin(name)
            .with_context(|| format!("built-in spec {name}"))?
            .parse()?)
    };
    let fp8 = base("deepseek-v3-ll")?;
    // The same deployment with BF16 dispatch, written out and validated again (JSON is YAML).
    let mut fields = serde_json::to_value(&fp8)?;
    fields["name"] = "deepseek-v3-ll-bf16".into();
    fields["dispatch_dtype"] = Dtype::Bf16.as_str().into();
    if let Some(map) = fields.as_object_mut() {
        map.remove("fp8");
    }
    let bf16 = Spec::from_yaml(
        &fields.to_string(),
        Some("deepseek-v3-ll with bf16 dispatch"),
    )?;
    Ok(vec![
        fp8,
        bf16,
        base("qwen3-235b-a22b-ll")?,
        base("gpt-oss-120b-ll")?,
    ])
}

/// Times all workloads and prints, writes CSV and SVG as asked.
pub fn bench(args: &BenchArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let mut specs = if args.specs.is_empty() || args.standard {
        standard()?
    } else {
        Vec::new()
    };
    if !args.specs.is_empty() {
        specs.extend(load_specs(&args.specs)?.into_iter().map(|l| l.spec));
    }
    let placement = Placement::of(&args.transport)?;
    if let Placement::NcclLauncher { gpus } = placement {
        return launch(gpus);
    }
    if let (Some(_), Some(r)) = (args.ranks, placement.ranks()) {
        bail!(
            "--ranks does not apply to --transport nccl: the job has {}, one per GPU",
            count(r as usize, "rank")
        );
    }
    let ranks = placement.ranks().or(args
        .ranks
        .or((args.specs.is_empty() || args.standard).then_some(8)));
    let specs: Vec<Spec> = specs
        .iter()
        .map(|s| ranks.map_or(Ok(s.clone()), |r| Ok(s.with_ranks(r)?)))
        .collect::<Result<_>>()?;
    let specs: Vec<Spec> = specs
        .into_iter()
        .map(|s| {
            let mut tuning = s.tuning();
            if args.sms.is_some() {
                tuning.sms = args.sms;
            }
            if args.warps.is_some() {
                tuning.warps_per_block = args.warps;
            }
            Ok(s.with_tuning(tuning)?)
        })
        .collect::<Result<_>>()?;
    if let Some(s) = specs.iter().find(|s| s.mode() != Mode::LowLatency) {
        bail!(
            "`epc bench` times low-latency specs; {} is high_throughput",
            s.name()
        );
    }
    let gpu = Gpu::open(placement.device())?;
    let jit = Jit::nvrtc()?;
    let renderer = renderer(templates)?;
    println!(
        "GPU {} ({}, {} SMs); {} after {}",
        gpu.name(),
        gpu.arch(),
        gpu.sms(),
        count(args.iters, "timed call"),
        count(args.warmup, "warm-up")
    );
    let mine = Ranks::join(&placement, &args.transport, &gpu)?;
    let mut rows = Vec::new();
    for spec in &specs {
        let m = spec.max_tokens_per_rank() as usize;
        let tokens: Vec<usize> = if args.sweep {
            (0..=12).map(|p| 1usize << p).filter(|&t| t <= m).collect()
        } else {
            vec![args.tokens.unwrap_or(128.min(m))]
        };
        if let Some(&t) = tokens.iter().find(|&&t| t > m) {
            bail!(
                "--tokens {t} exceeds max_tokens_per_rank = {m} of {}",
                spec.name()
            );
        }
        let mut ll = mine
            .ll_group(&gpu, &jit, &renderer, spec)
            .with_context(|| format!("setting up {}", spec.name()))?;
        let mut call = ll.new_call()?;
        for &t in &tokens {
            rows.extend(measure(&gpu, &mut ll, &mut call, spec, t, args)?);
        }
    }
    print_table(&rows);
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&rows)).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, plot(&rows)).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(
    gpu: &Gpu,
    ll: &mut LowLatency,
    call: &mut ep_runtime::HostCall,
    spec: &Spec,
    tokens: usize,
    args: &BenchArgs,
) -> Result<Vec<Row>> {
    let (r, k, e, h) = (
        spec.ranks() as usize,
        spec.top_k() as usize,
        spec.experts() as usize,
        spec.hidden() as u64,
    );
    // NCCL EP's LL routing: top-k of random scores, with a few slots dropped.
    let inputs: Vec<RankInput> = (0..r)
        .map(|rank| RankInput {
            routing: generate(Pattern::Uniform, tokens, k, e, r, rank as u64),
            x: random_activations(spec, tokens, rank as u64),
        })
        .collect();
    // This process's ranks (all of them on virtual ranks): their selections are the bytes.
    let mine: Vec<RankInput> = ll
        .group()
        .ranks()
        .iter()
        .map(|&rank| inputs[rank].clone())
        .collect();
    let selections: u64 = mine
        .iter()
        .map(|i| i.routing.topk_idx.iter().filter(|&&x| x >= 0).count() as u64)
        .sum();
    call.set_inputs(gpu, &mine)?;
    let times = ll.time_phases(call, args.warmup, args.iters)?;
    let scale_bytes = spec.fp8().map_or(0, |f| h / u64::from(f.block) * 4);
    let dispatch_bytes = selections * (h * u64::from(spec.dispatch_dtype().size()) + scale_bytes);
    let combine_bytes = selections * h * u64::from(spec.combine_dtype().size());
    let copy = |bytes: u64| timing::copy_us(gpu, bytes as usize, args.iters.max(10));
    Ok(vec![
        Row {
            workload: spec.name().to_owned(),
            tokens,
            phase: "dispatch",
            time_us: times.dispatch(),
            send_us: times.dispatch_send,
            recv_us: times.dispatch_recv,
            bytes: dispatch_bytes,
            copy_us: copy(dispatch_bytes)?,
        },
        Row {
            workload: spec.name().to_owned(),
            tokens,
            phase: "combine",
            time_us: times.combine(),
            send_us: times.combine_send,
            recv_us: times.combine_recv,
            bytes: combine_bytes,
            copy_us: copy(combine_bytes)?,
        },
    ])
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<28} {:>5} {:<9} {:>10} {:>15} {:>11} {:>8} {:>10} {:>8} {:>11}",
        "workload",
        "T",
        "phase",
        "time (us)",
        "send+recv (us)",
        "bytes",
        "GB/s",
        "copy (us)",
        "x copy",
        "target met"
    );
    for r in rows {
        println!(
            "{:<28} {:>5} {:<9} {:>10.2} {:>15} {:>11} {:>8.1} {:>10.2} {:>8.2} {:>11}",
            r.workload,
            r.tokens,
            r.phase,
            r.time_us,
            format!("{:.1}+{:.1}", r.send_us, r.recv_us),
            r.bytes,
            r.gbps(),
            r.copy_us,
            r.time_us / r.copy_us,
            if r.time_us <= r.target_us() {
                "yes"
            } else {
                "no"
            }
        );
    }
}

fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "workload,tokens_per_rank,phase,time_us,send_us,recv_us,unique_bytes,gbps,copy_us,ratio_to_copy,target_us\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{:.3},{:.3},{:.3},{},{:.2},{:.3},{:.4},{:.3}",
            r.workload,
            r.tokens,
            r.phase,
            r.time_us,
            r.send_us,
            r.recv_us,
            r.bytes,
            r.gbps(),
            r.copy_us,
            r.time_us / r.copy_us,
            r.target_us()
        );
    }
    out
}

fn plot(rows: &[Row]) -> String {
    let mut series: Vec<svg::Series> = Vec::new();
    for r in rows {
        for (label, y) in [
            (format!("{} {}", r.workload, r.phase), r.time_us),
            (format!("{} {} copy", r.workload, r.phase), r.copy_us),
        ] {
            match series.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push((r.tokens as f64, y)),
                None => series.push(svg::Series {
                    dashed: label.ends_with(" copy"),
                    label,
                    points: vec![(r.tokens as f64, y)],
                }),
            }
        }
    }
    svg::line_chart(
        "Low-latency phases vs a device-to-device copy",
        "tokens per rank",
        "time (us)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_workloads_are_valid_and_the_bf16_one_differs_only_in_dispatch() {
        let specs = standard().unwrap();
        let names: Vec<&str> = specs.iter().map(Spec::name).collect();
        assert_eq!(
            names,
            [
                "deepseek-v3-ll",
                "deepseek-v3-ll-bf16",
                "qwen3-235b-a22b-ll",
                "gpt-oss-120b-ll"
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
    }
}
