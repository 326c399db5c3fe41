//! The main job (`epc` with no subcommand, or `epc all`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ep_codegen::Mode;
use ep_runtime::CacheOutcome;
use ep_runtime::routing::Pattern;

use super::check::summary;
use super::compile::check_target;
use super::verify::{LlPlan, Plan, fitting, verify_ht, verify_layout, verify_ll, verify_notify};
use crate::cli::AllArgs;
use crate::inputs::{load_specs, optional_gpu, optional_jit, renderer};
use crate::progress::bar;
use crate::words::count;

/// Tokens per rank of the main job's check of HT dispatch and combine.
const HT_CHECK_TOKENS: usize = 128;

/// Checks, renders, compiles and (with a GPU) verifies and times every spec, printing a table.
pub fn all(args: &AllArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let specs = load_specs(&args.specs.specs)?;
    let renderer = renderer(templates)?;
    println!("{} checked:", count(specs.len(), "spec"));
    for l in &specs {
        println!("  {:<24} {}", l.spec.name(), summary(&l.spec));
    }
    let mut rendered = Vec::new();
    for l in &specs {
        rendered.push(renderer.render(&l.spec)?);
    }
    let kernels: usize = rendered.iter().map(Vec::len).sum();
    println!("{} rendered", count(kernels, "kernel"));

    crate::install::nvrtc_if_missing();
    let jit = match optional_jit()? {
        Ok(jit) => jit,
        Err(why) => {
            println!("compile and GPU steps skipped: {why}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let gpu = optional_gpu()?;
    let (arch, from) = match (&args.arch, &gpu) {
        (Some(a), _) => (a.parse::<ep_runtime::Arch>()?, "--arch"),
        (None, Ok(g)) => (g.arch(), "the GPU's"),
        (None, Err(_)) => (ep_runtime::Arch::SM90, "the default without a GPU"),
    };
    let nvrtc = ep_runtime::Nvrtc::new()?;
    check_target(Some(&nvrtc), &specs, arch, from)?;
    if let Some(g) = gpu.as_ref().ok().filter(|g| g.arch() != arch) {
        check_target(Some(&nvrtc), &specs, g.arch(), "the GPU's")?;
    }
    println!("compiling with {} for {arch}", jit.compiler_id());
    let progress = bar(kernels, "compiling");
    let mut compiled = Vec::new();
    for ks in &rendered {
        let (mut fresh, mut ms) = (0, 0.0);
        for k in ks {
            progress.set_message(k.file_name.clone());
            let c = jit
                .cubin(k, arch)
                .with_context(|| format!("compiling {}", k.file_name))?;
            if c.outcome != CacheOutcome::Hit {
                fresh += 1;
                ms += c.metadata.compile_ms;
            }
            progress.inc(1);
        }
        compiled.push(format!(
            "{}, {fresh} compiled ({ms:.0} ms)",
            count(ks.len(), "kernel")
        ));
    }
    progress.finish_and_clear();

    let gpu = match gpu {
        Ok(gpu) => gpu,
        Err(why) => {
            for (l, c) in specs.iter().zip(&compiled) {
                println!("  {:<24} {c}", l.spec.name());
            }
            println!("GPU steps skipped: {why}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("GPU {} ({}, {} SMs)", gpu.name(), gpu.arch(), gpu.sms());
    println!(
        "  {:<24} {:<30} {:>9} {:>8} {:>12} {:>9} {:>14} {:>13}",
        "spec", "compile", "verified", "T", "layout (us)", "ranks", "dispatch (us)", "combine (us)"
    );
    for ((l, c), ks) in specs.iter().zip(&compiled).zip(&rendered) {
        let spec = &l.spec;
        let plan = Plan {
            seed: 0,
            tokens: spec.max_tokens_per_rank() as usize,
            pattern: Pattern::Uniform,
            routings: args.routings,
            iters: 100,
        };
        let v = verify_layout(&gpu, &jit, spec, &ks[0], &plan)?;
        let ll = if spec.mode() == Mode::LowLatency {
            let runnable = fitting(&gpu, spec)?;
            let ll_plan = LlPlan {
                seed: 0,
                routings: args.routings,
                iters: 20,
                dump: None,
            };
            let l = verify_ll(&gpu, &jit, &renderer, &runnable, &ll_plan)?;
            format!(
                "{:>9} {:>14.2} {:>13.2}",
                format!("{}/{}", l.ranks, spec.ranks()),
                l.times.dispatch,
                l.times.combine
            )
        } else {
            // Notify, dispatch and combine on the ranks that fit (each holds a whole window).
            let runnable = fitting(&gpu, spec)?;
            let kernels = renderer.render(&runnable)?;
            let (calls, refused) = verify_notify(&gpu, &jit, &runnable, &kernels, &plan)?;
            let notify = if refused == 0 {
                format!("notify x{calls}")
            } else {
                format!("notify x{calls} ({refused} full)")
            };
            // Dispatch and combine at a few tokens per rank (the reference holds every row on
            // the host).
            let data = {
                let small = Plan {
                    tokens: plan.tokens.min(HT_CHECK_TOKENS),
                    ..plan
                };
                let v = verify_ht(&gpu, &jit, &runnable, &kernels, &small, None)?;
                format!("ok x{}", v.calls)
            };
            format!(
                "{:>9} {:>14} {:>13}",
                format!("{}/{}", runnable.ranks(), spec.ranks()),
                notify,
                data
            )
        };
        println!(
            "  {:<24} {:<30} {:>9} {:>8} {:>12.2} {ll}",
            spec.name(),
            c,
            v.routings,
            plan.tokens,
            v.layout_us
        );
    }
    println!(
        "all specs verified against the CPU reference (ranks: virtual ranks run / the spec's, \
         fewer when the spec's windows do not fit on this GPU; HT: notify at T, and \
         dispatch and combine (ok: calls equal to the reference at T <= 128, on the ranks run); \
         `full`: routings that overflow max_recv_tokens_per_rank, rightly refused)"
    );
    Ok(ExitCode::SUCCESS)
}
