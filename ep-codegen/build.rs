//! Embeds every YAML file of this crate's `specs/` folder, so binaries carry the default specs
//! and never read the build machine's paths at run time, and checks that `templates/` (embedded
//! by `src/render.rs`) is there.
//!
//! Both folders live inside the crate (the repository root's `specs` and `templates` are links
//! to them), so a packaged or installed crate carries them. A missing or empty folder is a build
//! error, never a binary without built-in specs or templates.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let specs = manifest.join("specs");
    let templates = manifest.join("templates");
    println!("cargo:rerun-if-changed={}", specs.display());
    println!("cargo:rerun-if-changed={}", templates.display());

    let files = files_with_extension(&specs, &["yaml", "yml"], "built-in specs");
    files_with_extension(&templates, &["hbs"], "CUDA templates");

    let mut out = String::from(
        "/// (file name, YAML text) of every spec in `specs/`, sorted by name.\npub const BUILTIN_SPECS: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_else(|| {
            panic!(
                "ep-codegen build: spec file name {} is not UTF-8",
                f.display()
            )
        });
        let abs = fs::canonicalize(f)
            .unwrap_or_else(|e| panic!("ep-codegen build: cannot resolve {}: {e}", f.display()));
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_specs.rs");
    fs::write(&dest, out)
        .unwrap_or_else(|e| panic!("ep-codegen build: cannot write {}: {e}", dest.display()));
}

/// The files of `dir` (not its subfolders) with one of `extensions`, sorted; panics, failing the
/// build with a message naming `what` and the folder, when the folder cannot be read or holds none.
fn files_with_extension(dir: &Path, extensions: &[&str], what: &str) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "ep-codegen build: cannot read the {what} folder {}: {e}. It belongs inside the \
             ep-codegen crate (the repository's `{}` link points to it); a checkout without it, \
             or a package built without it, cannot build",
            dir.display(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        )
    });
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("ep-codegen build: cannot list {}: {e}", dir.display()))
            .path();
        if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e))
            && path.is_file()
        {
            files.push(path);
        }
    }
    if files.is_empty() {
        panic!(
            "ep-codegen build: the {what} folder {} holds no .{} file",
            dir.display(),
            extensions.join(" or .")
        );
    }
    files.sort();
    files
}
