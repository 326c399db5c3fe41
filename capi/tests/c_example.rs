//! The C example (`examples/ll_call.c`) builds with the system C compiler against
//! `include/epc.h` and `libepc.so`, with every warning an error, and runs: without a GPU it
//! checks the error paths and says why it skips the call; with one it also runs a low-latency
//! call on 8 virtual ranks and checks the outputs (required with `EPC_REQUIRE_GPU=1`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding `libepc.so`: `EPC_CAPI_LIB_DIR`, else this test's target folder.
fn library_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EPC_CAPI_LIB_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

#[test]
fn the_c_example_builds_and_runs() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    assert!(
        lib.join("libepc.so").is_file(),
        "libepc.so is not in {} (cargo builds it with this crate; EPC_CAPI_LIB_DIR names another folder)",
        lib.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("ll_call");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("examples/ll_call.c"))
        .arg("-L")
        .arg(&lib)
        .args(["-lepc", "-ldl", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "{cc} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "the C example failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("error paths: ok"), "{stdout}");
    let gpu_ran = stdout.contains("every output is 1");
    if !gpu_ran {
        let skipped = stdout
            .lines()
            .find(|l| l.starts_with("no GPU here"))
            .unwrap_or_else(|| panic!("neither the call nor a reason to skip it:\n{stdout}"));
        assert!(
            std::env::var("EPC_REQUIRE_GPU").as_deref() != Ok("1"),
            "EPC_REQUIRE_GPU=1 but the C example skipped the call: {skipped}"
        );
        eprintln!("SKIP the C example's GPU call: {skipped}");
    }
    eprintln!("{stdout}");
}
