//! Finding libnvrtc before cudarc needs it.
//!
//! cudarc opens libnvrtc by bare names (`libnvrtc.so`, `libnvrtc.so.13`, ...), which only the
//! dynamic loader's search path reaches, and panics when none opens. So we search the places a
//! user may have it ourselves, open the first that works by absolute path and keep it open: the
//! loader then answers cudarc's later open of the same soname with that library.
//!
//! Candidates, in order ([`NvrtcSearch::candidates`]):
//! 1. `EPC_NVRTC` (the library file, or a folder holding it). When it is set it is the only
//!    candidate: a missing or unusable file is an error naming it, never skipped.
//! 2. The dynamic loader's own path, by bare name.
//! 3. CUDA's folders: `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`.
//! 4. The project-local install of the test command (`.epc/pip/nvidia/cu13/lib`) in the folders
//!    above the running executable (a build under the repository's `target/` finds the
//!    repository's), never above the working folder: anyone can write to some folder above it
//!    (`/tmp`), and a library there would run its code in epc.
//! 5. The pip wheels in Python's site-packages (`nvidia-cuda-nvrtc`).
//!
//! A candidate that loads but lacks NVRTC's functions is refused, naming the file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Error;

/// File names of NVRTC, newest first.
const NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
/// Folders of the pip wheels (`nvidia-cuda-nvrtc` 13 and `nvidia-cuda-nvrtc-cu12`) under site-packages.
const WHEEL_DIRS: &[&str] = &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"];
/// The project-local install made by `scripts/test`.
const LOCAL_PIP: &str = ".epc/pip";
/// Functions epc calls; a library without them is not a usable NVRTC.
const SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLog",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcDestroyProgram",
];

/// The library that was loaded.
#[derive(Debug, Clone)]
pub struct NvrtcLibrary {
    /// Absolute path, or the bare name when the system loader found it.
    pub location: String,
}

static LOADED: OnceLock<Result<NvrtcLibrary, Error>> = OnceLock::new();

/// Loads libnvrtc once per process (see the module docs for the search order).
pub fn load() -> Result<&'static NvrtcLibrary, Error> {
    LOADED
        .get_or_init(|| NvrtcSearch::from_env().load())
        .as_ref()
        .map_err(clone_error)
}

/// Where to look for libnvrtc: the inputs of the search, so it can be tested without touching
/// the process's environment.
#[derive(Debug, Clone, Default)]
pub struct NvrtcSearch {
    /// `EPC_NVRTC`.
    pub epc_nvrtc: Option<PathBuf>,
    /// `CUDA_PATH`.
    pub cuda_path: Option<PathBuf>,
    /// The running executable.
    pub executable: Option<PathBuf>,
    /// Python's site-packages folders.
    pub site_packages: Vec<PathBuf>,
}

impl NvrtcSearch {
    /// The search of this process (site-packages are asked from `python3` only when
    /// `EPC_NVRTC` is unset).
    pub fn from_env() -> NvrtcSearch {
        let epc_nvrtc = std::env::var_os("EPC_NVRTC").map(PathBuf::from);
        NvrtcSearch {
            site_packages: if epc_nvrtc.is_some() {
                Vec::new()
            } else {
                python_site_packages()
            },
            epc_nvrtc,
            cuda_path: std::env::var_os("CUDA_PATH").map(PathBuf::from),
            executable: std::env::current_exe().ok(),
        }
    }

    /// Every candidate in order (see the module docs): absolute paths, or bare names for the
    /// loader's path.
    pub fn candidates(&self) -> Vec<String> {
        if let Some(p) = &self.epc_nvrtc {
            return if p.is_dir() {
                NAMES
                    .iter()
                    .map(|n| p.join(n).display().to_string())
                    .collect()
            } else {
                vec![p.display().to_string()]
            };
        }
        let mut out: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(cuda) = &self.cuda_path {
            dirs.push(cuda.join("lib64"));
        }
        dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
        if let Some(exe) = &self.executable {
            for root in exe.ancestors().skip(1) {
                dirs.extend(WHEEL_DIRS.iter().map(|w| root.join(LOCAL_PIP).join(w)));
            }
        }
        for site in &self.site_packages {
            dirs.extend(WHEEL_DIRS.iter().map(|w| site.join(w)));
        }
        for d in dirs {
            out.extend(NAMES.iter().map(|n| d.join(n).display().to_string()));
        }
        out.dedup();
        out
    }

    /// Loads the first usable candidate (uncached; the process's own search is cached).
    pub fn load(&self) -> Result<NvrtcLibrary, Error> {
        let explicit = self.epc_nvrtc.is_some();
        let mut tried = Vec::new();
        for candidate in self.candidates() {
            let is_path = candidate.contains('/');
            if is_path && !Path::new(&candidate).exists() {
                if explicit {
                    tried.push(format!("{candidate}: no such file (from EPC_NVRTC)"));
                }
                continue;
            }
            match open(&candidate) {
                Ok(lib) => {
                    preload_builtins(Path::new(&candidate));
                    tracing::debug!(library = %candidate, "loaded NVRTC");
                    return Ok(lib);
                }
                Err(why) => tried.push(format!("{candidate}: {why}")),
            }
        }
        if tried.is_empty() {
            tried.push(
                "no candidate file exists (the loader's path, CUDA_PATH, /usr/local/cuda, \
                 .epc/pip above the executable, site-packages)"
                    .into(),
            );
        }
        Err(Error::NvrtcNotFound { searched: tried })
    }
}

/// Opens one candidate and checks it exports NVRTC's functions; the library stays loaded.
fn open(candidate: &str) -> Result<NvrtcLibrary, String> {
    // SAFETY: loading a library runs its initializers; the candidates are only the places the
    // module docs list (chosen by the user or the system), and the library is never unloaded
    // (leaked below), so no symbol outlives it.
    let lib = unsafe { libloading::Library::new(candidate) }.map_err(|e| e.to_string())?;
    for symbol in SYMBOLS {
        // SAFETY: only the symbol's presence is checked; it is not called here.
        let found = unsafe { lib.get::<unsafe extern "C" fn()>(symbol.as_bytes()) };
        if found.is_err() {
            std::mem::forget(lib);
            return Err(format!("loads, but is not NVRTC: it lacks {symbol}"));
        }
    }
    std::mem::forget(lib);
    Ok(NvrtcLibrary {
        location: candidate.to_owned(),
    })
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::NvrtcNotFound { searched } => Error::NvrtcNotFound {
            searched: searched.clone(),
        },
        other => Error::Input(other.to_string()),
    }
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
