//! `epc run`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use ep_codegen::Mode;
use ep_runtime::Jit;

use super::verify::{LlPlan, Plan, fitting, verify_ht, verify_layout, verify_ll_on, verify_notify};
use crate::cli::RunArgs;
use crate::inputs::{load_specs, renderer};
use crate::transport::{Knobs, Placement, Ranks, Role};
use crate::words::count;

/// Runs each spec's kernels once on the GPU, checks them, times them and prints the layout.
pub fn run(args: &RunArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let specs = load_specs(&args.specs.specs)?;
    let renderer = renderer(templates)?;
    let placement = match Placement::for_command(&args.transport, args.ranks)? {
        Role::Here(p) => p,
        Role::Launched(code) => return Ok(code),
    };
    let gpu = ep_runtime::Gpu::open(placement.device())?;
    let jit = Jit::nvrtc()?;
    println!("GPU {} ({}, {} SMs)", gpu.name(), gpu.arch(), gpu.sms());
    if let Placement::NcclRank { rank, ranks, .. } = placement {
        println!(
            "NCCL rank {rank} of {ranks} ({})",
            ep_runtime::transport::NcclLibrary::load()?
        );
    }
    let mine = Ranks::join(&placement, &args.transport, &gpu)?;
    for l in &specs {
        let spec = &l.spec;
        let m = spec.max_tokens_per_rank() as usize;
        let tokens = args.tokens.unwrap_or(m);
        if tokens > m {
            bail!(
                "--tokens {tokens} exceeds max_tokens_per_rank = {m} of {}",
                spec.name()
            );
        }
        let kernel = renderer.render(spec)?.remove(0);
        let plan = Plan {
            seed: args.seed,
            tokens,
            pattern: args.pattern.into(),
            routings: 1,
            iters: args.iters,
        };
        let v = verify_layout(&gpu, &jit, spec, &kernel, &plan)?;
        let busiest = v
            .layout
            .num_tokens_per_expert
            .iter()
            .max()
            .copied()
            .unwrap_or(0);
        println!(
            "{:<24} T={tokens:<5} seed {:<4} layout matches the reference  {:>7.2} us  \
             tokens per rank {:?}  busiest expert {busiest}",
            spec.name(),
            args.seed,
            v.layout_us,
            v.layout.num_tokens_per_rank
        );
        if spec.mode() == Mode::LowLatency {
            let runnable = match (placement.ranks(), args.ranks) {
                (Some(r), _) | (None, Some(r)) => spec.with_ranks(r)?,
                (None, None) => fitting(&gpu, spec)?,
            };
            let plan = LlPlan {
                seed: args.seed,
                routings: args.routings,
                iters: args.iters,
                dump: args.dump.as_deref(),
            };
            let mut ll = mine.ll_group(&gpu, &jit, &renderer, &runnable, Knobs::Tuned)?;
            let l = verify_ll_on(&mut ll, &runnable, &plan)?;
            println!(
                "{:<24} {} of {}, {} the reference (dispatch and combine); \
                 at T={}: dispatch {:.2} us (with the hook: send {:.2} + receive {:.2}), \
                 combine {:.2} us (with the hook: send {:.2} + receive {:.2})",
                spec.name(),
                l.ranks,
                count(spec.ranks() as usize, "rank"),
                if l.routings == 1 {
                    "1 call matches".to_owned()
                } else {
                    format!("{} calls match", l.routings)
                },
                m,
                l.times.dispatch,
                l.times.dispatch_send,
                l.times.dispatch_recv,
                l.times.combine,
                l.times.combine_send,
                l.times.combine_recv
            );
            if let Some(dir) = &args.dump {
                println!("wrote rank<r>.<tensor>.npy files to {}", dir.display());
            }
        } else {
            let runnable = match args.ranks {
                Some(r) => spec.with_ranks(r)?,
                None => fitting(&gpu, spec)?,
            };
            let kernels = renderer.render(&runnable)?;
            let plan = Plan {
                routings: args.routings,
                ..plan
            };
            let (calls, refused) = verify_notify(&gpu, &jit, &runnable, &kernels, &plan)?;
            println!(
                "{:<24} {} of {}: notify matches its definition in {} ({refused} refused for \
                 overflowing max_recv_tokens_per_rank)",
                spec.name(),
                runnable.ranks(),
                count(spec.ranks() as usize, "rank"),
                count(calls, "call")
            );
            let v = verify_ht(&gpu, &jit, &runnable, &kernels, &plan, args.dump.as_deref())?;
            let timed = match v.times {
                Some(t) => {
                    let copy = ep_runtime::timing::copy_us(&gpu, v.received_bytes, plan.iters)?;
                    format!(
                        "; at T={tokens} on all {} ranks together: notify {:.2} us, dispatch \
                         {:.2} us, combine {:.2} us; a device copy of the {:.1} MB received \
                         takes {copy:.2} us",
                        runnable.ranks(),
                        t.notify,
                        t.dispatch,
                        t.combine,
                        v.received_bytes as f64 / 1e6
                    )
                }
                None => String::new(),
            };
            let layout = match runnable.high_throughput().map(|h| h.layout) {
                Some(ep_codegen::Layout::ExpertMajor) => "expert-major",
                _ => "flat",
            };
            println!(
                "{:<24} dispatch and combine ({layout}{}) match the reference in {}{timed}",
                spec.name(),
                if runnable.fp8().is_some() {
                    ", FP8"
                } else {
                    ""
                },
                count(v.calls, "call")
            );
            if let Some(dir) = &args.dump {
                println!("wrote rank<r>.<tensor>.npy files to {}", dir.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
