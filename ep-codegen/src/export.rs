//! Writes a spec's kernels as standalone `.cu` files with a `manifest.json`.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::paths::{PathError, check_path_component, join_component};
use crate::render::{GENERATOR_VERSION, KernelSource};
use crate::{Error, Spec};

/// The contents of `manifest.json`.
#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    /// `epc <version>`.
    pub generator: String,
    /// The validated spec.
    pub spec: &'a Spec,
    /// Its hash.
    pub spec_hash: String,
    /// Every kernel: file, entry point, constants, launch shape, parameters.
    pub kernels: &'a [KernelSource],
}

impl<'a> Manifest<'a> {
    /// The manifest of a rendered spec.
    pub fn new(spec: &'a Spec, kernels: &'a [KernelSource]) -> Manifest<'a> {
        Manifest {
            generator: format!("epc {GENERATOR_VERSION}"),
            spec,
            spec_hash: spec.hash(),
            kernels,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, integers and maps with string keys always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The most bytes of an existing `manifest.json` read to learn whose export a folder holds (a
/// manifest is a few kilobytes).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Writes `<kernel file>` for each kernel and `manifest.json` into `dir` (created if needed).
///
/// `dir` is the spec's own folder (`epc export` uses `<out>/<spec name>`, built with
/// [`crate::join_component`]). Unless `force` is set, a folder that already exists must be
/// empty or hold an export of this same spec (a `manifest.json` written by epc with this spec's
/// hash), which is then rewritten; anything else is refused with [`PathError::OtherSpec`] or
/// [`PathError::NotAnExport`] (as [`Error::Refused`]) and nothing is
/// written. With `force`, the kernel files listed by a readable old manifest that this export
/// does not write are removed, so the folder holds one spec's files. Every kernel file name must
/// be one path component ([`PathError::UnsafeName`]).
pub fn export(dir: &Path, spec: &Spec, kernels: &[KernelSource], force: bool) -> Result<(), Error> {
    let paths = kernels
        .iter()
        .map(|k| join_component(dir, &k.file_name, "kernel file"))
        .collect::<Result<Vec<PathBuf>, PathError>>()
        .map_err(|e| refused(dir, e))?;
    let previous = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(dir, e)),
        Ok(_) => match previous_export(dir) {
            Ok(previous) => previous,
            Err(_) if force => None,
            Err(e) => return Err(refused(dir, e)),
        },
    };
    if let Some(old) = &previous {
        let expected = spec.hash();
        if old.spec_hash != expected && !force {
            let found = old.spec_hash.clone();
            let e = PathError::OtherSpec { found, expected };
            return Err(refused(dir, e));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (k, path) in kernels.iter().zip(&paths) {
        write_file(path, &k.source)?;
    }
    if let Some(old) = previous {
        for file in old
            .files
            .iter()
            .filter(|f| !kernels.iter().any(|k| &k.file_name == *f))
        {
            // Listed by the old manifest, checked to be a plain name inside `dir`.
            let path = dir.join(file);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, e));
                }
                _ => {}
            }
        }
    }
    write_file(
        &dir.join("manifest.json"),
        &(Manifest::new(spec, kernels).to_json() + "\n"),
    )
}

/// An export already in a folder.
#[derive(Debug)]
struct PreviousExport {
    /// The hash of the spec it was written for.
    spec_hash: String,
    /// The kernel files its manifest lists.
    files: Vec<String>,
}

/// Whose export `dir` (which exists) holds: `Ok(None)` for an empty folder, the export's
/// manifest for an epc export, and [`PathError::NotAnExport`] for anything else.
fn previous_export(dir: &Path) -> Result<Option<PreviousExport>, PathError> {
    let not_export = |why: String| PathError::NotAnExport { why };
    if !dir.is_dir() {
        return Err(not_export("it is not a folder".into()));
    }
    let manifest = dir.join("manifest.json");
    let text = match read_bounded(&manifest) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| not_export(format!("unreadable: {e}")))?;
            return match entries.next() {
                None => Ok(None),
                Some(_) => Err(not_export("it holds files but no manifest.json".into())),
            };
        }
        Err(e) => return Err(not_export(format!("manifest.json is unreadable: {e}"))),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| not_export(format!("manifest.json is not JSON: {e}")))?;
    let generator = json["generator"].as_str().unwrap_or_default();
    match json["spec_hash"].as_str() {
        Some(hash) if generator.starts_with("epc ") => Ok(Some(PreviousExport {
            spec_hash: hash.to_owned(),
            files: listed_files(&json),
        })),
        _ => Err(not_export(
            "its manifest.json was not written by epc: no `generator` \"epc ...\" and `spec_hash`"
                .into(),
        )),
    }
}

/// The kernel files a manifest lists, keeping only plain names (a foreign manifest cannot make
/// `export` touch anything outside the folder).
fn listed_files(json: &serde_json::Value) -> Vec<String> {
    json["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["file_name"].as_str())
        .filter(|f| check_path_component(f, "kernel file").is_ok())
        .map(str::to_owned)
        .collect()
}

/// Reads at most [`MAX_MANIFEST_BYTES`] of a text file (more is an error).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// Writes a file; a symbolic link in its place is replaced, not written through.
fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// A refusal about `dir`.
fn refused(dir: &Path, refusal: PathError) -> Error {
    Error::Refused {
        folder: dir.display().to_string(),
        refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Renderer;

    const LL: &str = "name: exp\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
                      ranks: 8\nmax_tokens_per_rank: 128\n";

    fn rendered(yaml: &str) -> (Spec, Vec<KernelSource>) {
        let spec = Spec::from_yaml(yaml, None).unwrap();
        let kernels = Renderer::new().unwrap().render(&spec).unwrap();
        (spec, kernels)
    }

    /// The refusal carried by an export error, with the error's text.
    fn refusal(e: Error) -> (PathError, String) {
        let text = e.to_string();
        match e {
            Error::Refused { refusal, .. } => (refusal, text),
            other => panic!("not a refusal: {other}"),
        }
    }

    #[test]
    fn the_same_spec_is_rewritten_and_another_refused_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exp");
        let (spec, kernels) = rendered(LL);
        export(&dir, &spec, &kernels, false).unwrap();
        export(&dir, &spec, &kernels, false).unwrap();

        let (other, other_kernels) = rendered(&LL.replace("hidden: 2048", "hidden: 4096"));
        let (e, text) = refusal(export(&dir, &other, &other_kernels, false).unwrap_err());
        assert_eq!(
            e,
            PathError::OtherSpec {
                found: spec.hash(),
                expected: other.hash()
            }
        );
        assert!(text.starts_with(&dir.display().to_string()), "{text}");
        assert!(text.contains("--force"), "{text}");
        let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        assert!(manifest.contains(&spec.hash()), "untouched: {manifest}");

        export(&dir, &other, &other_kernels, true).unwrap();
        let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        assert!(manifest.contains(&other.hash()), "{manifest}");
    }

    #[test]
    fn forcing_removes_the_kernels_of_the_replaced_export() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exp");
        let (ll, ll_kernels) = rendered(LL);
        export(&dir, &ll, &ll_kernels, false).unwrap();
        assert!(dir.join("exp.ll_combine.cu").exists());
        let ht = "name: exp\nmode: high_throughput\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
                  ranks: 8\nmax_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n";
        let (ht, ht_kernels) = rendered(ht);
        export(&dir, &ht, &ht_kernels, true).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "exp.ht_combine.cu",
                "exp.ht_dispatch.cu",
                "exp.ht_notify.cu",
                "exp.layout.cu",
                "manifest.json"
            ]
        );
    }

    #[test]
    fn folders_that_are_not_exports_are_refused_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let (spec, kernels) = rendered(LL);
        type Make<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Make, &str); 4] = [
            (
                "files",
                &|d| std::fs::write(d.join("notes.txt"), "x").unwrap(),
                "no manifest.json",
            ),
            (
                "garbage",
                &|d| std::fs::write(d.join("manifest.json"), "{").unwrap(),
                "not JSON",
            ),
            (
                "foreign",
                &|d| std::fs::write(d.join("manifest.json"), r#"{"spec_hash": "0"}"#).unwrap(),
                "not written by epc",
            ),
            (
                "unreadable",
                &|d| std::fs::create_dir(d.join("manifest.json")).unwrap(),
                "unreadable",
            ),
        ];
        for (name, make, why) in cases {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            make(&dir);
            let (e, text) = refusal(export(&dir, &spec, &kernels, false).unwrap_err());
            assert!(matches!(e, PathError::NotAnExport { .. }), "{name}: {e}");
            assert!(
                text.contains(why) && text.contains("--force"),
                "{name}: {text}"
            );
            assert!(
                !dir.join("exp.layout.cu").exists(),
                "{name}: nothing written"
            );
        }
        // An empty folder is fine; `force` writes into a folder of other files.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        export(&empty, &spec, &kernels, false).unwrap();
        export(&tmp.path().join("files"), &spec, &kernels, true).unwrap();
    }

    #[test]
    fn kernel_file_names_stay_inside_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("inner");
        let (spec, mut kernels) = rendered(LL);
        for bad in ["../../escaped", "a/b", ".hidden"] {
            kernels[0].file_name = bad.to_owned();
            let (e, text) = refusal(export(&dir, &spec, &kernels, true).unwrap_err());
            assert!(matches!(e, PathError::UnsafeName { .. }), "{bad}: {e}");
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(!dir.exists(), "{bad}: nothing written");
        }
        assert!(!tmp.path().join("escaped").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_in_the_folder_is_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("exp");
        let (spec, kernels) = rendered(LL);
        export(&dir, &spec, &kernels, false).unwrap();
        let target = tmp.path().join("outside.txt");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.join(&kernels[0].file_name);
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        export(&dir, &spec, &kernels, false).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), kernels[0].source);
    }
}
