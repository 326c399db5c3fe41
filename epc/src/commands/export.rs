//! `epc export`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::SpecArgs;
use crate::inputs::{load_specs, renderer};

/// Writes `<out>/<spec>/<kernel>.cu` and `<out>/<spec>/manifest.json` for each spec. A folder
/// holding another spec's export (or files that are not an export) is refused unless `force`.
pub fn export(
    args: &SpecArgs,
    out: &Path,
    force: bool,
    templates: Option<&Path>,
) -> Result<ExitCode> {
    let renderer = renderer(templates)?;
    for l in load_specs(&args.specs)? {
        let name = l.spec.name();
        let kernels = renderer.render(&l.spec)?;
        let dir = ep_codegen::join_component(out, name, "spec name")
            .with_context(|| format!("exporting {name} into {}", out.display()))?;
        ep_codegen::export(&dir, &l.spec, &kernels, force)
            .with_context(|| format!("exporting {name}"))?;
        for k in &kernels {
            println!("{}", dir.join(&k.file_name).display());
        }
        println!("{}", dir.join("manifest.json").display());
    }
    Ok(ExitCode::SUCCESS)
}
