//! The tuning database: the knobs `epc tune` found best for one deployment, one JSON file per
//! key under `$EPC_CACHE_DIR/tuning/`, read by the runtime when it builds a group.
//!
//! A key holds everything a measured winner depends on: the GPU (name and SM count), the driver
//! and NVRTC versions, the transport, the rank count, the spec's hash and the candidate set. An
//! entry is stored at `<digest of its key>.json`, written to a temporary file in the same folder
//! and renamed into place, so a reader sees a whole entry or none, and two `epc tune` runs
//! writing at once each leave a whole file (for one key, the later rename wins). A file that
//! cannot be read, is too large, does not parse or holds another key is skipped with a warning:
//! the defaults apply. `export` gathers every entry into one file a fleet can ship; `import`
//! stores each entry of such a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use ep_codegen::kernels::knobs::{candidates_digest, knobs};
use ep_codegen::{Spec, Tuning};

use crate::{Error, Gpu};

/// Largest entry or export file read, in bytes.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// What a tuned result depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TuningKey {
    /// The GPU's name (`NVIDIA H100 80GB HBM3`).
    pub gpu: String,
    /// Its SM count.
    pub sms: u32,
    /// The driver's CUDA version (`13.0`).
    pub driver: String,
    /// The compiler and its version (`nvrtc 13.0`).
    pub nvrtc: String,
    /// `virtual` or `nccl`.
    pub transport: String,
    /// Ranks of the deployment.
    pub ranks: u32,
    /// The spec's hash (its `tuning` section set to auto).
    pub spec_hash: String,
    /// A digest of the candidate set the winner was chosen from.
    pub candidates: String,
}

impl TuningKey {
    /// The file stem of this key's entry: 16 hex digits of a SHA-256 over its fields.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for field in [
            self.gpu.as_str(),
            &self.sms.to_string(),
            &self.driver,
            &self.nvrtc,
            &self.transport,
            &self.ranks.to_string(),
            &self.spec_hash,
            &self.candidates,
        ] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One tuned result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningEntry {
    /// What it holds for.
    pub key: TuningKey,
    /// The winning knobs, by name (`sms`, `warps_per_block`, ...), of calls up to the spec's
    /// `max_tokens_per_rank` (its last token-count bucket).
    pub knobs: BTreeMap<String, u32>,
    /// The winner's median time in that bucket, microseconds.
    pub time_us: f64,
    /// The default knobs' median time there in the same run, microseconds.
    pub default_us: f64,
    /// The winners of the smaller token-count buckets (low latency), ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketKnobs>,
    /// Seconds since the Unix epoch when it was measured.
    pub tuned_at: u64,
    /// The epc version that measured it.
    pub epc_version: String,
}

/// The winner of one token-count bucket: calls of at most `max_tokens` tokens per rank (and
/// more than the previous bucket's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketKnobs {
    /// The bucket's last token count.
    pub max_tokens: u32,
    /// The winning knobs, by name.
    pub knobs: BTreeMap<String, u32>,
    /// The winner's median time, microseconds.
    pub time_us: f64,
    /// The default knobs' median time in the same run, microseconds.
    pub default_us: f64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A valid entry for the key.
    Found(Box<TuningEntry>),
    /// No entry: the defaults apply.
    Missing,
    /// A file was there but is unusable (the reason); the defaults apply.
    Ignored(String),
}

/// The database folder.
#[derive(Debug, Clone)]
pub struct TuningDb {
    dir: PathBuf,
}

/// An export file: every entry of a database.
#[derive(Debug, Serialize, Deserialize)]
struct Export {
    entries: Vec<TuningEntry>,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} a tuning file may hold",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

impl TuningDb {
    /// The database in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> TuningDb {
        TuningDb { dir: dir.into() }
    }

    /// The database of the kernel cache's root (`$EPC_CACHE_DIR/tuning`).
    pub fn in_cache(root: &Path) -> TuningDb {
        TuningDb::new(root.join("tuning"))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: &TuningKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.digest()))
    }

    /// The entry for `key`. An unusable file is reported as [`Lookup::Ignored`] (and logged as
    /// a warning), never as an error: the defaults apply.
    pub fn get(&self, key: &TuningKey) -> Lookup {
        let path = self.path_of(key);
        if !path.exists() {
            return Lookup::Missing;
        }
        let found = read_bounded(&path).and_then(|bytes| {
            serde_json::from_slice::<TuningEntry>(&bytes)
                .map_err(|e| format!("does not parse: {e}"))
        });
        let why = match found {
            Ok(entry) if entry.key == *key => return Lookup::Found(Box::new(entry)),
            Ok(entry) => format!(
                "holds the key of another deployment (spec {}, {} on {})",
                entry.key.spec_hash, entry.key.transport, entry.key.gpu
            ),
            Err(why) => why,
        };
        let why = format!("{}: {why}; using the defaults", path.display());
        tracing::warn!("tuning database: {why}");
        Lookup::Ignored(why)
    }

    /// Stores `entry` (replacing the key's earlier one), atomically.
    pub fn put(&self, entry: &TuningEntry) -> Result<(), Error> {
        let fail = |path: &Path, detail: String| Error::Tuning {
            path: path.to_path_buf(),
            detail,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| fail(&self.dir, e.to_string()))?;
        let path = self.path_of(&entry.key);
        let text = serde_json::to_string_pretty(entry).map_err(|e| fail(&path, e.to_string()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = self.dir.join(format!(
            ".{}.{}.{:?}.{nanos}.tmp",
            entry.key.digest(),
            std::process::id(),
            std::thread::current().id()
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(&path, e.to_string()));
        }
        Ok(())
    }

    /// Every readable entry (unusable files are skipped with a warning), ordered by file name.
    pub fn entries(&self) -> Vec<TuningEntry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|p| {
                let parsed = read_bounded(&p).and_then(|b| {
                    serde_json::from_slice::<TuningEntry>(&b).map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(entry) if p.file_stem().is_some_and(|s| *s == *entry.key.digest()) => {
                        Some(entry)
                    }
                    Ok(_) => {
                        tracing::warn!(
                            "tuning database: {} is not named for its key; skipped",
                            p.display()
                        );
                        None
                    }
                    Err(e) => {
                        tracing::warn!("tuning database: {}: {e}; skipped", p.display());
                        None
                    }
                }
            })
            .collect()
    }

    /// Writes every entry into one file (`path`, replaced atomically); returns how many.
    pub fn export(&self, path: &Path) -> Result<usize, Error> {
        let export = Export {
            entries: self.entries(),
        };
        let text = serde_json::to_string_pretty(&export).map_err(|e| Error::Tuning {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::Tuning {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        Ok(export.entries.len())
    }

    /// Stores every entry of an export file; returns how many. A file that cannot be read or
    /// parsed is an error naming it, and nothing of it is stored.
    pub fn import(&self, path: &Path) -> Result<usize, Error> {
        let fail = |detail: String| Error::Tuning {
            path: path.to_path_buf(),
            detail,
        };
        let bytes = read_bounded(path).map_err(fail)?;
        let export: Export = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("not an `epc tune` export: {e}")))?;
        for entry in &export.entries {
            self.put(entry)?;
        }
        Ok(export.entries.len())
    }
}

impl TuningKey {
    /// The key of `spec` (its `tuning` section set to auto) on `gpu`, with the driver's CUDA
    /// version, the compiler (`nvrtc 13.0`, [`crate::Jit::compiler_id`]) and the transport
    /// (`virtual` or `nccl`) given.
    pub fn of(
        spec: &Spec,
        gpu: &Gpu,
        driver: (i32, i32),
        compiler: &str,
        transport: &str,
    ) -> TuningKey {
        let auto = spec
            .with_tuning(Tuning::default())
            .unwrap_or_else(|_| spec.clone());
        TuningKey {
            gpu: gpu.name().to_owned(),
            sms: gpu.sms(),
            driver: format!("{}.{}", driver.0, driver.1),
            nvrtc: compiler.to_owned(),
            transport: transport.to_owned(),
            ranks: spec.ranks(),
            spec_hash: auto.hash(),
            candidates: candidates_digest(&knobs(&auto, gpu.sms())),
        }
    }
}

impl TuningKey {
    /// The key of `spec` on `gpu` with `jit`'s compiler and this machine's driver.
    pub fn on(spec: &Spec, gpu: &Gpu, jit: &crate::Jit, transport: &str) -> TuningKey {
        let driver = Gpu::driver_version().unwrap_or((0, 0));
        TuningKey::of(spec, gpu, driver, &jit.compiler_id(), transport)
    }
}

/// Where a group's knobs came from.
#[derive(Debug, Clone, PartialEq)]
pub enum KnobSource {
    /// The spec has no `auto` knob to tune (all pinned, or none exist for its mode).
    Spec,
    /// A tuning database entry (its knobs applied where the spec says `auto`).
    Database(Box<TuningEntry>),
    /// No usable entry: the analytic defaults (the reason).
    Defaults(String),
}

/// The spec a group runs: `spec` with the knobs of `db`'s entry for `key` applied where the spec
/// says `auto` (a pinned field always wins), and where they came from, said under `tracing`
/// (which knobs at `info`, a missing or unusable entry once per key at `warn`).
pub fn apply(spec: &Spec, db: &TuningDb, key: &TuningKey, gpu_sms: u32) -> (Spec, KnobSource) {
    if knobs(spec, gpu_sms).is_empty() {
        return (spec.clone(), KnobSource::Spec);
    }
    let why = match db.get(key) {
        Lookup::Found(entry) => match with_knobs(spec, &entry.knobs) {
            Ok(s) => {
                tracing::info!(
                    "{}: tuned knobs {:?} from the tuning database ({} us tuned, {} us default)",
                    spec.name(),
                    entry.knobs,
                    entry.time_us,
                    entry.default_us
                );
                return (s, KnobSource::Database(entry));
            }
            Err(e) => format!("its knobs {:?} do not validate: {e}", entry.knobs),
        },
        Lookup::Missing => "no entry for this GPU, driver, NVRTC, transport and spec".to_owned(),
        Lookup::Ignored(why) => why,
    };
    warn_once(
        &key.digest(),
        &format!(
            "{}: default knobs ({why}); `epc tune` finds better ones",
            spec.name()
        ),
    );
    (spec.clone(), KnobSource::Defaults(why))
}

/// `spec` with `knobs` applied where it says `auto` (a pinned field wins).
fn with_knobs(spec: &Spec, knobs: &BTreeMap<String, u32>) -> Result<Spec, ep_codegen::SpecErrors> {
    let t = spec.tuning();
    let pick = |pinned: Option<u32>, name: &str| pinned.or_else(|| knobs.get(name).copied());
    spec.with_tuning(Tuning {
        sms: pick(t.sms, "sms"),
        warps_per_block: pick(t.warps_per_block, "warps_per_block"),
        tokens_per_warp: pick(t.tokens_per_warp, "tokens_per_warp"),
        vector_bytes: pick(t.vector_bytes, "vector_bytes"),
        unroll: pick(t.unroll, "unroll"),
    })
}

/// The specs of the smaller token-count buckets that [`apply`] found tuned apart (`source`):
/// `(last token count, spec)` pairs, ascending, each `spec` (the untuned one, so that pinned
/// fields win) with that bucket's knobs. A bucket whose knobs are the main ones or do not
/// validate, or that the spec's token count makes empty, is left out (its calls run the main
/// kernels).
pub fn bucket_specs(spec: &Spec, source: &KnobSource) -> Vec<(usize, Spec)> {
    let KnobSource::Database(entry) = source else {
        return Vec::new();
    };
    entry
        .buckets
        .iter()
        .filter(|b| {
            b.max_tokens > 0 && b.max_tokens < spec.max_tokens_per_rank() && b.knobs != entry.knobs
        })
        .filter_map(|b| match with_knobs(spec, &b.knobs) {
            Ok(s) => {
                tracing::info!(
                    "{}: calls of at most {} tokens per rank run tuned knobs {:?} ({} us tuned, \
                     {} us default)",
                    spec.name(),
                    b.max_tokens,
                    b.knobs,
                    b.time_us,
                    b.default_us
                );
                Some((b.max_tokens as usize, s))
            }
            Err(e) => {
                tracing::warn!(
                    "{}: tuned knobs {:?} of calls up to {} tokens do not validate ({e}); \
                     those calls run the main kernels",
                    spec.name(),
                    b.knobs,
                    b.max_tokens
                );
                None
            }
        })
        .collect()
}

/// `spec` as a group on `gpu` runs it: [`apply`] with the tuning database beside the kernel
/// cache (`$EPC_CACHE_DIR/tuning`) and the key of this GPU, its driver, `jit`'s compiler and
/// `transport` (`virtual` or `nccl`).
pub fn tuned_spec(spec: &Spec, gpu: &Gpu, jit: &crate::Jit, transport: &str) -> (Spec, KnobSource) {
    let db = TuningDb::in_cache(&crate::KernelCache::default_root());
    apply(
        spec,
        &db,
        &TuningKey::on(spec, gpu, jit, transport),
        gpu.sms(),
    )
}

/// Logs `message` at `warn` the first time `id` is seen in this process.
fn warn_once(id: &str, message: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !seen.iter().any(|s| s == id) {
        seen.push(id.to_owned());
        tracing::warn!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spec: &str) -> TuningKey {
        TuningKey {
            gpu: "NVIDIA H100 80GB HBM3".into(),
            sms: 132,
            driver: "13.0".into(),
            nvrtc: "13.0".into(),
            transport: "virtual".into(),
            ranks: 8,
            spec_hash: spec.into(),
            candidates: "c0ffee".into(),
        }
    }

    fn entry(spec: &str, sms: u32) -> TuningEntry {
        TuningEntry {
            key: key(spec),
            knobs: BTreeMap::from([("sms".to_owned(), sms), ("warps_per_block".to_owned(), 8)]),
            time_us: 10.0,
            default_us: 12.5,
            tuned_at: 1_764_000_000,
            epc_version: "0.1.0".into(),
            buckets: Vec::new(),
        }
    }

    #[test]
    fn entries_are_found_by_their_whole_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::in_cache(dir.path());
        assert_eq!(db.get(&key("a")), Lookup::Missing);
        db.put(&entry("a", 96)).unwrap();
        assert_eq!(db.get(&key("a")), Lookup::Found(Box::new(entry("a", 96))));
        // Any field of the key that differs misses.
        for changed in [
            TuningKey {
                driver: "13.1".into(),
                ..key("a")
            },
            TuningKey {
                sms: 114,
                ..key("a")
            },
            TuningKey {
                transport: "nccl".into(),
                ..key("a")
            },
            TuningKey {
                candidates: "other".into(),
                ..key("a")
            },
            key("b"),
        ] {
            assert_ne!(changed.digest(), key("a").digest());
            assert_eq!(db.get(&changed), Lookup::Missing);
        }
        // A later put replaces the entry.
        db.put(&entry("a", 64)).unwrap();
        assert_eq!(db.get(&key("a")), Lookup::Found(Box::new(entry("a", 64))));
    }

    #[test]
    fn unusable_files_give_the_defaults_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::new(dir.path());
        db.put(&entry("a", 96)).unwrap();
        let path = dir.path().join(format!("{}.json", key("a").digest()));
        std::fs::write(&path, "{ not json").unwrap();
        match db.get(&key("a")) {
            Lookup::Ignored(why) => assert!(why.contains("does not parse"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A file holding another key under this key's name.
        std::fs::write(&path, serde_json::to_string(&entry("b", 1)).unwrap()).unwrap();
        match db.get(&key("a")) {
            Lookup::Ignored(why) => assert!(why.contains("another deployment"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A file too large is not read.
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        match db.get(&key("a")) {
            Lookup::Ignored(why) => assert!(why.contains("more than"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(db.entries().is_empty());
    }

    #[test]
    fn concurrent_writers_leave_whole_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::new(dir.path());
        std::thread::scope(|s| {
            for writer in 0..8u32 {
                let db = db.clone();
                s.spawn(move || {
                    for round in 0..25u32 {
                        // Every writer writes the shared key and one of its own.
                        db.put(&entry("shared", 100 * writer + round)).unwrap();
                        db.put(&entry(&format!("own{writer}"), round)).unwrap();
                    }
                });
            }
        });
        match db.get(&key("shared")) {
            Lookup::Found(e) => assert!(e.knobs["sms"] % 100 == 24, "a writer's last round: {e:?}"),
            other => panic!("{other:?}"),
        }
        for writer in 0..8 {
            assert_eq!(
                db.get(&key(&format!("own{writer}"))),
                Lookup::Found(Box::new(entry(&format!("own{writer}"), 24)))
            );
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        assert_eq!(db.entries().len(), 9);
    }

    fn ll(extra: &str) -> Spec {
        Spec::from_yaml(
            &format!(
                "name: t\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\nranks: 8\n\
                 max_tokens_per_rank: 128\n{extra}"
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn tuned_knobs_apply_where_the_spec_says_auto() {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::new(dir.path());
        let k = key("ll");
        // No entry: the defaults, with the reason.
        let (s, from) = apply(&ll(""), &db, &k, 132);
        assert_eq!(s, ll(""));
        assert!(matches!(from, KnobSource::Defaults(ref why) if why.contains("no entry")));
        // An entry: its knobs, except where the spec pins one.
        let mut e = entry("ll", 66);
        e.knobs.insert("warps_per_block".into(), 4);
        db.put(&e).unwrap();
        let (s, from) = apply(&ll(""), &db, &k, 132);
        assert_eq!(
            (s.tuning().sms, s.tuning().warps_per_block),
            (Some(66), Some(4))
        );
        assert_eq!(from, KnobSource::Database(Box::new(e.clone())));
        let (s, _) = apply(&ll("tuning:\n  warps_per_block: 16\n"), &db, &k, 132);
        assert_eq!(
            (s.tuning().sms, s.tuning().warps_per_block),
            (Some(66), Some(16))
        );
        // Knobs that do not validate (0 SMs) give the defaults.
        e.knobs.insert("sms".into(), 0);
        db.put(&e).unwrap();
        let (s, from) = apply(&ll(""), &db, &k, 132);
        assert_eq!(s, ll(""));
        assert!(matches!(from, KnobSource::Defaults(ref why) if why.contains("do not validate")));
        // A spec with every knob pinned needs no database.
        let pinned = ll("tuning:\n  warps_per_block: 8\n  sms: 32\n");
        assert_eq!(
            apply(&pinned, &db, &k, 132),
            (pinned.clone(), KnobSource::Spec)
        );
    }

    #[test]
    fn smaller_token_buckets_get_their_own_knobs() {
        let dir = tempfile::tempdir().unwrap();
        let db = TuningDb::new(dir.path());
        let k = key("ll");
        let bucket = |max_tokens: u32, sms: u32, warps: u32| BucketKnobs {
            max_tokens,
            knobs: BTreeMap::from([
                ("sms".to_owned(), sms),
                ("warps_per_block".to_owned(), warps),
            ]),
            time_us: 5.0,
            default_us: 6.0,
        };
        let mut e = entry("ll", 132);
        // 16 and 64 are buckets of M = 128; 32 has the main knobs, 128 and beyond are not
        // buckets (the main knobs cover them), and 0 SMs does not validate.
        e.buckets = vec![
            bucket(16, 33, 4),
            bucket(32, 132, 8),
            bucket(64, 66, 16),
            bucket(100, 0, 4),
            bucket(128, 99, 4),
        ];
        db.put(&e).unwrap();
        // Old entries (no buckets) still parse.
        let old = serde_json::to_string(&entry("ll", 132)).unwrap();
        assert!(!old.contains("buckets"));
        let (main, from) = apply(&ll(""), &db, &k, 132);
        assert_eq!(main.tuning().sms, Some(132));
        let got: Vec<(usize, Option<u32>, Option<u32>)> = bucket_specs(&ll(""), &from)
            .iter()
            .map(|(t, s)| (*t, s.tuning().sms, s.tuning().warps_per_block))
            .collect();
        assert_eq!(got, [(16, Some(33), Some(4)), (64, Some(66), Some(16))]);
        // A pinned field wins in every bucket.
        let pinned = ll("tuning:\n  warps_per_block: 32\n");
        let (_, from) = apply(&pinned, &db, &k, 132);
        assert!(
            bucket_specs(&pinned, &from)
                .iter()
                .all(|(_, s)| s.tuning().warps_per_block == Some(32))
        );
        // Defaults have no buckets.
        assert!(bucket_specs(&ll(""), &KnobSource::Defaults("none".into())).is_empty());
    }

    #[test]
    fn a_fleet_ships_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let here = TuningDb::new(dir.path().join("here"));
        here.put(&entry("a", 1)).unwrap();
        here.put(&entry("b", 2)).unwrap();
        let file = dir.path().join("fleet.json");
        assert_eq!(here.export(&file).unwrap(), 2);
        let there = TuningDb::new(dir.path().join("there"));
        assert_eq!(there.import(&file).unwrap(), 2);
        assert_eq!(there.entries(), here.entries());
        std::fs::write(&file, "[1, 2").unwrap();
        let err = there.import(&file).unwrap_err().to_string();
        assert!(
            err.contains("fleet.json") && err.contains("not an `epc tune` export"),
            "{err}"
        );
    }
}
