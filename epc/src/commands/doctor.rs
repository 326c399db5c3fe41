//! `epc doctor`: what epc finds on this machine, and the fix for each missing piece.
//!
//! Exit code: 0 when everything the detected situation needs is present; 1 when something is
//! missing or broken. Needed everywhere: a usable NVRTC and a writable cache folder. Needed with
//! a GPU: a driver that answers, and an NVRTC that compiles for the GPU's architecture. NCCL is
//! optional (only `--transport nccl` uses it), unless `EPC_NCCL` or `EPC_NCCL_INCLUDE` names
//! something that does not work: an explicit choice that fails is a problem.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use ep_codegen::builtin_specs;
use ep_runtime::libsearch::user_install_dir;
use ep_runtime::transport::NcclLibrary;
use ep_runtime::{Arch, CandidateSource, DriverInfo, Error, Gpu, KernelCache, Nvrtc, spec_needs};

/// One line of the report's verdict.
struct Report {
    problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, what: impl Into<String>) {
        self.problems.push(what.into());
    }
}

/// Runs `f`, turning a panic into an error message (doctor must answer on any machine).
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("{what} failed unexpectedly: {msg}")
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn user_pip() -> String {
    user_install_dir().map_or_else(
        || "~/.local/share/epc/pip".to_owned(),
        |d| d.display().to_string(),
    )
}

/// Prints the report; see the module docs for the exit code.
pub fn doctor() -> Result<ExitCode> {
    // A panic in a probe is reported as a problem, without the default hook's backtrace text.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Report {
        problems: Vec::new(),
    };
    let gpus = gpu_section(&mut report);
    println!();
    nvrtc_section(&mut report, &gpus);
    println!();
    nccl_section(&mut report);
    println!();
    cache_section(&mut report);
    println!();
    std::panic::set_hook(previous_hook);

    let have_gpu = !gpus.is_empty();
    if report.problems.is_empty() {
        println!(
            "ok: epc can {} here",
            if have_gpu {
                "compile and run kernels"
            } else {
                "check, render and compile kernels (running them needs a GPU)"
            }
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s):", report.problems.len());
        for p in &report.problems {
            println!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The GPUs and the driver; returns the GPUs' architectures (empty without a GPU).
fn gpu_section(report: &mut Report) -> Vec<Arch> {
    println!("GPU");
    match guarded("reading the driver", Gpu::probe) {
        Ok(Ok(DriverInfo {
            cuda_version,
            devices,
        })) => {
            println!(
                "  driver: supports CUDA {}.{}",
                cuda_version.0, cuda_version.1
            );
            if devices.is_empty() {
                println!("  no GPU: the driver loads but sees no device");
                println!(
                    "  fix (to run kernels): check CUDA_VISIBLE_DEVICES and nvidia-smi; compiling \
                     needs no GPU"
                );
            }
            for d in &devices {
                println!(
                    "  GPU {}: {}, {}, {}",
                    d.ordinal,
                    d.name,
                    d.arch,
                    gib(d.memory_bytes)
                );
            }
            devices.iter().map(|d| d.arch).collect()
        }
        Ok(Err(e @ Error::DriverNotFound { .. })) => {
            println!("  driver: none");
            println!("  no GPU: driver missing: {e}");
            println!(
                "  fix (to run kernels): a machine with an NVIDIA GPU and its driver; checking, \
                 rendering and compiling need none"
            );
            Vec::new()
        }
        Ok(Err(e)) => {
            println!("  no GPU: the driver loads but fails: {e}");
            println!("  fix: check the driver's installation (nvidia-smi must list the GPUs)");
            report.problem(format!("the CUDA driver fails: {e}"));
            Vec::new()
        }
        Err(why) => {
            println!("  no GPU: {why}");
            report.problem(why);
            Vec::new()
        }
    }
}

/// NVRTC: file, version, architectures; checks the GPUs' architectures against them.
fn nvrtc_section(report: &mut Report, gpus: &[Arch]) {
    println!("NVRTC (compiles the kernels; needed)");
    let fix = format!(
        "python3 -m pip install --target {} 'nvidia-cuda-nvrtc==13.0.*' (or scripts/test in a \
         checkout, which installs it into .epc/pip), or set EPC_NVRTC to libnvrtc.so.13 or its \
         folder",
        user_pip()
    );
    let nvrtc = match guarded("loading NVRTC", Nvrtc::new) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            println!("  missing: {e}");
            println!("  fix: {fix}");
            report.problem("no usable NVRTC");
            return;
        }
        Err(why) => {
            println!("  missing: {why}");
            println!("  fix: {fix}");
            report.problem(why);
            return;
        }
    };
    let lib = nvrtc.library();
    println!(
        "  file: {} (found by {})",
        lib.location.display(),
        found_by(lib.found_by, "EPC_NVRTC")
    );
    println!("  version: {}.{}", lib.version.0, lib.version.1);
    println!(
        "  architectures: {}",
        lib.supported_archs
            .iter()
            .map(Arch::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let targets: Vec<Arch> = if gpus.is_empty() {
        vec![Arch::SM90]
    } else {
        gpus.to_vec()
    };
    for arch in dedup(targets) {
        let from = if gpus.is_empty() {
            "the default target without a GPU"
        } else {
            "a GPU here"
        };
        match nvrtc.check_arch(arch) {
            Ok(()) => println!("  target {arch} ({from}): supported"),
            Err(e) => {
                println!("  target {arch} ({from}): {e}");
                report.problem(format!("NVRTC does not compile for {arch}"));
            }
        }
        let needing: Vec<String> = builtin_specs()
            .filter_map(|b| b.parse().ok())
            .filter_map(|spec| {
                spec_needs(&spec)
                    .filter(|n| n.minimum.number > arch.number)
                    .map(|n| format!("{} ({} needs {})", spec.name(), n.setting, n.minimum))
            })
            .collect();
        if !needing.is_empty() {
            println!(
                "  built-in specs that do not compile for {arch}: {}",
                needing.join(", ")
            );
        }
    }
}

fn dedup(mut archs: Vec<Arch>) -> Vec<Arch> {
    archs.sort_by_key(|a| a.number);
    archs.dedup();
    archs
}

fn found_by(source: CandidateSource, var: &str) -> String {
    match source {
        CandidateSource::Env => var.to_owned(),
        other => other.describe().to_owned(),
    }
}

/// NCCL: file, version, headers; optional unless named explicitly.
fn nccl_section(report: &mut Report) {
    println!("NCCL (only for --transport nccl; optional)");
    let explicit = ["EPC_NCCL", "EPC_NCCL_INCLUDE"]
        .into_iter()
        .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
        .collect::<Vec<_>>();
    let fix = format!(
        "python3 -m pip install --target {} nvidia-nccl-cu13 (NCCL >= 2.28 with its headers), or \
         set EPC_NCCL to libnccl.so.2 or its folder (and EPC_NCCL_INCLUDE to its include folder)",
        user_pip()
    );
    match guarded("loading NCCL", NcclLibrary::load) {
        Ok(Ok(lib)) => {
            println!(
                "  file: {} (found by {})",
                lib.location.display(),
                lib.found_by()
            );
            println!("  version: {}", lib.version);
            match lib.headers() {
                Ok(dir) => println!("  headers: {}", dir.display()),
                Err(e) => {
                    println!("  headers: missing: {e}");
                    println!(
                        "  fix: set EPC_NCCL_INCLUDE to the include folder of NCCL {} (nccl.h \
                         and nccl_device/)",
                        lib.version
                    );
                    if !explicit.is_empty() {
                        report.problem(format!("NCCL headers ({})", explicit.join(", ")));
                    }
                }
            }
        }
        Ok(Err(e)) => {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            println!("  not found: {first}");
            if let Error::NcclNotFound { searched } = &e {
                for s in searched.iter().filter(|s| !s.ends_with(": absent")) {
                    println!("    {s}");
                }
                let absent = searched.iter().filter(|s| s.ends_with(": absent")).count();
                println!(
                    "    and {absent} absent files in CUDA's folders, .epc/pip above the \
                     executable, the per-user folder {} and Python's site-packages",
                    user_pip()
                );
            }
            println!("  fix: {fix}");
            if !explicit.is_empty() {
                report.problem(format!("NCCL named by {} is unusable", explicit.join(", ")));
            }
        }
        Err(why) => {
            println!("  not found: {why}");
            println!("  fix: {fix}");
            report.problem(why);
        }
    }
}

/// The cache folder and whether it is writable.
fn cache_section(report: &mut Report) {
    let root = KernelCache::default_root();
    let from = if std::env::var_os("EPC_CACHE_DIR").is_some() {
        "EPC_CACHE_DIR"
    } else {
        "the default"
    };
    println!("cache (compiled kernels; needed)");
    println!("  folder: {} ({from})", root.display());
    match writable(&root) {
        Ok(()) => println!("  writable: yes"),
        Err(e) => {
            println!("  writable: no: {e}");
            println!("  fix: set EPC_CACHE_DIR to a folder you can write");
            report.problem(format!(
                "the cache folder {} is not writable",
                root.display()
            ));
        }
    }
}

/// Creates `dir` if needed and writes and removes a file in it.
fn writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe: PathBuf = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"epc doctor")?;
    std::fs::remove_file(&probe)
}
