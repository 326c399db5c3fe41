//! `epc compile`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ep_runtime::{Arch, CacheOutcome, Compiler, Jit, KernelCache, Nvcc, Nvrtc};

use crate::cli::{CompileArgs, CompilerArg};
use crate::inputs::{load_specs, note_progress_all, optional_gpu, renderer};
use crate::progress::bar;

/// Compiles every kernel of the specs and prints time, cache outcome, registers and spills.
pub fn compile(args: &CompileArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let specs = load_specs(&args.specs.specs)?;
    note_progress_all(&specs);
    let renderer = renderer(templates)?;
    let arch = match &args.arch {
        Some(a) => a.parse::<Arch>()?,
        None => match optional_gpu()? {
            Ok(gpu) => gpu.arch(),
            Err(_) => Arch::SM90,
        },
    };
    let compiler: Box<dyn Compiler> = match args.compiler {
        CompilerArg::Nvrtc => {
            let nvrtc = Nvrtc::new()?;
            println!("NVRTC library {}", nvrtc.location());
            Box::new(nvrtc)
        }
        CompilerArg::Nvcc => Box::new(Nvcc::new()?),
    };
    println!("{}, target {arch}", compiler.id());
    let cache = (!args.no_cache).then(|| KernelCache::new(KernelCache::default_root()));
    if let Some(c) = &cache {
        println!("cache {}", c.root().display());
    }
    let jit = Jit::new(compiler, cache);
    let mut kernels = Vec::new();
    for l in &specs {
        kernels.extend(renderer.render(&l.spec)?);
    }
    let progress = bar(kernels.len(), "compiling");
    let mut rows = Vec::new();
    for k in &kernels {
        progress.set_message(k.file_name.clone());
        let c = jit
            .cubin(k, arch)
            .with_context(|| format!("compiling {}", k.file_name))?;
        progress.inc(1);
        let how = match c.outcome {
            CacheOutcome::Hit => "cached",
            CacheOutcome::Miss => "compiled",
            CacheOutcome::Rebuilt => "rebuilt (entry was corrupt)",
        };
        let opt = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
        rows.push(format!(
            "{:<40} {:>8.1} ms  {:<9} {:>4} regs  {:>4} B stack  {:>4} B spill st  {:>4} B spill ld  {:>7} B cubin",
            k.file_name,
            c.metadata.compile_ms,
            how,
            opt(c.metadata.stats.registers),
            opt(c.metadata.stats.stack_frame_bytes),
            opt(c.metadata.stats.spill_stores),
            opt(c.metadata.stats.spill_loads),
            c.cubin.len()
        ));
    }
    progress.finish_and_clear();
    println!(
        "{:<40} {:>11}  {:<9} (compile time is the original compile's for cached entries)",
        "kernel", "compile", ""
    );
    for r in rows {
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}
