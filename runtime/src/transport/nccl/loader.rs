//! Finding libnccl (NCCL >= 2.28) and its headers at run time, the way libnvrtc is found.
//!
//! Candidates, in order ([`NcclSearch::candidates`]):
//! 1. `EPC_NCCL`: the library file, or a folder holding `libnccl.so.2`. When it is set, it is the
//!    only candidate: a missing, unloadable or too old file is an error naming it.
//! 2. The dynamic loader's own path, by bare name: `libnccl.so.2`, then `libnccl.so`.
//! 3. The pip wheels in Python's site-packages (asked from `python3`):
//!    `nvidia/nccl/lib/libnccl.so.2`, the layout of both the `nvidia-nccl-cu13` wheel and the
//!    copy PyTorch installs.
//!
//! Never a folder found by walking up from the working directory or the executable. The first
//! candidate that loads, reports a version >= 2.28 and exports every function epc calls is kept
//! loaded for the life of the process (libraries that were tried and refused are never unloaded
//! either: unloading NCCL is not something it promises to survive).
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

/// File name of NCCL 2 in a folder.
const FILE_NAME: &str = "libnccl.so.2";
/// Names tried on the dynamic loader's path.
const BARE_NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];
/// The library's folder in a pip wheel, under site-packages.
const WHEEL_LIB: &str = "nvidia/nccl/lib";
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

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateSource {
    /// `EPC_NCCL`: must work, or it is an error.
    Env,
    /// A bare name for the dynamic loader.
    LoaderPath,
    /// A wheel in Python's site-packages.
    SitePackages,
}

impl CandidateSource {
    fn describe(self) -> &'static str {
        match self {
            CandidateSource::Env => "EPC_NCCL",
            CandidateSource::LoaderPath => "the dynamic loader's path",
            CandidateSource::SitePackages => "Python's site-packages",
        }
    }
}

/// One place libnccl may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// A file path, or a bare name (no `/`) for the dynamic loader.
    pub location: PathBuf,
    /// Where it came from.
    pub source: CandidateSource,
}

/// What the search reads from the environment, explicit so that it can be tested without
/// touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct NcclSearch {
    /// `EPC_NCCL`: a library file or a folder holding `libnccl.so.2`.
    pub epc_nccl: Option<PathBuf>,
    /// `EPC_NCCL_INCLUDE`: the folder holding `nccl.h` and `nccl_device/`.
    pub epc_nccl_include: Option<PathBuf>,
    /// Python's site-packages folders.
    pub site_packages: Vec<PathBuf>,
}

impl NcclSearch {
    /// `EPC_NCCL`, `EPC_NCCL_INCLUDE` (empty values count as unset) and, when `EPC_NCCL` is
    /// unset, the site-packages folders `python3` reports (none when Python is absent).
    pub fn from_env() -> NcclSearch {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let epc_nccl = var("EPC_NCCL");
        // Python is only asked when its answer is used.
        let site_packages = if epc_nccl.is_none() {
            crate::jit::nvrtc::loader::python_site_packages()
        } else {
            Vec::new()
        };
        NcclSearch {
            epc_nccl,
            epc_nccl_include: var("EPC_NCCL_INCLUDE"),
            site_packages,
        }
    }

    /// Every candidate, in order (see the module docs).
    pub fn candidates(&self) -> Vec<Candidate> {
        if let Some(p) = &self.epc_nccl {
            let location = if p.is_dir() {
                p.join(FILE_NAME)
            } else {
                p.clone()
            };
            return vec![Candidate {
                location,
                source: CandidateSource::Env,
            }];
        }
        let mut out: Vec<Candidate> = BARE_NAMES
            .iter()
            .map(|n| Candidate {
                location: PathBuf::from(n),
                source: CandidateSource::LoaderPath,
            })
            .collect();
        for site in &self.site_packages {
            let location = site.join(WHEEL_LIB).join(FILE_NAME);
            if !out.iter().any(|c| c.location == location) {
                out.push(Candidate {
                    location,
                    source: CandidateSource::SitePackages,
                });
            }
        }
        out
    }

    /// Loads the first usable candidate (uncached: [`NcclLibrary::load`] caches), and finds its
    /// headers. A library that was opened is never unloaded.
    pub fn load(&self) -> Result<NcclLibrary, Error> {
        let mut tried = Vec::new();
        for candidate in self.candidates() {
            let explicit = candidate.source == CandidateSource::Env;
            let shown = candidate.location.display().to_string();
            let is_path = shown.contains('/');
            if is_path && !candidate.location.exists() {
                if explicit {
                    return Err(Error::NcclUnusable {
                        location: format!("{shown} (EPC_NCCL)"),
                        detail: "no such file; set EPC_NCCL to libnccl.so.2 or the folder \
                                 holding it, or unset it to search the usual places"
                            .into(),
                    });
                }
                tried.push(format!("{shown}: absent"));
                continue;
            }
            match open(&candidate) {
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
                Err(Error::NcclUnusable { detail, .. }) => tried.push(format!("{shown}: {detail}")),
                Err(e) => tried.push(format!("{shown}: {e}")),
            }
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
    let from = candidate.source.describe();
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
    let location = if shown.contains('/') {
        candidate.location.clone()
    } else {
        std::fs::read_to_string("/proc/self/maps")
            .ok()
            .and_then(|maps| mapped_file(&maps, get_version as usize as u64))
            .unwrap_or_else(|| candidate.location.clone())
    };
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

/// The file mapped at `addr` according to `maps` (the text of `/proc/self/maps`).
pub(crate) fn mapped_file(maps: &str, addr: u64) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        // address range, perms, offset, dev, inode, then the path (which may hold spaces).
        let mut rest = line;
        let mut fields = [""; 5];
        for field in &mut fields {
            rest = rest.trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            *field = &rest[..end];
            rest = &rest[end..];
        }
        let (start, end) = fields[0].split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        let path = rest.trim();
        ((start..end).contains(&addr) && path.starts_with('/')).then(|| PathBuf::from(path))
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
    fn maps_lookup_finds_the_file_holding_an_address() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 123   /usr/lib/x86_64-linux-gnu/libnccl.so.2.28.3
7f0000001000-7f0000100000 r-xp 00001000 08:01 123   /usr/lib/x86_64-linux-gnu/libnccl.so.2.28.3
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
7f0000200000-7f0000300000 r-xp 00000000 08:01 9 /opt/my libs/libnccl.so.2
";
        assert_eq!(
            mapped_file(maps, 0x7f0000002000),
            Some(PathBuf::from("/usr/lib/x86_64-linux-gnu/libnccl.so.2.28.3"))
        );
        assert_eq!(mapped_file(maps, 0x7f0000150000), None);
        assert_eq!(
            mapped_file(maps, 0x7f0000250000),
            Some(PathBuf::from("/opt/my libs/libnccl.so.2"))
        );
        assert_eq!(mapped_file(maps, 0x10), None);
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
