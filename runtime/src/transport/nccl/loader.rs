//! Finding libnccl (NCCL >= 2.28) and its headers at run time, by the search rule shared with
//! NVRTC ([`crate::libsearch`]).
//!
//! Candidates, in order ([`NcclSearch::candidates`]):
//! 1. `EPC_NCCL`: the library file, or a folder holding `libnccl.so.2`. When it is set, it is the
//!    only candidate: a missing, unloadable or too old file is an error naming it.
//! 2. The dynamic loader's own path, by bare name: `libnccl.so.2`, then `libnccl.so`.
//! 3. CUDA's folders: `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`.
//! 4. `.epc/pip/nvidia/nccl/lib` in the folders above the running executable.
//! 5. The per-user install folder (`~/.local/share/epc/pip/nvidia/nccl/lib`, where
//!    `python3 -m pip install --target ~/.local/share/epc/pip nvidia-nccl-cu13` puts it).
//! 6. The pip wheels in Python's site-packages (asked from `python3`):
//!    `nvidia/nccl/lib/libnccl.so.2`, the layout of both the `nvidia-nccl-cu13` wheel and the
//!    copy PyTorch installs.
//!
//! Never a folder found by walking up from the working directory. The first candidate that
//! loads, reports a version >= 2.28 and exports every function epc calls is kept loaded for the
//! life of the process (libraries that were tried and refused are never unloaded either:
//! unloading NCCL is not something it promises to survive).
//!
//! The headers are needed to compile the device side of the transport (the peer table kernel,
//! [`super::kernels`]); their version must equal the library's, as NCCL's structs change layout
//! between versions. They are looked for in `EPC_NCCL_INCLUDE` (only there when it is set), else
//! `<library folder>/../include` (the wheel layout `nvidia/nccl/{lib,include}`), else
//! `/usr/include` for a library under `/usr/lib*`.

use std::ffi::c_int;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::sys::{Api, GetVersion, NCCL_SUCCESS, symbol};
pub use super::version::NcclVersion;
use crate::Error;
use crate::libsearch::{self, LibraryKind, Places};
pub use crate::libsearch::{Candidate, CandidateSource};

/// libnccl on disk: NCCL 2's file names, and its folder in a pip wheel under site-packages.
pub(crate) const KIND: LibraryKind = LibraryKind {
    env_var: "EPC_NCCL",
    file_names: &["libnccl.so.2", "libnccl.so"],
    wheel_dirs: &["nvidia/nccl/lib"],
};
/// A header of NCCL's device API that the transport's kernels include.
const DEVICE_HEADER: &str = "nccl_device/impl/core__funcs.h";

/// The loaded libnccl.
pub struct NcclLibrary {
    /// The library file (for one found by bare name on the loader's path, the file the loader
    /// opened, read from `/proc/self/maps`; the bare name if that fails).
    pub location: PathBuf,
    /// Its version (`ncclGetVersion`).
    pub version: NcclVersion,
    /// The folder holding its `nccl.h` and `nccl_device/`, of the same version; `None` when not
    /// found ([`NcclLibrary::headers`] then says where it looked).
    pub include_dir: Option<PathBuf>,
    /// Why `include_dir` is `None`.
    headers_problem: Option<String>,
    /// How the library was found.
    found_by: &'static str,
    api: Api,
}

impl fmt::Debug for NcclLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclLibrary")
            .field("location", &self.location)
            .field("version", &self.version)
            .field("include_dir", &self.include_dir)
            .field("found_by", &self.found_by)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for NcclLibrary {
    /// `NCCL 2.28.3 at /usr/lib/x86_64-linux-gnu/libnccl.so.2.28.3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NCCL {} at {}", self.version, self.location.display())
    }
}

static LOADED: OnceLock<Result<NcclLibrary, Error>> = OnceLock::new();

impl NcclLibrary {
    /// Finds and loads libnccl once per process, from the environment ([`NcclSearch::from_env`];
    /// see the module docs for the order), and keeps it loaded.
    pub fn load() -> Result<&'static NcclLibrary, Error> {
        match LOADED.get_or_init(|| NcclSearch::from_env().load()) {
            Ok(lib) => Ok(lib),
            Err(e) => Err(clone_error(e)),
        }
    }

    /// The include folder, or [`Error::NcclHeaders`] saying where it was looked for.
    pub fn headers(&self) -> Result<&Path, Error> {
        match (&self.include_dir, &self.headers_problem) {
            (Some(dir), _) => Ok(dir),
            (None, problem) => Err(Error::NcclHeaders {
                detail: problem
                    .clone()
                    .unwrap_or_else(|| format!("none found for {self}")),
            }),
        }
    }

    /// How the library was found (`EPC_NCCL`, the dynamic loader's path, site-packages).
    pub fn found_by(&self) -> &'static str {
        self.found_by
    }

    /// The library's functions.
    pub(crate) fn api(&self) -> &Api {
        &self.api
    }
}

/// What the search reads from the environment, explicit so that it can be tested without
/// touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct NcclSearch {
    /// `EPC_NCCL`: a library file or a folder holding `libnccl.so.2`.
    pub epc_nccl: Option<PathBuf>,
    /// `EPC_NCCL_INCLUDE`: the folder holding `nccl.h` and `nccl_device/`.
    pub epc_nccl_include: Option<PathBuf>,
    /// `CUDA_PATH`.
    pub cuda_path: Option<PathBuf>,
    /// The running executable.
    pub executable: Option<PathBuf>,
    /// The per-user install folder ([`libsearch::user_install_dir`]).
    pub user_install: Option<PathBuf>,
    /// Python's site-packages folders.
    pub site_packages: Vec<PathBuf>,
}

impl NcclSearch {
    /// `EPC_NCCL`, `EPC_NCCL_INCLUDE` and `CUDA_PATH` (empty values count as unset), the
    /// executable, the per-user folder and, when `EPC_NCCL` is unset, the site-packages folders
    /// `python3` reports (none when Python is absent).
    pub fn from_env() -> NcclSearch {
        let epc_nccl = libsearch::env_path(KIND.env_var);
        // Python is only asked when its answer is used.
        let site_packages = if epc_nccl.is_none() {
            libsearch::python_site_packages()
        } else {
            Vec::new()
        };
        NcclSearch {
            epc_nccl,
            epc_nccl_include: libsearch::env_path("EPC_NCCL_INCLUDE"),
            cuda_path: libsearch::env_path("CUDA_PATH"),
            executable: std::env::current_exe().ok(),
            user_install: libsearch::user_install_dir(),
            site_packages,
        }
    }

    /// Every candidate, in order (see the module docs).
    pub fn candidates(&self) -> Vec<Candidate> {
        libsearch::candidates(
            &KIND,
            self.epc_nccl.as_deref(),
            &Places {
                cuda_path: self.cuda_path.as_deref(),
                executable: self.executable.as_deref(),
                user_install: self.user_install.as_deref(),
                site_packages: &self.site_packages,
            },
        )
    }

    /// Loads the first usable candidate (uncached: [`NcclLibrary::load`] caches), and finds its
    /// headers. A library that was opened is never unloaded.
    pub fn load(&self) -> Result<NcclLibrary, Error> {
        let mut tried = Vec::new();
        let candidates = self.candidates();
        for candidate in &candidates {
            let explicit = candidate.source == CandidateSource::Env;
            let shown = candidate.location.display().to_string();
            if candidate.is_path() && !candidate.location.exists() {
                if !explicit {
                    tried.push(format!("{shown}: absent"));
                }
                continue;
            }
            match open(candidate) {
                Ok(mut lib) => {
                    match self.find_headers(&lib.location, lib.version) {
                        Ok(dir) => lib.include_dir = Some(dir),
                        Err(e) if self.epc_nccl_include.is_some() => return Err(e),
                        Err(e) => {
                            // Reported when a window needs them (NcclLibrary::headers).
                            tracing::debug!(library = %lib, "{e}");
                            lib.headers_problem = Some(match e {
                                Error::NcclHeaders { detail } => detail,
                                e => e.to_string(),
                            });
                        }
                    }
                    tracing::info!(
                        library = %lib.location.display(),
                        version = %lib.version,
                        found_by = lib.found_by,
                        include = ?lib.include_dir,
                        "loaded NCCL"
                    );
                    return Ok(lib);
                }
                Err(e) if explicit => return Err(e),
                Err(Error::NcclUnusable { detail, .. }) => {
                    if !detail.starts_with("the dynamic loader cannot open it") {
                        tracing::warn!(library = %shown, "skipped: {detail}");
                    }
                    tried.push(format!("{shown}: {detail}"))
                }
                Err(e) => {
                    tracing::warn!(library = %shown, "skipped: {e}");
                    tried.push(format!("{shown}: {e}"))
                }
            }
        }
        if let Some(named) = &self.epc_nccl {
            // Every file EPC_NCCL offered is absent.
            let first = candidates
                .first()
                .map_or_else(|| named.clone(), |c| c.location.clone());
            return Err(Error::NcclUnusable {
                location: format!("{} (EPC_NCCL)", first.display()),
                detail: "no such file; set EPC_NCCL to libnccl.so.2 or the folder holding it, or \
                         unset it to search the usual places"
                    .into(),
            });
        }
        Err(Error::NcclNotFound { searched: tried })
    }

    /// The folders to look for headers in, in order, for the library at `library`.
    pub fn header_candidates(&self, library: &Path) -> Vec<PathBuf> {
        if let Some(dir) = &self.epc_nccl_include {
            return vec![dir.clone()];
        }
        let canonical = library.canonicalize().ok();
        let mut out: Vec<PathBuf> = Vec::new();
        for lib in std::iter::once(library).chain(canonical.as_deref()) {
            if let Some(prefix) = lib.parent().and_then(Path::parent) {
                let dir = prefix.join("include");
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
        }
        let under_usr_lib = std::iter::once(library)
            .chain(canonical.as_deref())
            .any(|p| p.to_string_lossy().starts_with("/usr/lib"));
        let usr = PathBuf::from("/usr/include");
        if under_usr_lib && !out.contains(&usr) {
            out.push(usr);
        }
        out
    }

    /// The first header folder for `library` that holds `nccl.h` of exactly `version` and NCCL's
    /// device API headers. With `EPC_NCCL_INCLUDE` set, only that folder, and any problem with it
    /// is the error.
    pub fn find_headers(&self, library: &Path, version: NcclVersion) -> Result<PathBuf, Error> {
        let explicit = self.epc_nccl_include.is_some();
        let mut tried = Vec::new();
        for dir in self.header_candidates(library) {
            match check_header_dir(&dir, version) {
                Ok(()) => return Ok(dir),
                Err(why) if explicit => {
                    return Err(Error::NcclHeaders {
                        detail: format!(
                            "EPC_NCCL_INCLUDE={}: {why}; it must name the include folder of \
                             NCCL {version} (holding nccl.h and nccl_device/), the library \
                             being {}",
                            dir.display(),
                            library.display()
                        ),
                    });
                }
                Err(why) => tried.push(format!("{}: {why}", dir.display())),
            }
        }
        Err(Error::NcclHeaders {
            detail: format!(
                "no headers of NCCL {version} found for {}. Searched:\n  {}\nSet EPC_NCCL_INCLUDE \
                 to the folder holding nccl.h and nccl_device/ of NCCL {version} (the libnccl-dev \
                 package of that version, or the include folder of the nvidia-nccl wheel)",
                library.display(),
                if tried.is_empty() {
                    "(no candidate folder)".to_owned()
                } else {
                    tried.join("\n  ")
                }
            ),
        })
    }
}

/// Why `dir` is not the include folder of NCCL `version`, if it is not.
fn check_header_dir(dir: &Path, version: NcclVersion) -> Result<(), String> {
    let nccl_h = dir.join("nccl.h");
    let text = match std::fs::read_to_string(&nccl_h) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no nccl.h".into()),
        Err(e) => return Err(format!("cannot read nccl.h: {e}")),
    };
    let found = NcclVersion::from_header(&text).map_err(|e| format!("nccl.h: {e}"))?;
    if found != version {
        return Err(format!(
            "nccl.h is NCCL {found} but the library is NCCL {version} (their structs differ \
             between versions)"
        ));
    }
    if !dir.join(DEVICE_HEADER).is_file() {
        return Err(format!(
            "nccl.h is NCCL {found} but {DEVICE_HEADER} (NCCL's device API) is missing"
        ));
    }
    Ok(())
}

/// Opens one candidate; the error says why it is not usable.
fn open(candidate: &Candidate) -> Result<NcclLibrary, Error> {
    let shown = candidate.location.display().to_string();
    let from = match candidate.source {
        CandidateSource::Env => KIND.env_var,
        other => other.describe(),
    };
    let unusable = |detail: String| Error::NcclUnusable {
        location: format!("{shown} ({from})"),
        detail,
    };
    // SAFETY: loading libnccl runs only its initializers, which have no preconditions. The
    // library is never unloaded (leaked below), so no function taken from it outlives it.
    let lib = unsafe { libloading::Library::new(&candidate.location) }
        .map_err(|e| unusable(format!("the dynamic loader cannot open it: {e}")))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: `GetVersion` is the prototype of `ncclGetVersion` in every NCCL 2 release.
    let get_version: GetVersion = unsafe { symbol(lib, "ncclGetVersion") }
        .map_err(|e| unusable(format!("{e}; is it NCCL?")))?;
    let mut code: c_int = 0;
    // SAFETY: `code` is valid for writes; ncclGetVersion needs no initialized communicator.
    let rc = unsafe { get_version(&mut code) };
    if rc != NCCL_SUCCESS {
        return Err(unusable(format!("ncclGetVersion returned {rc}")));
    }
    let version = NcclVersion::from_code(code)
        .ok_or_else(|| unusable(format!("ncclGetVersion reported {code}")))?;
    let location = libsearch::resolved_location(candidate, get_version as usize as u64);
    let where_ = location.display().to_string();
    version.check_supported(&where_)?;
    // SAFETY: `lib` is a libnccl that is never unloaded.
    let api = unsafe { Api::resolve(lib) }.map_err(|e| Error::NcclUnusable {
        location: format!("{where_} ({from})"),
        detail: format!("{e}, although it reports NCCL {version}"),
    })?;
    Ok(NcclLibrary {
        location,
        version,
        include_dir: None,
        headers_problem: None,
        found_by: from,
        api,
    })
}

/// A copy of an error the search produced (they are all made of strings), so the cached
/// failure can be returned to every caller.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::NcclNotFound { searched } => Error::NcclNotFound {
            searched: searched.clone(),
        },
        Error::NcclUnusable { location, detail } => Error::NcclUnusable {
            location: location.clone(),
            detail: detail.clone(),
        },
        Error::NcclTooOld { version, location } => Error::NcclTooOld {
            version: version.clone(),
            location: location.clone(),
        },
        Error::NcclHeaders { detail } => Error::NcclHeaders {
            detail: detail.clone(),
        },
        other => Error::NcclUnusable {
            location: "libnccl".into(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_codes_decode_both_schemes() {
        let v = NcclVersion::from_code(22803).unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 28, 3));
        assert_eq!(v.to_string(), "2.28.3");
        assert_eq!(v.code(), 22803);
        let old = NcclVersion::from_code(2708).unwrap();
        assert_eq!((old.major, old.minor, old.patch), (2, 7, 8));
        assert_eq!(NcclVersion::from_code(0), None);
        assert_eq!(NcclVersion::from_code(-1), None);
    }

    #[test]
    fn header_candidates_follow_the_library() {
        let search = NcclSearch::default();
        let wheel = Path::new("/site/nvidia/nccl/lib/libnccl.so.2");
        assert_eq!(
            search.header_candidates(wheel),
            vec![PathBuf::from("/site/nvidia/nccl/include")]
        );
        let system = Path::new("/usr/lib/x86_64-linux-gnu/libnccl.so.2");
        assert_eq!(
            search.header_candidates(system),
            vec![
                PathBuf::from("/usr/lib/include"),
                PathBuf::from("/usr/include")
            ]
        );
        let explicit = NcclSearch {
            epc_nccl_include: Some(PathBuf::from("/opt/nccl/include")),
            ..NcclSearch::default()
        };
        assert_eq!(
            explicit.header_candidates(system),
            vec![PathBuf::from("/opt/nccl/include")]
        );
    }
}
