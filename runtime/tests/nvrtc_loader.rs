//! The libnvrtc search: explicit choices are honoured or refused by name, and nothing is loaded
//! from a folder above the working directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use ep_runtime::{Error, NvrtcSearch};

fn searched(e: Error) -> String {
    match e {
        Error::NvrtcNotFound { searched } => searched.join("\n"),
        other => panic!("expected NvrtcNotFound, got {other}"),
    }
}

#[test]
fn epc_nvrtc_is_the_only_candidate_and_a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnvrtc.so.13");
    let search = NvrtcSearch {
        epc_nvrtc: Some(missing.clone()),
        cuda_path: Some(PathBuf::from("/usr/local/cuda")),
        ..NvrtcSearch::default()
    };
    assert_eq!(search.candidates(), vec![missing.display().to_string()]);
    let why = searched(search.load().unwrap_err());
    assert!(why.contains(&missing.display().to_string()), "{why}");
    assert!(why.contains("no such file"), "{why}");
}

#[test]
fn a_garbage_file_in_epc_nvrtc_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("libnvrtc.so.13");
    std::fs::write(&garbage, b"not a library").unwrap();
    let search = NvrtcSearch {
        epc_nvrtc: Some(garbage.clone()),
        ..NvrtcSearch::default()
    };
    let why = searched(search.load().unwrap_err());
    assert!(why.contains(&garbage.display().to_string()), "{why}");
}

/// A shared library with no NVRTC in it, built with the system C compiler.
fn stand_in(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("libnvrtc.so.13");
    let src = dir.join("stand_in.c");
    std::fs::write(&src, "int epc_stand_in = 1;\n").ok()?;
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    built.success().then_some(out)
}

#[test]
fn a_library_without_nvrtcs_functions_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let Some(lib) = stand_in(dir.path()) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP a_library_without_nvrtcs_functions_is_refused_by_name: no C compiler"
        );
        return;
    };
    let search = NvrtcSearch {
        epc_nvrtc: Some(dir.path().to_path_buf()),
        ..NvrtcSearch::default()
    };
    let why = searched(search.load().unwrap_err());
    assert!(why.contains(&lib.display().to_string()), "{why}");
    assert!(why.contains("is not NVRTC: it lacks nvrtcVersion"), "{why}");
}

#[test]
fn no_candidate_comes_from_above_the_working_folder() {
    // A library planted where a walk up from the working folder would find it.
    let root = tempfile::tempdir().unwrap();
    let planted = root.path().join(".epc/pip/nvidia/cu13/lib/libnvrtc.so.13");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"planted").unwrap();
    let cwd = root.path().join("work/deeper");
    std::fs::create_dir_all(&cwd).unwrap();
    // The search of this process, as if run from there (the working folder plays no part).
    let search = NvrtcSearch {
        executable: Some(PathBuf::from("/opt/elsewhere/bin/epc")),
        ..NvrtcSearch::default()
    };
    let planted = planted.display().to_string();
    assert!(
        !search.candidates().contains(&planted),
        "{:?}",
        search.candidates()
    );
    // The project-local install is found above the executable, where the build put it.
    let beside = NvrtcSearch {
        executable: Some(root.path().join("target/release/epc")),
        ..NvrtcSearch::default()
    };
    assert!(beside.candidates().contains(&planted));
}

#[test]
fn the_default_search_lists_the_documented_places_in_order() {
    let search = NvrtcSearch {
        cuda_path: Some(PathBuf::from("/opt/cuda")),
        executable: Some(PathBuf::from("/repo/target/release/epc")),
        site_packages: vec![PathBuf::from("/venv/site-packages")],
        ..NvrtcSearch::default()
    };
    let c = search.candidates();
    let at = |s: &str| {
        c.iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} missing from {c:?}"))
    };
    assert!(at("libnvrtc.so.13") < at("/opt/cuda/lib64/libnvrtc.so.13"));
    assert!(at("/opt/cuda/lib64/libnvrtc.so.13") < at("/usr/local/cuda/lib64/libnvrtc.so.13"));
    assert!(
        at("/usr/local/cuda/lib64/libnvrtc.so.13")
            < at("/repo/.epc/pip/nvidia/cu13/lib/libnvrtc.so.13")
    );
    assert!(
        at("/repo/.epc/pip/nvidia/cu13/lib/libnvrtc.so.13")
            < at("/venv/site-packages/nvidia/cu13/lib/libnvrtc.so.13")
    );
}
