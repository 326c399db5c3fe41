//! Finding libnvrtc before cudarc needs it.
//!
//! cudarc opens libnvrtc by bare names (`libnvrtc.so`, `libnvrtc.so.13`, ...), which only the
//! dynamic loader's search path reaches, and panics when none opens. So we search the places a
//! user may have it ourselves, open the first that works by absolute path and keep it open: the
//! loader then answers cudarc's later open of the same soname with that library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Error;

/// File names of NVRTC, newest first.
const NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
/// Folders of the pip wheels (`nvidia-cuda-nvrtc` 13 and `nvidia-cuda-nvrtc-cu12`) under site-packages.
const WHEEL_DIRS: &[&str] = &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"];
/// The project-local install made by `scripts/test`.
const LOCAL_PIP: &str = ".epc/pip";

/// The library that was loaded.
#[derive(Debug, Clone)]
pub struct NvrtcLibrary {
    /// Absolute path, or the bare name when the system loader found it.
    pub location: String,
}

static LOADED: OnceLock<Result<NvrtcLibrary, Vec<String>>> = OnceLock::new();

/// Loads libnvrtc once per process (see the module docs for the search order).
pub fn load() -> Result<&'static NvrtcLibrary, Error> {
    LOADED
        .get_or_init(search)
        .as_ref()
        .map_err(|searched| Error::NvrtcNotFound {
            searched: searched.clone(),
        })
}

/// Every candidate in order: `EPC_NVRTC`, the loader's own path, `CUDA_PATH`, `/usr/local/cuda`,
/// a project-local wheel (`.epc/pip` above the working directory or the executable), then the
/// wheel in Python's site-packages.
fn candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("EPC_NVRTC") {
        let p = PathBuf::from(p);
        if p.is_dir() {
            out.extend(NAMES.iter().map(|n| p.join(n).display().to_string()));
        } else {
            out.push(p.display().to_string());
        }
    }
    out.extend(NAMES.iter().map(|n| (*n).to_owned()));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cuda) = std::env::var_os("CUDA_PATH") {
        dirs.push(Path::new(&cuda).join("lib64"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    for root in roots {
        dirs.extend(WHEEL_DIRS.iter().map(|w| root.join(LOCAL_PIP).join(w)));
    }
    for site in python_site_packages() {
        dirs.extend(WHEEL_DIRS.iter().map(|w| site.join(w)));
    }
    for d in dirs {
        out.extend(NAMES.iter().map(|n| d.join(n).display().to_string()));
    }
    out.dedup();
    out
}

fn search() -> Result<NvrtcLibrary, Vec<String>> {
    let mut tried = Vec::new();
    for candidate in candidates() {
        let is_path = candidate.contains('/');
        if is_path && !Path::new(&candidate).exists() {
            continue;
        }
        // SAFETY: loading libnvrtc runs only its initializers, which have no preconditions; the
        // library is never unloaded (leaked below), so no symbol outlives it.
        match unsafe { libloading::Library::new(&candidate) } {
            Ok(lib) => {
                std::mem::forget(lib);
                preload_builtins(Path::new(&candidate));
                tracing::debug!(library = %candidate, "loaded NVRTC");
                return Ok(NvrtcLibrary {
                    location: candidate,
                });
            }
            Err(e) => tried.push(format!("{candidate}: {e}")),
        }
    }
    if tried.is_empty() {
        tried.push("no candidate file exists (EPC_NVRTC, CUDA_PATH, /usr/local/cuda, .epc/pip, site-packages)".into());
    }
    Err(tried)
}

/// NVRTC opens `libnvrtc-builtins.so.X.Y` by bare name at compile time, which fails when libnvrtc
/// came from a folder outside the loader's path (a pip wheel has no RUNPATH). Opening the builtins
/// beside it by absolute path first makes that later open find them.
fn preload_builtins(nvrtc: &Path) {
    let Some(dir) = nvrtc.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libnvrtc-builtins.so") {
            // SAFETY: as for libnvrtc itself: initializers only, never unloaded.
            match unsafe { libloading::Library::new(entry.path()) } {
                Ok(lib) => std::mem::forget(lib),
                Err(e) => {
                    tracing::debug!(library = %entry.path().display(), %e, "could not preload")
                }
            }
        }
    }
}

/// Python's site-packages folders, asked from `python3` (none when Python is absent); where the
/// pip wheels of NVRTC and NCCL live.
pub(crate) fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site, sys\nfor p in site.getsitepackages() + [site.getusersitepackages()]: print(p)";
    std::process::Command::new("python3")
        .args(["-c", script])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}
