//! Where epc looks for the shared libraries it loads at run time: one rule for NVRTC and NCCL.
//!
//! Candidates, in order (`NvrtcSearch::candidates`, `NcclSearch::candidates`):
//! 1. The library's variable (`EPC_NVRTC`, `EPC_NCCL`): the file, or a folder holding it. When it
//!    is set it is the only candidate: a missing, unloadable or unusable file is an error naming
//!    it, never skipped.
//! 2. The dynamic loader's own path, by bare name (`LD_LIBRARY_PATH`, the loader's cache).
//! 3. CUDA's folders: `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`.
//! 4. The project's installer folder, `.epc/pip/<wheel folder>`, in the folders above the running
//!    executable (a build under a repository's `target/` finds that repository's).
//! 5. The per-user installer folder, `<data dir>/epc/pip/<wheel folder>` ([`user_install_dir`]:
//!    `~/.local/share/epc/pip` on Linux, or `$XDG_DATA_HOME/epc/pip`).
//! 6. Python's site-packages, `<site-packages>/<wheel folder>` (asked from `python3`).
//!
//! Never a folder found by walking up from the working directory: anyone can write to some folder
//! above it (`/tmp`), and a library there would run its code inside epc. The working directory
//! plays no part in the search, except through a relative path the user put in a variable.
//!
//! A candidate that loads but is not a usable library of the kind searched (a function missing,
//! too old) is refused by name, never a panic.

use std::path::{Path, PathBuf};

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateSource {
    /// The library's variable (`EPC_NVRTC`, `EPC_NCCL`): must work, or it is an error.
    Env,
    /// A bare name for the dynamic loader.
    LoaderPath,
    /// `$CUDA_PATH/lib64` or `/usr/local/cuda/lib64`.
    Cuda,
    /// `.epc/pip` above the running executable.
    ProjectInstall,
    /// The per-user installer folder ([`user_install_dir`]).
    UserInstall,
    /// A wheel in Python's site-packages.
    SitePackages,
}

impl CandidateSource {
    /// How the place is named in messages (`the dynamic loader's path`, ...).
    pub fn describe(self) -> &'static str {
        match self {
            CandidateSource::Env => "the variable",
            CandidateSource::LoaderPath => "the dynamic loader's path",
            CandidateSource::Cuda => "CUDA's folder",
            CandidateSource::ProjectInstall => ".epc/pip above the executable",
            CandidateSource::UserInstall => "the per-user install folder",
            CandidateSource::SitePackages => "Python's site-packages",
        }
    }
}

/// One place a library may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// A file path, or a bare name (no `/`) for the dynamic loader.
    pub location: PathBuf,
    /// Where it came from.
    pub source: CandidateSource,
}

impl Candidate {
    /// Whether this is a file path rather than a bare name for the loader.
    pub fn is_path(&self) -> bool {
        self.location.components().count() > 1 || self.location.is_absolute()
    }
}

/// What one library looks like on disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LibraryKind {
    /// The variable naming it (`EPC_NVRTC`).
    pub env_var: &'static str,
    /// File names, preferred first; the loader is asked for each by bare name, and each is looked
    /// for in every folder.
    pub file_names: &'static [&'static str],
    /// Its folders inside a pip wheel, relative to site-packages (or to an installer folder).
    pub wheel_dirs: &'static [&'static str],
}

/// The places of a search besides the library's variable, read from the environment by
/// [`Places::from_env`] or set by hand in tests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Places<'a> {
    /// `CUDA_PATH`.
    pub cuda_path: Option<&'a Path>,
    /// The running executable.
    pub executable: Option<&'a Path>,
    /// The per-user installer folder.
    pub user_install: Option<&'a Path>,
    /// Python's site-packages folders.
    pub site_packages: &'a [PathBuf],
}

/// The project's installer folder, relative to a folder above the executable.
pub const PROJECT_INSTALL: &str = ".epc/pip";

/// The per-user installer folder: `<data dir>/epc/pip` (`~/.local/share/epc/pip` on Linux).
/// `python3 -m pip install --target <this folder> nvidia-nccl-cu13` installs a wheel there.
pub fn user_install_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("epc").join("pip"))
}

/// `CUDA_PATH` from the environment (empty counts as unset).
pub(crate) fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Every candidate of `kind`, in the order of the module docs.
pub(crate) fn candidates(
    kind: &LibraryKind,
    explicit: Option<&Path>,
    places: &Places<'_>,
) -> Vec<Candidate> {
    if let Some(p) = explicit {
        let files: Vec<PathBuf> = if p.is_dir() {
            kind.file_names.iter().map(|n| p.join(n)).collect()
        } else {
            vec![p.to_path_buf()]
        };
        return files
            .into_iter()
            .map(|location| Candidate {
                location,
                source: CandidateSource::Env,
            })
            .collect();
    }
    let mut out: Vec<Candidate> = kind
        .file_names
        .iter()
        .map(|n| Candidate {
            location: PathBuf::from(n),
            source: CandidateSource::LoaderPath,
        })
        .collect();
    let mut dirs: Vec<(PathBuf, CandidateSource)> = Vec::new();
    if let Some(cuda) = places.cuda_path {
        dirs.push((cuda.join("lib64"), CandidateSource::Cuda));
    }
    dirs.push((
        PathBuf::from("/usr/local/cuda/lib64"),
        CandidateSource::Cuda,
    ));
    if let Some(exe) = places.executable {
        for root in exe.ancestors().skip(1) {
            let install = root.join(PROJECT_INSTALL);
            dirs.extend(
                kind.wheel_dirs
                    .iter()
                    .map(|w| (install.join(w), CandidateSource::ProjectInstall)),
            );
        }
    }
    if let Some(user) = places.user_install {
        dirs.extend(
            kind.wheel_dirs
                .iter()
                .map(|w| (user.join(w), CandidateSource::UserInstall)),
        );
    }
    for site in places.site_packages {
        dirs.extend(
            kind.wheel_dirs
                .iter()
                .map(|w| (site.join(w), CandidateSource::SitePackages)),
        );
    }
    for (dir, source) in dirs {
        for name in kind.file_names {
            let location = dir.join(name);
            if !out.iter().any(|c| c.location == location) {
                out.push(Candidate { location, source });
            }
        }
    }
    out
}

/// A one-line summary of the places searched, for "not found" messages.
pub(crate) fn places_summary(kind: &LibraryKind) -> String {
    format!(
        "{} unset; searched the loader's path, $CUDA_PATH/lib64, /usr/local/cuda/lib64, \
         {PROJECT_INSTALL} above the executable, the per-user folder {}, and Python's \
         site-packages (under {})",
        kind.env_var,
        user_install_dir().map_or_else(
            || "(none: no data folder)".to_owned(),
            |d| d.display().to_string()
        ),
        kind.wheel_dirs.join(", ")
    )
}

/// Python's site-packages folders, asked from `python3` in isolated mode (so that nothing in the
/// working folder is imported); none when Python is absent. Where the pip wheels of NVRTC and
/// NCCL live.
pub(crate) fn python_site_packages() -> Vec<PathBuf> {
    let script = "import site, sys\nfor p in site.getsitepackages() + [site.getusersitepackages()]: print(p)";
    std::process::Command::new("python3")
        .args(["-I", "-c", script])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
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

/// The file the loader opened for `candidate`: the candidate itself when it is a path, else the
/// file holding `addr` (a function taken from it), read from `/proc/self/maps`.
pub(crate) fn resolved_location(candidate: &Candidate, addr: u64) -> PathBuf {
    if candidate.is_path() {
        return candidate.location.clone();
    }
    std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| mapped_file(&maps, addr))
        .unwrap_or_else(|| candidate.location.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: LibraryKind = LibraryKind {
        env_var: "EPC_X",
        file_names: &["libx.so.1", "libx.so"],
        wheel_dirs: &["nvidia/x/lib"],
    };

    #[test]
    fn places_come_in_the_documented_order() {
        let site = [PathBuf::from("/venv/site")];
        let places = Places {
            cuda_path: Some(Path::new("/opt/cuda")),
            executable: Some(Path::new("/repo/target/release/epc")),
            user_install: Some(Path::new("/home/u/.local/share/epc/pip")),
            site_packages: &site,
        };
        let got: Vec<(String, CandidateSource)> = candidates(&KIND, None, &places)
            .into_iter()
            .filter(|c| c.location.ends_with("libx.so.1"))
            .map(|c| (c.location.display().to_string(), c.source))
            .collect();
        use CandidateSource::*;
        assert_eq!(
            got,
            vec![
                ("libx.so.1".into(), LoaderPath),
                ("/opt/cuda/lib64/libx.so.1".into(), Cuda),
                ("/usr/local/cuda/lib64/libx.so.1".into(), Cuda),
                (
                    "/repo/target/release/.epc/pip/nvidia/x/lib/libx.so.1".into(),
                    ProjectInstall
                ),
                (
                    "/repo/target/.epc/pip/nvidia/x/lib/libx.so.1".into(),
                    ProjectInstall
                ),
                (
                    "/repo/.epc/pip/nvidia/x/lib/libx.so.1".into(),
                    ProjectInstall
                ),
                ("/.epc/pip/nvidia/x/lib/libx.so.1".into(), ProjectInstall),
                (
                    "/home/u/.local/share/epc/pip/nvidia/x/lib/libx.so.1".into(),
                    UserInstall
                ),
                ("/venv/site/nvidia/x/lib/libx.so.1".into(), SitePackages),
            ]
        );
    }

    #[test]
    fn bare_names_are_not_paths() {
        let bare = Candidate {
            location: PathBuf::from("libx.so.1"),
            source: CandidateSource::LoaderPath,
        };
        assert!(!bare.is_path());
        let relative = Candidate {
            location: PathBuf::from("lib/libx.so.1"),
            source: CandidateSource::Env,
        };
        assert!(relative.is_path());
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
}
