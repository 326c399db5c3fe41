//! Finding libnvrtc, by the search rule shared with NCCL ([`crate::libsearch`]).
//!
//! The first usable candidate is opened by its path and kept loaded for the life of the process,
//! and its functions are called through [`super::sys`], resolved from that very file.
//!
//! Candidates, in order ([`NvrtcSearch::candidates`]):
//! 1. `EPC_NVRTC` (the library file, or a folder holding it). When it is set it is the only
//!    candidate: a missing or unusable file is an error naming it, never skipped.
//! 2. The dynamic loader's own path, by bare name.
//! 3. CUDA's folders: `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`.
//! 4. The project's install of the test command (`.epc/pip/nvidia/cu13/lib`) in the folders
//!    above the running executable (a build under the repository's `target/` finds the
//!    repository's), never above the working folder: anyone can write to some folder above it
//!    (`/tmp`), and a library there would run its code in epc.
//! 5. The per-user install folder (`~/.local/share/epc/pip/nvidia/cu13/lib`).
//! 6. The pip wheels in Python's site-packages (`nvidia-cuda-nvrtc`).
//!
//! A candidate that loads but lacks one of NVRTC's functions, or reports a version older than
//! 12.0, is refused, naming the file (skipped with a warning when it was not named
//! by `EPC_NVRTC` and a later candidate works).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::sys::{Api, NVRTC_SUCCESS};
use crate::libsearch::{
    self, Candidate, CandidateSource, LibraryKind, Places, python_site_packages,
};
use crate::{Arch, Error};

/// The oldest NVRTC epc works with.
pub(crate) const MINIMUM_VERSION: (i32, i32) = (12, 0);

/// libnvrtc on disk: file names newest first, and the folders of the pip wheels
/// (`nvidia-cuda-nvrtc` 13 and `nvidia-cuda-nvrtc-cu12`).
pub(crate) const KIND: LibraryKind = LibraryKind {
    env_var: "EPC_NVRTC",
    file_names: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    wheel_dirs: &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
};

/// The library that was loaded.
#[derive(Debug, Clone)]
pub struct NvrtcLibrary {
    /// The file (for one found by bare name on the loader's path, the file the loader opened,
    /// read from `/proc/self/maps`; the bare name if that fails).
    pub location: PathBuf,
    /// How it was found.
    pub found_by: CandidateSource,
    /// (major, minor) version.
    pub version: (i32, i32),
    /// The real architectures it compiles for (`nvrtcGetSupportedArchs`), ascending.
    pub supported_archs: Vec<Arch>,
    api: Api,
}

impl NvrtcLibrary {
    /// The library's functions.
    pub(crate) fn api(&self) -> &Api {
        &self.api
    }
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
    /// The per-user install folder ([`libsearch::user_install_dir`]).
    pub user_install: Option<PathBuf>,
    /// Python's site-packages folders.
    pub site_packages: Vec<PathBuf>,
}

impl NvrtcSearch {
    /// The search of this process: `EPC_NVRTC` and `CUDA_PATH` (empty values count as unset),
    /// the executable, the per-user folder, and site-packages (asked from `python3` only when
    /// `EPC_NVRTC` is unset).
    pub fn from_env() -> NvrtcSearch {
        let epc_nvrtc = libsearch::env_path(KIND.env_var);
        NvrtcSearch {
            site_packages: if epc_nvrtc.is_some() {
                Vec::new()
            } else {
                python_site_packages()
            },
            epc_nvrtc,
            cuda_path: libsearch::env_path("CUDA_PATH"),
            executable: std::env::current_exe().ok(),
            user_install: libsearch::user_install_dir(),
        }
    }

    /// Every candidate in order (see the module docs): absolute paths, or bare names for the
    /// loader's path.
    pub fn candidates(&self) -> Vec<Candidate> {
        libsearch::candidates(
            &KIND,
            self.epc_nvrtc.as_deref(),
            &Places {
                cuda_path: self.cuda_path.as_deref(),
                executable: self.executable.as_deref(),
                user_install: self.user_install.as_deref(),
                site_packages: &self.site_packages,
            },
        )
    }

    /// Loads the first usable candidate (uncached; the process's own search is cached).
    pub fn load(&self) -> Result<NvrtcLibrary, Error> {
        let mut tried = Vec::new();
        let candidates = self.candidates();
        for candidate in &candidates {
            let explicit = candidate.source == CandidateSource::Env;
            let shown = candidate.location.display().to_string();
            if candidate.is_path() && !candidate.location.exists() {
                // A folder in EPC_NVRTC offers several names; a missing one is only an error
                // when none of them is there (below).
                if explicit && candidates.len() == 1 {
                    return Err(Error::NvrtcUnusable {
                        location: format!("{shown} (EPC_NVRTC)"),
                        detail: "no such file; set EPC_NVRTC to libnvrtc.so.13 or the folder \
                                 holding it, or unset it to search the usual places"
                            .into(),
                    });
                }
                if explicit {
                    tried.push(format!("{shown}: no such file"));
                }
                continue;
            }
            match open(candidate) {
                Ok(lib) => {
                    tracing::info!(
                        library = %lib.location.display(),
                        version = %format!("{}.{}", lib.version.0, lib.version.1),
                        found_by = match lib.found_by {
                            CandidateSource::Env => KIND.env_var,
                            other => other.describe(),
                        },
                        "loaded NVRTC"
                    );
                    return Ok(lib);
                }
                Err(Refusal::Unusable(why)) if explicit => {
                    return Err(Error::NvrtcUnusable {
                        location: format!("{shown} (EPC_NVRTC)"),
                        detail: why,
                    });
                }
                Err(Refusal::Unusable(why)) => {
                    tracing::warn!(library = %shown, "skipped: {why}");
                    tried.push(format!("{shown}: {why}"));
                }
                Err(Refusal::DoesNotOpen(why)) => tried.push(format!("{shown}: {why}")),
            }
        }
        if let Some(dir) = self.epc_nvrtc.as_ref() {
            return Err(Error::NvrtcUnusable {
                location: format!("{} (EPC_NVRTC)", dir.display()),
                detail: format!(
                    "none of {} is there and usable ({}); set EPC_NVRTC to the library file, or \
                     unset it to search the usual places",
                    KIND.file_names.join(", "),
                    tried.join("; ")
                ),
            });
        }
        if tried.is_empty() {
            tried.push(format!(
                "no candidate file exists ({})",
                libsearch::places_summary(&KIND)
            ));
        }
        Err(Error::NvrtcNotFound { searched: tried })
    }
}

/// Why a candidate was not used.
enum Refusal {
    /// The loader cannot open it (absent from the loader's path, not a library, wrong machine).
    DoesNotOpen(String),
    /// It loads but is not a usable NVRTC.
    Unusable(String),
}

/// Opens one candidate and checks it is a usable NVRTC; the library stays loaded.
fn open(candidate: &Candidate) -> Result<NvrtcLibrary, Refusal> {
    // SAFETY: loading a library runs its initializers; the candidates are only the places the
    // module docs list (chosen by the user or the system), and the library is never unloaded
    // (leaked below), so no symbol outlives it.
    let lib = unsafe { libloading::Library::new(&candidate.location) }
        .map_err(|e| Refusal::DoesNotOpen(e.to_string()))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: `lib` is never unloaded.
    let version_fn = unsafe { Api::version_of(lib) }
        .map_err(|why| Refusal::Unusable(format!("loads, but is not NVRTC: {why}")))?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes; nvrtcVersion needs no other state.
    let rc = unsafe { version_fn(&mut major, &mut minor) };
    if rc != NVRTC_SUCCESS {
        return Err(Refusal::Unusable(format!("nvrtcVersion returned {rc}")));
    }
    if (major, minor) < MINIMUM_VERSION {
        return Err(Refusal::Unusable(format!(
            "NVRTC {major}.{minor} is too old: epc needs NVRTC >= {}.{} (pip install \
             'nvidia-cuda-nvrtc==13.0.*')",
            MINIMUM_VERSION.0, MINIMUM_VERSION.1
        )));
    }
    // SAFETY: `lib` is a libnvrtc (it has nvrtcVersion) that is never unloaded.
    let api = unsafe { Api::resolve(lib) }.map_err(|why| {
        Refusal::Unusable(format!(
            "loads and reports NVRTC {major}.{minor}, but {why}"
        ))
    })?;
    let supported_archs = supported_archs(&api).map_err(Refusal::Unusable)?;
    let location = libsearch::resolved_location(candidate, version_fn as usize as u64);
    preload_builtins(&location);
    Ok(NvrtcLibrary {
        location,
        found_by: candidate.source,
        version: (major, minor),
        supported_archs,
        api,
    })
}

/// `nvrtcGetSupportedArchs`, ascending.
fn supported_archs(api: &Api) -> Result<Vec<Arch>, String> {
    let mut n = 0;
    // SAFETY: `n` is valid for writes.
    let rc = unsafe { (api.get_num_supported_archs)(&mut n) };
    if rc != NVRTC_SUCCESS || !(0..=1024).contains(&n) {
        return Err(format!("nvrtcGetNumSupportedArchs failed ({rc}, {n})"));
    }
    let mut archs = vec![0; n as usize];
    // SAFETY: `archs` holds the `n` ints NVRTC said it will write.
    let rc = unsafe { (api.get_supported_archs)(archs.as_mut_ptr()) };
    if rc != NVRTC_SUCCESS {
        return Err(format!("nvrtcGetSupportedArchs returned {rc}"));
    }
    let mut out: Vec<Arch> = archs
        .into_iter()
        .filter_map(|a| u32::try_from(a).ok().map(Arch::sm))
        .collect();
    out.sort_by_key(|a| a.number);
    out.dedup();
    Ok(out)
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::NvrtcNotFound { searched } => Error::NvrtcNotFound {
            searched: searched.clone(),
        },
        Error::NvrtcUnusable { location, detail } => Error::NvrtcUnusable {
            location: location.clone(),
            detail: detail.clone(),
        },
        other => Error::NvrtcUnusable {
            location: "libnvrtc".into(),
            detail: other.to_string(),
        },
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
