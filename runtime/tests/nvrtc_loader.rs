//! The libnvrtc search: explicit choices are honoured or refused by name, and nothing is loaded
//! from a folder above the working directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use ep_runtime::{CandidateSource, Error, NvrtcSearch};

/// The text of a failed search: every place tried, or the explicit file refused.
fn searched(e: Error) -> String {
    match e {
        Error::NvrtcNotFound { searched } => searched.join("\n"),
        e @ Error::NvrtcUnusable { .. } => e.to_string(),
        other => panic!("expected NvrtcNotFound or NvrtcUnusable, got {other}"),
    }
}

/// The candidates as text.
fn shown(search: &NvrtcSearch) -> Vec<String> {
    search
        .candidates()
        .iter()
        .map(|c| c.location.display().to_string())
        .collect()
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
    assert_eq!(shown(&search), vec![missing.display().to_string()]);
    assert_eq!(search.candidates()[0].source, CandidateSource::Env);
    let e = search.load().unwrap_err();
    assert!(matches!(e, Error::NvrtcUnusable { .. }), "{e:?}");
    let why = e.to_string();
    assert!(why.contains(&missing.display().to_string()), "{why}");
    assert!(
        why.contains("no such file") && why.contains("EPC_NVRTC"),
        "{why}"
    );
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
    stand_in_with(dir, "int epc_stand_in = 1;\n")
}

/// A shared library `dir/libnvrtc.so.13` built from `source` with the system C compiler.
fn stand_in_with(dir: &Path, source: &str) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let out = dir.join("libnvrtc.so.13");
    let src = dir.join("stand_in.c");
    std::fs::write(&src, source).ok()?;
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

fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

#[test]
fn an_nvrtc_too_old_or_without_the_arch_query_is_refused_by_name() {
    let test = "an_nvrtc_too_old_or_without_the_arch_query_is_refused_by_name";
    let old = tempfile::tempdir().unwrap();
    let version = |major: i32, minor: i32| {
        format!("int nvrtcVersion(int* a, int* b) {{ *a = {major}; *b = {minor}; return 0; }}\n")
    };
    let Some(lib) = stand_in_with(old.path(), &version(11, 8)) else {
        return skip(test, "no C compiler");
    };
    let search = NvrtcSearch {
        epc_nvrtc: Some(lib.clone()),
        ..NvrtcSearch::default()
    };
    let why = searched(search.load().unwrap_err());
    assert!(why.contains(&lib.display().to_string()), "{why}");
    assert!(why.contains("NVRTC 11.8 is too old"), "{why}");

    let partial = tempfile::tempdir().unwrap();
    let lib = stand_in_with(partial.path(), &version(13, 0)).unwrap();
    let search = NvrtcSearch {
        epc_nvrtc: Some(lib.clone()),
        ..NvrtcSearch::default()
    };
    let why = searched(search.load().unwrap_err());
    assert!(why.contains(&lib.display().to_string()), "{why}");
    assert!(
        why.contains("reports NVRTC 13.0, but it lacks nvrtcGetErrorString"),
        "{why}"
    );
}

#[test]
fn the_per_user_install_folder_is_searched() {
    let user = tempfile::tempdir().unwrap();
    let search = NvrtcSearch {
        user_install: Some(user.path().to_path_buf()),
        site_packages: vec![PathBuf::from("/venv/site-packages")],
        ..NvrtcSearch::default()
    };
    let file = user.path().join("nvidia/cu13/lib/libnvrtc.so.13");
    let c = search.candidates();
    let at = c
        .iter()
        .position(|c| c.location == file)
        .unwrap_or_else(|| panic!("{} missing from {c:?}", file.display()));
    assert_eq!(c[at].source, CandidateSource::UserInstall);
    let site = c
        .iter()
        .position(|c| c.source == CandidateSource::SitePackages)
        .unwrap();
    assert!(at < site, "{c:?}");
    // A (stand-in) library planted there is found and tried: refused by name, as it is not NVRTC.
    let Some(lib) = stand_in(file.parent().unwrap()) else {
        return skip("the_per_user_install_folder_is_searched", "no C compiler");
    };
    match search.load() {
        Err(e) => {
            let why = searched(e);
            assert!(
                why.contains(&format!("{}: loads, but is not NVRTC", lib.display())),
                "{why}"
            );
        }
        // A real NVRTC on the loader's path or in CUDA's folder comes first.
        Ok(found) => assert!(
            matches!(
                found.found_by,
                CandidateSource::LoaderPath | CandidateSource::Cuda
            ),
            "{found:?}"
        ),
    }
}

/// The only test of this binary that changes the working folder; the others use absolute paths.
#[test]
fn a_library_planted_above_the_working_folder_is_never_loaded() {
    let root = tempfile::tempdir().unwrap();
    let deep = root.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    // Loadable stand-ins where a walk up from the working folder, or a search relative to it,
    // would find them.
    let mut planted = Vec::new();
    for dir in [
        root.path().join(".epc/pip/nvidia/cu13/lib"),
        root.path().join("a/.epc/pip/nvidia/cu13/lib"),
        root.path().join("lib64"),
        root.path().join("a/b"),
    ] {
        match stand_in(&dir) {
            Some(lib) => planted.push(lib),
            None => {
                std::fs::create_dir_all(&dir).unwrap();
                let lib = dir.join("libnvrtc.so.13");
                std::fs::write(&lib, b"planted").unwrap();
                planted.push(lib);
            }
        }
    }
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&deep).unwrap();
    let search = NvrtcSearch {
        epc_nvrtc: None,
        ..NvrtcSearch::from_env()
    };
    let candidates = search.candidates();
    let loaded = search.load();
    std::env::set_current_dir(before).unwrap();
    let root_text = root.path().display().to_string();
    for c in &candidates {
        let shown = c.location.display().to_string();
        assert!(!shown.starts_with(&root_text), "walked up to {shown}");
        assert!(c.is_path() || !shown.contains('/'), "{shown}");
    }
    match loaded {
        Ok(lib) => assert!(!lib.location.starts_with(root.path()), "{lib:?}"),
        Err(e) => assert!(!e.to_string().contains(&root_text), "{e}"),
    }
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
    assert!(!shown(&search).contains(&planted), "{:?}", shown(&search));
    // The project-local install is found above the executable, where the build put it.
    let beside = NvrtcSearch {
        executable: Some(root.path().join("target/release/epc")),
        ..NvrtcSearch::default()
    };
    assert!(shown(&beside).contains(&planted));
}

#[test]
fn the_default_search_lists_the_documented_places_in_order() {
    let search = NvrtcSearch {
        cuda_path: Some(PathBuf::from("/opt/cuda")),
        executable: Some(PathBuf::from("/repo/target/release/epc")),
        site_packages: vec![PathBuf::from("/venv/site-packages")],
        ..NvrtcSearch::default()
    };
    let c = shown(&search);
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
