//! The on-disk cubin cache.
//!
//! One folder per compiled kernel, named `<spec>.<kernel>-<key>`, holding `kernel.cu`,
//! `kernel.cubin` and `metadata.json`. The key is a SHA-256 over everything that changes the
//! binary: generator version, compiler id and version, options, architecture and the rendered
//! source. An entry is built in a temporary folder and renamed into place, so readers see whole
//! entries or none; when two processes race, the loser deletes its copy and uses the winner's.
//! Every read checks the cubin's size and digest; a corrupt or truncated entry is removed with a
//! warning and rebuilt.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ep_codegen::{GENERATOR_VERSION, KernelSource, hex};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jit::compiler::{Compiler, KernelStats};
use crate::{Arch, Error};

/// How a cubin was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from a valid entry.
    Hit,
    /// Compiled: there was no entry.
    Miss,
    /// Compiled: the entry was corrupt and has been replaced.
    Rebuilt,
}

/// What `metadata.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The full cache key.
    pub key: String,
    /// Kernel file name.
    pub kernel: String,
    /// Compiler id.
    pub compiler: String,
    /// Options passed to it.
    pub options: Vec<String>,
    /// Target architecture.
    pub arch: String,
    /// Size of `kernel.cubin`.
    pub cubin_bytes: u64,
    /// SHA-256 of `kernel.cubin`.
    pub cubin_sha256: String,
    /// Wall time of the compile, in milliseconds.
    pub compile_ms: f64,
    /// Registers, stack frame and spills.
    pub stats: KernelStats,
    /// The compile log.
    pub log: String,
    /// Seconds since the Unix epoch when the entry was written.
    pub created_unix: u64,
}

/// A cubin with its provenance.
#[derive(Debug, Clone)]
pub struct CachedCubin {
    /// The binary.
    pub cubin: Vec<u8>,
    /// Hit, miss or rebuild.
    pub outcome: CacheOutcome,
    /// The entry's metadata (compile time and statistics are those of the original compile).
    pub metadata: Metadata,
    /// The entry's folder.
    pub dir: PathBuf,
}

/// A cache rooted at one folder.
#[derive(Debug, Clone)]
pub struct KernelCache {
    root: PathBuf,
}

impl KernelCache {
    /// A cache in `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> KernelCache {
        KernelCache { root: root.into() }
    }

    /// `$EPC_CACHE_DIR`, else `<user cache dir>/epc`, else `.epc/cache`.
    pub fn default_root() -> PathBuf {
        std::env::var_os("EPC_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("epc")))
            .unwrap_or_else(|| PathBuf::from(".epc/cache"))
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of a kernel compiled by `compiler` for `arch`.
    pub fn key(compiler: &dyn Compiler, kernel: &KernelSource, arch: Arch) -> String {
        let mut h = Sha256::new();
        for part in [
            GENERATOR_VERSION.to_owned(),
            compiler.id(),
            compiler.options(arch).join("\u{1f}"),
            arch.to_string(),
            kernel.entries.join(","),
            kernel.source.clone(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex(&h.finalize())
    }

    /// The folder an entry lives in: `<spec>.<kernel>-<first 16 digits of key>`, refused
    /// ([`Error::UnsafeName`]) unless that is one plain folder name inside the cache.
    pub fn entry_dir(&self, kernel: &KernelSource, key: &str) -> Result<PathBuf, Error> {
        let stem = kernel.file_name.trim_end_matches(".cu");
        let short = key.get(..16).unwrap_or(key);
        join_name(&self.root, &format!("{stem}-{short}"), "kernel cache entry")
    }

    /// Returns the cubin from the cache, compiling (and storing) it when absent or corrupt.
    pub fn get_or_compile(
        &self,
        compiler: &dyn Compiler,
        kernel: &KernelSource,
        arch: Arch,
    ) -> Result<CachedCubin, Error> {
        let key = Self::key(compiler, kernel, arch);
        let dir = self.entry_dir(kernel, &key)?;
        let mut outcome = CacheOutcome::Miss;
        if dir.exists() {
            match read_entry(&dir, &key) {
                Ok((cubin, metadata)) => {
                    tracing::debug!(entry = %dir.display(), "kernel cache hit");
                    return Ok(CachedCubin {
                        cubin,
                        outcome: CacheOutcome::Hit,
                        metadata,
                        dir,
                    });
                }
                Err(why) => {
                    tracing::warn!(entry = %dir.display(), %why, "corrupt kernel cache entry; rebuilding it");
                    remove_entry(&self.root, &dir)?;
                    outcome = CacheOutcome::Rebuilt;
                }
            }
        }

        let (cubin, metadata) = compile(compiler, kernel, arch, key.clone(), &self.root)?;
        tracing::info!(
            kernel = %kernel.file_name,
            %arch,
            compile_ms = metadata.compile_ms,
            "compiled"
        );
        if install_entry(&self.root, &dir, kernel, &cubin, &metadata)? {
            return Ok(CachedCubin {
                cubin,
                outcome,
                metadata,
                dir,
            });
        }
        // Another process installed the same entry first: use theirs (it is the same binary).
        let (cubin, theirs) = read_entry(&dir, &key).map_err(|why| Error::Cache {
            path: dir.clone(),
            source: std::io::Error::other(format!(
                "entry installed by another process is invalid: {why}"
            )),
        })?;
        Ok(CachedCubin {
            cubin,
            outcome,
            metadata: theirs,
            dir,
        })
    }
}

/// `folder/name`, refused with [`Error::UnsafeName`] unless `name` is one plain file or folder
/// name ([`ep_codegen::join_component`]).
pub(crate) fn join_name(folder: &Path, name: &str, what: &'static str) -> Result<PathBuf, Error> {
    ep_codegen::join_component(folder, name, what).map_err(|reason| Error::UnsafeName {
        folder: folder.to_path_buf(),
        reason,
    })
}

/// Compiles without reading or writing any cache entry (`epc compile --no-cache`); a source the
/// compiler rejects is still saved under the default cache folder's `failed/`.
pub fn compile_uncached(
    compiler: &dyn Compiler,
    kernel: &KernelSource,
    arch: Arch,
) -> Result<CachedCubin, Error> {
    let key = KernelCache::key(compiler, kernel, arch);
    let (cubin, metadata) = compile(compiler, kernel, arch, key, &KernelCache::default_root())?;
    Ok(CachedCubin {
        cubin,
        outcome: CacheOutcome::Miss,
        metadata,
        dir: PathBuf::new(),
    })
}

/// Writes a source the compiler rejected to `<root>/failed/<file name>` and returns the path
/// (`None`, with a warning, when it cannot be written).
pub fn save_failed_source(root: &Path, file_name: &str, source: &str) -> Option<PathBuf> {
    let dir = root.join("failed");
    // The name comes from a spec name and a kernel name: it must stay one file inside `dir`.
    let path = match join_name(&dir, file_name, "kernel file") {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!(%e, "could not save the failing source");
            return None;
        }
    };
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, source)) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(file = %path.display(), %e, "could not save the failing source");
            None
        }
    }
}

/// Runs the compiler and describes the result; a rejected source is saved under
/// `<failed_root>/failed/` and the error names that file.
fn compile(
    compiler: &dyn Compiler,
    kernel: &KernelSource,
    arch: Arch,
    key: String,
    failed_root: &Path,
) -> Result<(Vec<u8>, Metadata), Error> {
    let started = Instant::now();
    let output = compiler
        .compile_to_cubin(kernel, arch)
        .map_err(|e| match e {
            Error::Compile {
                compiler,
                kernel: name,
                arch,
                options,
                log,
                source_file: None,
            } => Error::Compile {
                compiler,
                source_file: save_failed_source(failed_root, &kernel.file_name, &kernel.source),
                kernel: name,
                arch,
                options,
                log,
            },
            other => other,
        })?;
    let compile_time = started.elapsed();
    let metadata = Metadata {
        key,
        kernel: kernel.file_name.clone(),
        compiler: compiler.id(),
        options: compiler.options(arch),
        arch: arch.to_string(),
        cubin_bytes: output.cubin.len() as u64,
        cubin_sha256: hex(&Sha256::digest(&output.cubin)),
        compile_ms: millis(compile_time),
        stats: KernelStats::of(&output.cubin, &output.log),
        log: output.log,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    Ok((output.cubin, metadata))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Reads and verifies an entry; the error says what is wrong with it.
fn read_entry(dir: &Path, key: &str) -> Result<(Vec<u8>, Metadata), String> {
    let text = std::fs::read_to_string(dir.join("metadata.json"))
        .map_err(|e| format!("metadata.json: {e}"))?;
    let metadata: Metadata =
        serde_json::from_str(&text).map_err(|e| format!("metadata.json: {e}"))?;
    if metadata.key != key {
        return Err("metadata.json belongs to another key".into());
    }
    let cubin =
        std::fs::read(dir.join("kernel.cubin")).map_err(|e| format!("kernel.cubin: {e}"))?;
    if cubin.len() as u64 != metadata.cubin_bytes {
        return Err(format!(
            "kernel.cubin has {} bytes, metadata says {}",
            cubin.len(),
            metadata.cubin_bytes
        ));
    }
    if hex(&Sha256::digest(&cubin)) != metadata.cubin_sha256 {
        return Err("kernel.cubin does not match its digest".into());
    }
    Ok((cubin, metadata))
}

/// Writes an entry into a temporary folder and renames it into place. Returns false when
/// another process's entry was already there (ours is then deleted).
fn install_entry(
    root: &Path,
    dir: &Path,
    kernel: &KernelSource,
    cubin: &[u8],
    metadata: &Metadata,
) -> Result<bool, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Cache { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    let tmp = unique_sibling(root, "tmp");
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = (|| {
        std::fs::write(tmp.join("kernel.cu"), &kernel.source)?;
        std::fs::write(tmp.join("kernel.cubin"), cubin)?;
        let json = serde_json::to_string_pretty(metadata).map_err(std::io::Error::other)?;
        std::fs::write(tmp.join("metadata.json"), json)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Cache {
            path: tmp,
            source: e,
        });
    }
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(true),
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(Error::Cache {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    }
}

/// Moves a bad entry aside (atomically) and deletes it.
fn remove_entry(root: &Path, dir: &Path) -> Result<(), Error> {
    let trash = unique_sibling(root, "trash");
    match std::fs::rename(dir, &trash) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&trash);
            Ok(())
        }
        // Someone else removed it already.
        Err(_) if !dir.exists() => Ok(()),
        Err(source) => Err(Error::Cache {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn unique_sibling(root: &Path, what: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    root.join(format!(".{what}-{}-{nanos}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_inside_the_cache() {
        let spec = ep_codegen::find_builtin("mixtral-8x7b-ht")
            .and_then(|b| b.parse().ok())
            .unwrap();
        let mut kernel = ep_codegen::Renderer::new()
            .unwrap()
            .render(&spec)
            .unwrap()
            .remove(0);
        let cache = KernelCache::new("/cache");
        let key = "0123456789abcdef0123";
        let ok = cache.entry_dir(&kernel, key).unwrap();
        assert_eq!(
            ok,
            Path::new("/cache/mixtral-8x7b-ht.layout-0123456789abcdef")
        );
        for bad in ["../../escaped", "a/b", ".hidden"] {
            kernel.file_name = format!("{bad}.cu");
            let err = cache.entry_dir(&kernel, key).unwrap_err();
            assert!(matches!(err, Error::UnsafeName { .. }), "{bad}: {err}");
            let text = err.to_string();
            assert!(text.contains("/cache") && text.contains(bad), "{text}");
        }
    }
}
