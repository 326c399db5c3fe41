//! Writes a spec's kernels as standalone `.cu` files with a `manifest.json`.

use std::path::Path;

use serde::Serialize;

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

/// Writes `<kernel file>` for each kernel and `manifest.json` into `dir` (created if needed).
pub fn export(dir: &Path, spec: &Spec, kernels: &[KernelSource]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for k in kernels {
        let path = dir.join(&k.file_name);
        std::fs::write(&path, &k.source).map_err(|e| Error::io(&path, e))?;
    }
    let path = dir.join("manifest.json");
    std::fs::write(&path, Manifest::new(spec, kernels).to_json() + "\n")
        .map_err(|e| Error::io(&path, e))
}
