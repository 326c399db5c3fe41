//! `epc tune`: the knobs of each spec's kernels measured on this GPU, the winners stored in the
//! tuning database (`$EPC_CACHE_DIR/tuning`), which the runtime then uses where a spec says
//! `auto`.
//!
//! Per spec: the variants its knobs allow (`ep_codegen::kernels::knobs`, the defaults first)
//! are compiled with NVRTC on every CPU core; a variant that fails to compile or to run scores as
//! infinitely slow. With a GPU each is timed at the last token count of each bucket
//! (`token_buckets`: low latency 1-16, 17-64, 65-M; high throughput M), the median of
//! `--repeats` means of `--iters` calls, within `--budget` seconds (the defaults always). In each
//! bucket the variant with the least dispatch + combine time wins (the defaults are a
//! candidate, so a winner is never slower than them as measured); every winner is checked
//! against the CPU reference and the result stored. A table lists every variant; `--csv` and
//! `--svg` keep them.
//!
//! With `--transport nccl` the variants run over NCCL, one rank per GPU, as `epc bench` runs
//! them: every rank times its own GPU, the ranks agree on the budget and take the slowest
//! rank's time of each variant, and every rank stores the same winners under the `nccl` key.
//! Only rank 0 prints.

mod measure;
mod report;
mod winners;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ep_codegen::Spec;
use ep_codegen::kernels::knobs::{knobs, token_buckets, variants};
use ep_runtime::tuning::TuningDb;
use ep_runtime::{Arch, Gpu, Jit, KernelCache};

use self::measure::{Timer, compile_all};
use crate::cli::{TransportArg, TuneArgs};
use crate::inputs::{load_specs, optional_gpu, renderer};
use crate::svg;
use crate::transport::{Placement, Ranks, Role};

/// "entry" or "entries".
fn entries(n: usize) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
}

/// The specs to tune: the standard workloads (`--standard`, on 8 ranks unless `ranks`) and
/// the named ones (on `ranks` when given: `--ranks`, or the NCCL job's).
fn selected(args: &TuneArgs, ranks: Option<u32>) -> Result<Vec<Spec>> {
    let mut specs = if args.standard {
        let r = ranks.unwrap_or(8);
        super::bench::standard()?
            .iter()
            .map(|s| s.with_ranks(r))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    if !args.specs.is_empty() || !args.standard {
        for loaded in load_specs(&args.specs)? {
            specs.push(match ranks {
                Some(r) => loaded.spec.with_ranks(r)?,
                None => loaded.spec,
            });
        }
    }
    Ok(specs)
}

/// Runs `epc tune`.
pub fn tune(args: &TuneArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let db = TuningDb::in_cache(&KernelCache::default_root());
    if let Some(file) = &args.export {
        let n = db.export(file)?;
        println!(
            "exported {n} tuning {} of {} to {}",
            entries(n),
            db.dir().display(),
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(file) = &args.import {
        let n = db.import(file)?;
        println!(
            "imported {n} tuning {} from {} into {}",
            entries(n),
            file.display(),
            db.dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.budget.is_finite() && args.budget >= 0.0) {
        bail!(
            "--budget {}: the timing budget is a finite number of seconds, 0 or more",
            args.budget
        );
    }
    if !(args.budget.is_finite() && args.budget >= 0.0) {
        bail!(
            "--budget {}: the timing budget is a finite number of seconds, 0 or more",
            args.budget
        );
    }
    let placement = match Placement::for_command(&args.transport, args.ranks)? {
        Role::Here(p) => p,
        Role::Launched(code) => return Ok(code),
    };
    let specs = selected(args, placement.ranks().or(args.ranks))?;
    let renderer = renderer(templates)?;
    let jit = Jit::nvrtc().context("epc tune compiles every variant with NVRTC")?;
    let gpu = match args.transport.transport {
        TransportArg::Virtual => optional_gpu()?,
        TransportArg::Nccl => Ok(Gpu::open(placement.device())?),
    };
    let ranks = match &gpu {
        Ok(g) => Some(Ranks::join(&placement, &args.transport, g)?),
        Err(_) => None,
    };
    let lead = ranks.as_ref().is_none_or(Ranks::lead);
    let say = |line: String| {
        if lead {
            println!("{line}");
        }
    };
    let (sms, arch) = match &gpu {
        Ok(g) => (g.sms(), g.arch()),
        Err(_) => (132, Arch::SM90),
    };
    let mut csv = String::from(report::CSV_HEADER);
    let mut plots = Vec::new();
    for spec in &specs {
        let started = std::time::Instant::now();
        let space = knobs(spec, sms);
        if space.is_empty() {
            say(format!(
                "{}: every knob is pinned by the spec; nothing to tune",
                spec.name()
            ));
            continue;
        }
        let tokens: Vec<usize> = token_buckets(spec).iter().map(|&t| t as usize).collect();
        let mut found = compile_all(
            &jit,
            &renderer,
            spec,
            &variants(spec, &space),
            arch,
            tokens.len(),
        );
        say(format!(
            "{}: {} variants of {} ({}), compiled for {arch}",
            spec.name(),
            found.len(),
            space.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            if found.iter().all(|v| v.compiled.is_ok()) {
                "all compiled"
            } else {
                "some failed"
            }
        ));
        let timer = match (&gpu, &ranks) {
            (Ok(g), Some(r)) => Some(Timer {
                gpu: g,
                jit: &jit,
                renderer: &renderer,
                ranks: r,
                args,
            }),
            _ => None,
        };
        if let Some(t) = &timer {
            t.time_all(spec, &mut found, &tokens)?;
        }
        if lead {
            report::print_table(&found, &tokens);
        }
        csv.push_str(&report::csv_rows(spec.name(), &found, &tokens));
        plots.extend(report::series(spec.name(), &found, &tokens));
        match (&timer, &gpu) {
            (Some(t), _) => match winners::choose(&found, &tokens) {
                Some(won) => winners::store(t, &db, spec, &won, lead)?,
                None => say(format!(
                    "  {}: the defaults could not be timed; nothing stored",
                    spec.name()
                )),
            },
            (None, Err(why)) => say(format!("  nothing timed or stored: {why}")),
            (None, Ok(_)) => {}
        }
        say(format!(
            "  {}: tuned in {:.1} s",
            spec.name(),
            started.elapsed().as_secs_f64()
        ));
    }
    if !lead {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, &csv).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let chart = svg::line_chart(
            "epc tune",
            "variant (1 = defaults)",
            "dispatch, combine (us; combine dashed)",
            &plots,
        );
        std::fs::write(path, chart).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
