//! `epc export`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::SpecArgs;
use crate::inputs::{load_specs, note_progress, renderer};

/// Writes `<out>/<spec>/<kernel>.cu` and `<out>/<spec>/manifest.json` for each spec.
pub fn export(args: &SpecArgs, out: &Path, templates: Option<&Path>) -> Result<ExitCode> {
    let renderer = renderer(templates)?;
    for l in load_specs(&args.specs)? {
        note_progress(&l.spec);
        let kernels = renderer.render(&l.spec)?;
        let dir = out.join(l.spec.name());
        ep_codegen::export(&dir, &l.spec, &kernels)
            .with_context(|| format!("exporting {}", l.spec.name()))?;
        for k in &kernels {
            println!("{}", dir.join(&k.file_name).display());
        }
        println!("{}", dir.join("manifest.json").display());
    }
    Ok(ExitCode::SUCCESS)
}
