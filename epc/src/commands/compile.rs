//! `epc compile`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ep_runtime::{Arch, CacheOutcome, Compiler, Jit, KernelCache, Nvcc, Nvrtc, check_spec_arch};

use crate::cli::{CompileArgs, CompilerArg};
use crate::inputs::{Loaded, load_specs, optional_gpu, renderer};
use crate::progress::bar;

/// The target: `--arch` when given (refused with the accepted spellings when malformed), else
/// the GPU's, else sm_90; and where it came from.
pub fn target_arch(arg: Option<&str>) -> Result<(Arch, &'static str)> {
    Ok(match arg {
        Some(a) => (a.parse::<Arch>()?, "--arch"),
        None => match optional_gpu()? {
            Ok(gpu) => (gpu.arch(), "the GPU's"),
            Err(_) => (Arch::SM90, "the default without a GPU"),
        },
    })
}

/// Checks `arch` before anything is compiled: NVRTC must support it (when NVRTC is the
/// compiler), and every spec's kernels must compile for it (see `ep_runtime::spec_needs`).
/// All the problems are reported together.
pub fn check_target(nvrtc: Option<&Nvrtc>, specs: &[Loaded], arch: Arch, from: &str) -> Result<()> {
    if let Some(nvrtc) = nvrtc {
        nvrtc
            .check_arch(arch)
            .with_context(|| format!("target {arch} ({from})"))?;
    }
    let problems: Vec<String> = specs
        .iter()
        .filter_map(|l| check_spec_arch(&l.spec, arch).err())
        .map(|e| e.to_string())
        .collect();
    if !problems.is_empty() {
        bail!("target {arch} ({from}):\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Compiles every kernel of the specs and prints time, cache outcome, registers and spills.
pub fn compile(args: &CompileArgs, templates: Option<&Path>) -> Result<ExitCode> {
    let specs = load_specs(&args.specs.specs)?;
    let renderer = renderer(templates)?;
    let (arch, from) = target_arch(args.arch.as_deref())?;
    let compiler: Box<dyn Compiler> = match args.compiler {
        CompilerArg::Nvrtc => {
            let nvrtc = Nvrtc::new()?;
            println!("NVRTC library {}", nvrtc.location().display());
            check_target(Some(&nvrtc), &specs, arch, from)?;
            Box::new(nvrtc)
        }
        CompilerArg::Nvcc => {
            check_target(None, &specs, arch, from)?;
            Box::new(Nvcc::new()?)
        }
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
