//! Embeds every YAML file of the workspace's `specs/` folder, so binaries carry the default specs
//! and never read the build machine's paths at run time.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let specs = manifest.join("../specs");
    println!("cargo:rerun-if-changed={}", specs.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&specs)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    let mut out = String::from(
        "/// (file name, YAML text) of every spec in `specs/`, sorted by name.\npub const BUILTIN_SPECS: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("spec file names are UTF-8");
        let abs = fs::canonicalize(f).expect("spec file exists");
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_specs.rs");
    fs::write(dest, out).expect("OUT_DIR is writable");
}
