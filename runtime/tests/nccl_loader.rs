//! The `nccl` transport's loader, ids and device-kernel compile, on the CPU.
//!
//! Tests that need the real libnccl or a GPU skip with a printed reason where they are absent
//! (`EPC_REQUIRE_GPU=1` turns those skips into failures). The NVRTC compile of the peer-table
//! and probe kernels against real NCCL headers runs when `EPC_NCCL_TEST_INCLUDE` names one or
//! more include folders (separated by `:`), prepared for instance with
//!
//! ```sh
//! runtime/src/transport/nccl/extract-headers.sh v2.28.3-1 /tmp/nccl-2.28.3/include
//! EPC_NCCL_TEST_INCLUDE=/tmp/nccl-2.28.3/include cargo test -p ep-runtime --test nccl_loader
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use ep_runtime::transport::nccl::{
    CandidateSource, NcclSearch, NcclVersion, SymmetricWindow, compile_device_kernels,
};
use ep_runtime::transport::{NcclComm, NcclLibrary, NcclUniqueId};
use ep_runtime::{Arch, Error, Gpu, Nvrtc};

/// Prints past the test harness's capture, so a skip's reason is always seen.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn search_with_epc_nccl(path: &Path) -> NcclSearch {
    NcclSearch {
        epc_nccl: Some(path.to_path_buf()),
        ..NcclSearch::default()
    }
}

#[test]
fn epc_nccl_naming_a_missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("libnccl.so.2");
    let search = search_with_epc_nccl(&missing);
    assert_eq!(
        search.candidates().len(),
        1,
        "EPC_NCCL is the only candidate"
    );
    let e = search.load().unwrap_err();
    assert!(matches!(e, Error::NcclUnusable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("EPC_NCCL"), "{text}");
}

#[test]
fn epc_nccl_naming_a_folder_without_the_library_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = search_with_epc_nccl(dir.path()).load().unwrap_err();
    let want = dir.path().join("libnccl.so.2").display().to_string();
    assert!(e.to_string().contains(&want), "{e}");
}

#[test]
fn epc_nccl_naming_a_garbage_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("libnccl.so.2");
    std::fs::write(&garbage, b"this is not a shared library\n").unwrap();
    for named in [garbage.as_path(), dir.path()] {
        let e = search_with_epc_nccl(named).load().unwrap_err();
        assert!(matches!(e, Error::NcclUnusable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&garbage.display().to_string()), "{text}");
        assert!(text.contains("cannot open"), "{text}");
    }
}

#[test]
fn candidates_follow_the_shared_rule() {
    let search = NcclSearch {
        cuda_path: Some(PathBuf::from("/opt/cuda")),
        executable: Some(PathBuf::from("/repo/target/release/epc")),
        user_install: Some(PathBuf::from("/home/u/.local/share/epc/pip")),
        site_packages: vec![PathBuf::from("/a/site"), PathBuf::from("/b/site")],
        ..NcclSearch::default()
    };
    let got: Vec<(String, CandidateSource)> = search
        .candidates()
        .into_iter()
        .filter(|c| !c.location.ends_with("libnccl.so") || !c.is_path())
        .filter(|c| !c.location.starts_with("/repo/target"))
        .map(|c| (c.location.display().to_string(), c.source))
        .collect();
    use CandidateSource::*;
    assert_eq!(
        got,
        vec![
            ("libnccl.so.2".into(), LoaderPath),
            ("libnccl.so".into(), LoaderPath),
            ("/opt/cuda/lib64/libnccl.so.2".into(), Cuda),
            ("/usr/local/cuda/lib64/libnccl.so.2".into(), Cuda),
            (
                "/repo/.epc/pip/nvidia/nccl/lib/libnccl.so.2".into(),
                ProjectInstall
            ),
            (
                "/.epc/pip/nvidia/nccl/lib/libnccl.so.2".into(),
                ProjectInstall
            ),
            (
                "/home/u/.local/share/epc/pip/nvidia/nccl/lib/libnccl.so.2".into(),
                UserInstall
            ),
            ("/a/site/nvidia/nccl/lib/libnccl.so.2".into(), SitePackages),
            ("/b/site/nvidia/nccl/lib/libnccl.so.2".into(), SitePackages),
        ]
    );
}

#[test]
fn a_library_in_the_per_user_folder_is_loaded() {
    let user = tempfile::tempdir().unwrap();
    let Some(lib) = fake_nccl(&user.path().join("nvidia/nccl"), 22803, true) else {
        return;
    };
    let search = NcclSearch {
        user_install: Some(user.path().to_path_buf()),
        ..NcclSearch::default()
    };
    match search.load() {
        Ok(found) if found.found_by() == "the per-user install folder" => {
            assert_eq!(found.location, lib)
        }
        // A real libnccl on the loader's path or in CUDA's folder comes first.
        Ok(found) => assert!(!found.location.starts_with(user.path()), "{found}"),
        Err(e) => panic!("{e}"),
    }
}

/// The only test of this binary that changes the working folder; the others use absolute paths.
#[test]
fn no_candidate_is_found_by_walking_up_from_the_working_folder() {
    let root = tempfile::tempdir().unwrap();
    let planted = root.path().join(".epc/pip/nvidia/nccl/lib/libnccl.so.2");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"planted above the working folder\n").unwrap();
    let deep = root.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(&deep).unwrap();
    let search = NcclSearch {
        epc_nccl: None,
        ..NcclSearch::from_env()
    };
    let candidates = search.candidates();
    let loaded = search.load();
    std::env::set_current_dir(before).unwrap();
    let root_text = root.path().display().to_string();
    for c in &candidates {
        let shown = c.location.display().to_string();
        assert!(!shown.starts_with(&root_text), "walked up to {shown}");
        if shown.contains("/.epc/") {
            // Only above the executable, never above the working folder.
            let exe = std::env::current_exe().unwrap();
            let above = exe
                .ancestors()
                .any(|a| c.location.starts_with(a.join(".epc")));
            assert!(
                above,
                "a project-local candidate not above the executable: {shown}"
            );
        }
    }
    match loaded {
        Ok(lib) => assert!(!lib.location.starts_with(root.path()), "{lib}"),
        Err(e) => assert!(!e.to_string().contains(&root_text), "{e}"),
    }
}

#[test]
fn versions_before_2_28_are_refused() {
    let old = NcclVersion::from_code(22703).unwrap();
    let e = old.check_supported("/opt/nccl/libnccl.so.2").unwrap_err();
    assert!(matches!(e, Error::NcclTooOld { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("2.27.3"), "{text}");
    assert!(text.contains("/opt/nccl/libnccl.so.2"), "{text}");
    assert!(text.contains(">= 2.28"), "{text}");
    // Versions before 2.9 use the other code scheme.
    assert!(!NcclVersion::from_code(2708).unwrap().is_supported());
    let ok = NcclVersion::from_code(22803).unwrap();
    assert_eq!(ok.to_string(), "2.28.3");
    ok.check_supported("x").unwrap();
    NcclVersion::from_code(23007)
        .unwrap()
        .check_supported("x")
        .unwrap();
}

fn nccl_h(major: u32, minor: u32, patch: u32) -> String {
    format!(
        "#ifndef NCCL_H_\n#define NCCL_H_\n#include <cuda_runtime.h>\n#define NCCL_MAJOR {major}\n\
         #define NCCL_MINOR {minor}\n#define NCCL_PATCH {patch}\n#define NCCL_SUFFIX \"\"\n\
         #define NCCL_VERSION_CODE {}\n#endif\n",
        major * 10000 + minor * 100 + patch
    )
}

/// An include folder holding nccl.h of `version` and an (empty) device API header.
fn fake_include(dir: &Path, (major, minor, patch): (u32, u32, u32)) {
    std::fs::create_dir_all(dir.join("nccl_device/impl")).unwrap();
    std::fs::write(dir.join("nccl.h"), nccl_h(major, minor, patch)).unwrap();
    std::fs::write(dir.join("nccl_device/impl/core__funcs.h"), "").unwrap();
}

#[test]
fn nccl_h_versions_are_parsed() {
    let v = NcclVersion::from_header(&nccl_h(2, 28, 9)).unwrap();
    assert_eq!(v.to_string(), "2.28.9");
    let template = "#define NCCL_MAJOR ${nccl:Major}\n#define NCCL_MINOR ${nccl:Minor}\n";
    let e = NcclVersion::from_header(template).unwrap_err();
    assert!(e.contains("nccl.h.in"), "{e}");
    assert!(NcclVersion::from_header("#define NCCL_MAJOR 2\n").is_err());
}

#[test]
fn headers_of_another_version_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("lib/libnccl.so.2");
    let include = root.path().join("include");
    fake_include(&include, (2, 28, 9));
    let v2283 = NcclVersion::from_code(22803).unwrap();
    let v2289 = NcclVersion::from_code(22809).unwrap();

    // Beside the library (the wheel layout).
    let auto = NcclSearch::default();
    assert_eq!(auto.header_candidates(&lib), vec![include.clone()]);
    assert_eq!(auto.find_headers(&lib, v2289).unwrap(), include);
    let e = auto.find_headers(&lib, v2283).unwrap_err();
    assert!(matches!(e, Error::NcclHeaders { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("2.28.9") && text.contains("2.28.3"), "{text}");
    assert!(text.contains("EPC_NCCL_INCLUDE"), "{text}");

    // Named by EPC_NCCL_INCLUDE: only there, and a mismatch names it.
    let explicit = NcclSearch {
        epc_nccl_include: Some(include.clone()),
        ..NcclSearch::default()
    };
    assert_eq!(explicit.find_headers(&lib, v2289).unwrap(), include);
    let text = explicit.find_headers(&lib, v2283).unwrap_err().to_string();
    assert!(text.contains(&include.display().to_string()), "{text}");
    assert!(text.contains("2.28.9") && text.contains("2.28.3"), "{text}");

    // A folder without nccl.h, or without the device API headers.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = NcclSearch {
        epc_nccl_include: Some(empty.clone()),
        ..NcclSearch::default()
    }
    .find_headers(&lib, v2289)
    .unwrap_err();
    assert!(e.to_string().contains("no nccl.h"), "{e}");
    let host_only = root.path().join("host-only");
    std::fs::create_dir_all(&host_only).unwrap();
    std::fs::write(host_only.join("nccl.h"), nccl_h(2, 28, 9)).unwrap();
    let e = NcclSearch {
        epc_nccl_include: Some(host_only),
        ..NcclSearch::default()
    }
    .find_headers(&lib, v2289)
    .unwrap_err();
    assert!(e.to_string().contains("nccl_device"), "{e}");
}

#[test]
fn unique_ids_round_trip_through_hex() {
    let bytes: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
    let id = NcclUniqueId::from_bytes(&bytes).unwrap();
    let hex = id.to_hex();
    assert_eq!(hex.len(), 256);
    assert_eq!(NcclUniqueId::from_hex(&hex).unwrap(), id);
    assert_eq!(
        NcclUniqueId::from_hex(&format!("{}\n", hex.to_uppercase())).unwrap(),
        id
    );
    assert_eq!(
        hex.parse::<NcclUniqueId>().unwrap().as_bytes(),
        &id.as_bytes().clone()
    );

    let short = NcclUniqueId::from_hex(&hex[..200]).unwrap_err().to_string();
    assert!(short.contains("256") && short.contains("200"), "{short}");
    let mut bad = hex.clone();
    bad.replace_range(10..11, "g");
    let text = NcclUniqueId::from_hex(&bad).unwrap_err().to_string();
    assert!(text.contains("`g`") && text.contains("10"), "{text}");
    let wide = NcclUniqueId::from_hex(&format!("{}é", &hex[..255]))
        .unwrap_err()
        .to_string();
    assert!(wide.contains("`é` at character 255"), "{wide}");
    assert!(NcclUniqueId::from_bytes(&bytes[..127]).is_err());
}

/// A stand-in libnccl built with the system's C compiler: `ncclGetVersion` reports `code`;
/// with `full`, every other function epc resolves exists too (none is called).
fn fake_nccl(dir: &Path, code: u32, full: bool) -> Option<PathBuf> {
    let mut source = format!("int ncclGetVersion(int* v) {{ *v = {code}; return 0; }}\n");
    if full {
        for name in [
            "ncclGetErrorString",
            "ncclGetLastError",
            "ncclGetUniqueId",
            "ncclCommInitRank",
            "ncclCommInitAll",
            "ncclCommDestroy",
            "ncclCommCount",
            "ncclCommUserRank",
            "ncclCommCuDevice",
            "ncclCommGetAsyncError",
            "ncclGroupStart",
            "ncclGroupEnd",
            "ncclAllGather",
            "ncclMemAlloc",
            "ncclMemFree",
            "ncclCommWindowRegister",
            "ncclCommWindowDeregister",
            "ncclDevCommCreate",
            "ncclDevCommDestroy",
        ] {
            source.push_str(&format!("int {name}(void) {{ return 0; }}\n"));
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let c = dir.join("fake_nccl.c");
    std::fs::write(&c, source).unwrap();
    let lib = dir.join("lib/libnccl.so.2");
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&c)
        .status();
    match built {
        Ok(s) if s.success() => Some(lib),
        other => {
            say(&format!(
                "SKIP stand_in_libraries_are_checked: no C compiler (cc) to build a stand-in libnccl: {other:?}"
            ));
            None
        }
    }
}

/// The whole search on stand-in libraries: the version check, missing functions, the headers.
#[test]
fn stand_in_libraries_are_checked() {
    let old = tempfile::tempdir().unwrap();
    let Some(lib) = fake_nccl(old.path(), 22703, true) else {
        return;
    };
    let e = search_with_epc_nccl(&lib).load().unwrap_err();
    assert!(matches!(e, Error::NcclTooOld { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("2.27.3") && text.contains(&lib.display().to_string()),
        "{text}"
    );

    let partial = tempfile::tempdir().unwrap();
    let lib = fake_nccl(partial.path(), 22803, false).unwrap();
    let text = search_with_epc_nccl(&lib).load().unwrap_err().to_string();
    assert!(text.contains("ncclGetErrorString"), "{text}");
    assert!(text.contains(&lib.display().to_string()), "{text}");

    // The wheel layout: lib/ and include/ side by side.
    let good = tempfile::tempdir().unwrap();
    let lib = fake_nccl(good.path(), 22803, true).unwrap();
    fake_include(&good.path().join("include"), (2, 28, 3));
    let loaded = search_with_epc_nccl(good.path().join("lib").as_path())
        .load()
        .unwrap();
    assert_eq!(loaded.location, lib);
    assert_eq!(
        loaded.to_string(),
        format!("NCCL 2.28.3 at {}", lib.display())
    );
    assert_eq!(loaded.found_by(), "EPC_NCCL");
    assert_eq!(loaded.headers().unwrap(), good.path().join("include"));

    // Headers of another version beside it: the library loads, the headers are refused with
    // the reason; named by EPC_NCCL_INCLUDE, the mismatch is the load's error.
    let skewed = tempfile::tempdir().unwrap();
    let lib = fake_nccl(skewed.path(), 22803, true).unwrap();
    let include = skewed.path().join("include");
    fake_include(&include, (2, 28, 9));
    let loaded = search_with_epc_nccl(&lib).load().unwrap();
    assert_eq!(loaded.include_dir, None);
    let text = loaded.headers().unwrap_err().to_string();
    assert!(text.contains("2.28.9") && text.contains("2.28.3"), "{text}");
    let e = NcclSearch {
        epc_nccl: Some(lib),
        epc_nccl_include: Some(include),
        ..NcclSearch::default()
    }
    .load()
    .unwrap_err();
    assert!(matches!(e, Error::NcclHeaders { .. }), "{e:?}");
}

/// The real library where it exists (this prints which one), or a printed skip.
#[test]
fn the_library_loads_where_it_exists() {
    match NcclLibrary::load() {
        Ok(lib) => {
            say(&format!(
                "{lib} (found by {}), headers: {:?}",
                lib.found_by(),
                lib.include_dir
            ));
            assert!(lib.version.is_supported());
            assert!(lib.location.is_absolute(), "{}", lib.location.display());
        }
        Err(e) if !required("EPC_REQUIRE_GPU") => {
            say(&format!("SKIP the_library_loads_where_it_exists: {e}"))
        }
        Err(e) => panic!("EPC_REQUIRE_GPU=1 but {e}"),
    }
}

fn nvrtc_or_skip(test: &str) -> Option<Nvrtc> {
    match Nvrtc::new() {
        Ok(n) => Some(n),
        Err(e) if !required("EPC_REQUIRE_NVRTC") => {
            say(&format!("SKIP {test}: {e}"));
            None
        }
        Err(e) => panic!("{test}: EPC_REQUIRE_NVRTC=1 but {e}"),
    }
}

/// The probe and peer-table kernels compile for sm_90 with NVRTC against NCCL's own headers and
/// epc's shims, with no CUDA toolkit: for every folder in `EPC_NCCL_TEST_INCLUDE`.
#[test]
fn device_kernels_compile_against_nccl_headers() {
    let test = "device_kernels_compile_against_nccl_headers";
    let Some(folders) = std::env::var_os("EPC_NCCL_TEST_INCLUDE").filter(|v| !v.is_empty()) else {
        say(&format!(
            "SKIP {test}: EPC_NCCL_TEST_INCLUDE is not set (prepare a folder with \
             runtime/src/transport/nccl/extract-headers.sh v2.28.3-1 /tmp/nccl-2.28.3/include)"
        ));
        return;
    };
    let Some(nvrtc) = nvrtc_or_skip(test) else {
        return;
    };
    for include in std::env::split_paths(&folders) {
        let start = std::time::Instant::now();
        let cubin = compile_device_kernels(&include, Arch::SM90)
            .unwrap_or_else(|e| panic!("{}: {e}", include.display()));
        let has = |name: &str| cubin.windows(name.len()).any(|w| w == name.as_bytes());
        assert!(has("epc_nccl_probe") && has("epc_nccl_peer_table"));
        let version = std::fs::read_to_string(include.join("nccl.h"))
            .ok()
            .and_then(|t| NcclVersion::from_header(&t).ok())
            .map_or("?".to_owned(), |v| v.to_string());
        say(&format!(
            "{test}: NCCL {version} headers in {} compile with NVRTC {:?} for sm_90 ({} bytes, \
             {} ms)",
            include.display(),
            nvrtc.version(),
            cubin.len(),
            start.elapsed().as_millis()
        ));
    }
}

/// Without NCCL's headers the compile fails with NVRTC's log, not a panic.
#[test]
fn device_kernels_without_headers_report_the_compile_log() {
    let test = "device_kernels_without_headers_report_the_compile_log";
    if nvrtc_or_skip(test).is_none() {
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let e = compile_device_kernels(empty.path(), Arch::SM90).unwrap_err();
    assert!(matches!(e, Error::Compile { .. }), "{e:?}");
    assert!(e.to_string().contains("nccl_device/utility.h"), "{e}");
}

/// On a GPU with NCCL: a 1-rank communicator, its symmetric window and peer table.
#[test]
fn one_rank_window_on_a_gpu() {
    let test = "one_rank_window_on_a_gpu";
    let gpu = match Gpu::open(0) {
        Ok(g) => {
            say(&format!("GPU {test}: on {}", g.name()));
            g
        }
        Err(e @ (Error::DriverNotFound { .. } | Error::NoGpu { .. }))
            if !required("EPC_REQUIRE_GPU") =>
        {
            say(&format!("SKIP {test}: no GPU: {e}"));
            return;
        }
        Err(e) => panic!("{test}: EPC_REQUIRE_GPU=1 but {e}"),
    };
    if let Err(e) = NcclLibrary::load() {
        if required("EPC_REQUIRE_GPU") {
            panic!("{test}: EPC_REQUIRE_GPU=1 but {e}");
        }
        say(&format!("SKIP {test}: {e}"));
        return;
    }
    let id = NcclComm::unique_id().unwrap();
    let comm = NcclComm::init_rank(&gpu, &id, 0, 1).unwrap();
    assert_eq!((comm.rank(), comm.ranks(), comm.device()), (0, 1, 0));
    let windows = SymmetricWindow::register(&[(&gpu, &comm)], 10_000).unwrap();
    let w = &windows[0];
    assert_eq!((w.rank(), w.ranks(), w.bytes()), (0, 1, 12288));
    assert_eq!(w.peer_bases(), &[w.base()]);
    assert_ne!(w.peers_ptr(), 0);
    assert!(!w.dev_comm_bytes().is_empty());
    let table = gpu.stream().clone_dtoh(w.peers()).unwrap();
    assert_eq!(table, vec![w.base()]);
    // The window is zeroed, through both of its addresses.
    let mut host = vec![1u8; w.bytes()];
    // SAFETY: the window holds `bytes()` bytes on this GPU, and nothing writes it.
    unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut host, w.base()) }.unwrap();
    assert!(host.iter().all(|&b| b == 0));
    say(&format!("{test}: {w:?}, {}", comm.library()));
    drop(windows);
    comm.async_error().unwrap();
}
