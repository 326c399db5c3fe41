//! `epc tune`: the knobs of each spec's kernels measured on this GPU, the winner stored in the
//! tuning database (`$EPC_CACHE_DIR/tuning`), which the runtime then uses where a spec says
//! `auto`.
//!
//! Per spec: the variants its knobs allow (`ep_codegen::kernels::knobs`, the defaults first)
//! are compiled with NVRTC on every CPU core; a variant that fails to compile or to run scores as
//! infinitely slow. With a GPU each is timed at one token count per bucket (1-16, 17-64,
//! 65-M: median of `--repeats` means of `--iters` calls), within `--budget` seconds (the
//! defaults always); the variant with the least total time wins, is checked against the CPU
//! reference and stored. A table lists every variant; `--csv` and `--svg` keep them.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use ep_codegen::kernels::knobs::{knobs, variants};
use ep_codegen::{Mode, Renderer, Spec, Tuning};
use ep_runtime::tuning::{TuningDb, TuningEntry, TuningKey};
use ep_runtime::{Arch, Gpu, Jit, KernelCache, LowLatency};

use super::bench::ll_inputs;
use super::verify::{LlPlan, verify_ll};
use crate::cli::TuneArgs;
use crate::inputs::{load_specs, optional_gpu, renderer};
use crate::progress::bar;
use crate::svg;

/// One variant's results.
struct Variant {
    tuning: Tuning,
    /// Registers of its dispatch kernel, or why it did not compile.
    compiled: std::result::Result<u32, String>,
    /// Median time (dispatch + combine, us) per bucket; `None` when not timed, infinite when it
    /// failed to run.
    times: Vec<Option<f64>>,
}

impl Variant {
    fn total(&self) -> Option<f64> {
        self.times.iter().copied().sum::<Option<f64>>()
    }
}

/// `1, 2, 4 ...`-style label of a tuning: the knobs it sets.
fn label(t: &Tuning) -> String {
    match (t.warps_per_block, t.sms) {
        (None, None) => "defaults".to_owned(),
        (w, s) => format!(
            "warps {} sms {}",
            w.map_or("auto".into(), |v| v.to_string()),
            s.map_or("auto".into(), |v| v.to_string())
        ),
    }
}

/// The token count timed for each bucket of `m` (1-16, 17-64, 65-M).
fn buckets(m: usize) -> Vec<usize> {
    let mut b = vec![8.min(m), 32.min(m), m];
    b.dedup();
    b
}

/// "entry" or "entries".
fn entries(n: usize) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
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
    let specs = load_specs(&args.specs)?;
    let renderer = renderer(templates)?;
    let jit = Jit::nvrtc().context("epc tune compiles every variant with NVRTC")?;
    let gpu = optional_gpu()?;
    let (sms, arch) = match &gpu {
        Ok(g) => (g.sms(), g.arch()),
        Err(_) => (132, Arch::SM90),
    };
    let mut csv = String::from("spec,variant,warps_per_block,sms,registers,tokens,time_us\n");
    let mut plots = Vec::new();
    for loaded in &specs {
        let spec = &loaded.spec;
        if spec.mode() != Mode::LowLatency {
            println!(
                "{}: high-throughput kernels have no tunable knobs yet; skipped",
                spec.name()
            );
            continue;
        }
        let space = knobs(spec, sms);
        let mut found: Vec<Variant> =
            compile_all(&jit, &renderer, spec, &variants(spec, &space), arch);
        println!(
            "{}: {} variants of {} ({}), compiled for {arch}",
            spec.name(),
            found.len(),
            space.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            if found.iter().all(|v| v.compiled.is_ok()) {
                "all compiled"
            } else {
                "some failed"
            }
        );
        let m = spec.max_tokens_per_rank() as usize;
        let tokens = buckets(m);
        for v in &mut found {
            v.times = vec![None; tokens.len()];
        }
        match &gpu {
            Ok(g) => time_all(g, &jit, &renderer, spec, &mut found, &tokens, args)?,
            Err(why) => println!("  nothing timed or stored: {why}"),
        }
        print_table(&found, &tokens);
        for v in &found {
            for (t, time) in tokens.iter().zip(&v.times) {
                csv.push_str(&format!(
                    "{},{},{},{},{},{t},{}\n",
                    spec.name(),
                    label(&v.tuning),
                    v.tuning
                        .warps_per_block
                        .map_or("auto".into(), |w| w.to_string()),
                    v.tuning.sms.map_or("auto".into(), |s| s.to_string()),
                    v.compiled.as_ref().map_or(0, |r| *r),
                    time.map_or(String::new(), |t| format!("{t:.3}"))
                ));
            }
        }
        plots.extend(tokens.iter().enumerate().map(|(b, &t)| {
            svg::Series {
                label: format!("{} T={t}", spec.name()),
                points: found
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        v.times[b]
                            .filter(|x| x.is_finite())
                            .map(|x| ((i + 1) as f64, x))
                    })
                    .collect(),
                dashed: false,
            }
        }));
        if let Ok(g) = &gpu {
            store_winner(g, &jit, &renderer, &db, spec, &found)?;
        }
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, &csv).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let chart = svg::line_chart(
            "epc tune",
            "variant (1 = defaults)",
            "dispatch + combine (us)",
            &plots,
        );
        std::fs::write(path, chart).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Compiles every variant's kernels, on every CPU core; a failure is the variant's, not the run's.
fn compile_all(
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    tunings: &[Tuning],
    arch: Arch,
) -> Vec<Variant> {
    let progress = bar(tunings.len(), "compiling variants");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tunings.len().max(1));
    let mut out: Vec<Option<Variant>> = (0..tunings.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<_> = out
            .chunks_mut(tunings.len().div_ceil(threads).max(1))
            .collect();
        let mut first = 0;
        for chunk in chunks {
            let start = first;
            first += chunk.len();
            let progress = &progress;
            s.spawn(move || {
                for (i, slot) in chunk.iter_mut().enumerate() {
                    let tuning = tunings[start + i];
                    let compiled = compile_one(jit, renderer, spec, tuning, arch);
                    progress.inc(1);
                    *slot = Some(Variant {
                        tuning,
                        compiled,
                        times: Vec::new(),
                    });
                }
            });
        }
    });
    progress.finish_and_clear();
    out.into_iter().flatten().collect()
}

fn compile_one(
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    tuning: Tuning,
    arch: Arch,
) -> std::result::Result<u32, String> {
    let variant = spec.with_tuning(tuning).map_err(|e| e.to_string())?;
    let kernels = renderer.render(&variant).map_err(|e| e.to_string())?;
    let mut registers = 0;
    for k in &kernels {
        let cubin = jit.cubin(k, arch).map_err(|e| e.to_string())?;
        if k.name == "ll_dispatch" {
            registers = cubin.metadata.stats.registers.unwrap_or(0);
        }
    }
    Ok(registers)
}

/// Times every compiled variant at each token count, the defaults first, within the budget.
fn time_all(
    gpu: &Gpu,
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    found: &mut [Variant],
    tokens: &[usize],
    args: &TuneArgs,
) -> Result<()> {
    let start = Instant::now();
    let progress = bar(found.len(), "timing variants");
    for (i, v) in found.iter_mut().enumerate() {
        if i > 0 && start.elapsed().as_secs_f64() > args.budget {
            progress.inc(1);
            continue;
        }
        if v.compiled.is_err() {
            v.times = vec![Some(f64::INFINITY); tokens.len()];
            progress.inc(1);
            continue;
        }
        let timed = spec
            .with_tuning(v.tuning)
            .map_err(anyhow::Error::from)
            .and_then(|variant| time_variant(gpu, jit, renderer, &variant, tokens, args));
        v.times = match timed {
            Ok(t) => t.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::info!("{}: {} does not run: {e:#}", spec.name(), label(&v.tuning));
                vec![Some(f64::INFINITY); tokens.len()]
            }
        };
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(())
}

/// Median over `repeats` of the mean dispatch + combine time, at each token count.
fn time_variant(
    gpu: &Gpu,
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    tokens: &[usize],
    args: &TuneArgs,
) -> Result<Vec<f64>> {
    let mut ll = LowLatency::new(gpu, jit, renderer, spec)?;
    let mut call = ll.new_call()?;
    let mut out = Vec::with_capacity(tokens.len());
    for &t in tokens {
        call.set_inputs(gpu, &ll_inputs(spec, t))?;
        let mut samples = Vec::with_capacity(args.repeats.max(1));
        for _ in 0..args.repeats.max(1) {
            let p = ll.time_phases(&mut call, args.warmup, args.iters)?;
            samples.push(p.dispatch() + p.combine());
        }
        samples.sort_by(f64::total_cmp);
        out.push(samples[samples.len() / 2]);
    }
    Ok(out)
}

fn print_table(found: &[Variant], tokens: &[usize]) {
    print!("  {:<24} {:>9}", "variant", "registers");
    for t in tokens {
        print!(" {:>12}", format!("T={t} us"));
    }
    println!();
    for v in found {
        print!(
            "  {:<24} {:>9}",
            label(&v.tuning),
            v.compiled.as_ref().map_or_else(
                |e| format!("failed: {}", e.lines().next().unwrap_or("")),
                |r| r.to_string()
            )
        );
        for time in &v.times {
            print!(
                " {:>12}",
                time.map_or("-".to_owned(), |t| if t.is_finite() {
                    format!("{t:.1}")
                } else {
                    "fails".to_owned()
                })
            );
        }
        println!();
    }
}

/// Stores the variant with the least total time (the defaults when nothing beats them), after
/// checking it against the reference.
fn store_winner(
    gpu: &Gpu,
    jit: &Jit,
    renderer: &Renderer,
    db: &TuningDb,
    spec: &Spec,
    found: &[Variant],
) -> Result<()> {
    let Some(default_us) = found.first().and_then(Variant::total) else {
        println!(
            "  {}: the defaults could not be timed; nothing stored",
            spec.name()
        );
        return Ok(());
    };
    let winner = found
        .iter()
        .filter_map(|v| v.total().filter(|t| t.is_finite()).map(|t| (v, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(v, t)| (v.tuning, t));
    let Some((tuning, time_us)) = winner else {
        return Ok(());
    };
    let tuned = spec.with_tuning(tuning)?;
    let plan = LlPlan {
        seed: 7,
        routings: 3,
        iters: 1,
        dump: None,
    };
    verify_ll(gpu, jit, renderer, &tuned, &plan)
        .context("the winner does not match the reference")?;
    let key = TuningKey::on(spec, gpu, jit, "virtual");
    let mut knobs = std::collections::BTreeMap::new();
    if let Some(w) = tuning.warps_per_block {
        knobs.insert("warps_per_block".to_owned(), w);
    }
    if let Some(s) = tuning.sms {
        knobs.insert("sms".to_owned(), s);
    }
    let entry = TuningEntry {
        key,
        knobs,
        time_us,
        default_us,
        tuned_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        epc_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    db.put(&entry)?;
    println!(
        "  {}: {} wins ({time_us:.1} us, defaults {default_us:.1} us), matches the reference; stored in {}",
        spec.name(),
        label(&tuning),
        db.dir().display()
    );
    Ok(())
}
