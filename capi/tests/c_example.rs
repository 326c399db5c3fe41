//! The C examples build with the system C compiler against `include/epc.h` and `libepc.so`, with
//! every warning an error, and run. `ll_call.c` checks the error paths, then (with a GPU) a
//! low-latency call on 8 virtual ranks; `ht_call.c` a high-throughput one; `nccl_ranks.c` both
//! modes over the caller's own NCCL communicators, one process per GPU. Without a GPU each
//! says why it skips its call; `EPC_REQUIRE_GPU=1` makes that a failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One line the test command counts (`GPU name: ...` or `SKIP name: no GPU ...`), written past
/// the test harness's capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The folder holding `libepc.so`: `EPC_CAPI_LIB_DIR`, else this test's target folder, where
/// the library is built first when missing (`cargo test` builds the crate as an rlib only).
fn library_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EPC_CAPI_LIB_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    if !dir.join("libepc.so").is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(&cargo);
        build
            .args(["build", "--quiet", "-p", "ep-capi", "--lib"])
            .env("CARGO_TARGET_DIR", dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
        assert!(status.success(), "building libepc.so failed ({status})");
    }
    dir
}

/// Builds `examples/NAME.c` and runs it; its standard output.
fn build_and_run(name: &str) -> String {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library_dir();
    assert!(
        lib.join("libepc.so").is_file(),
        "libepc.so is not in {} (cargo builds it with this crate; EPC_CAPI_LIB_DIR names another folder)",
        lib.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join(format!("examples/{name}.c")))
        .arg("-L")
        .arg(&lib)
        .args(["-lepc", "-ldl", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "{cc} failed on {name}.c:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "the C example {name} failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
    stdout
}

/// Whether the example ran its GPU call (`done_marker` printed); a skip needs its reason, and
/// is a failure with `EPC_REQUIRE_GPU=1`.
fn ran_on_gpu(name: &str, stdout: &str, done_marker: &str) -> bool {
    if stdout.contains(done_marker) {
        say(&format!("GPU {name}: on the GPU the example found"));
        return true;
    }
    let skipped = stdout
        .lines()
        .find(|l| l.starts_with("no GPU here") || l.starts_with("SKIP: "))
        .unwrap_or_else(|| panic!("{name}: neither the call nor a reason to skip it:\n{stdout}"));
    assert!(
        std::env::var("EPC_REQUIRE_GPU").as_deref() != Ok("1"),
        "EPC_REQUIRE_GPU=1 but {name} skipped its call: {skipped}"
    );
    say(&format!("SKIP {name}: {skipped}"));
    false
}

#[test]
fn the_low_latency_example_checks_errors_and_runs_a_call() {
    let stdout = build_and_run("ll_call");
    assert!(stdout.contains("error paths: ok"), "{stdout}");
    if ran_on_gpu("ll_call", &stdout, "every output is 1") {
        assert!(
            stdout.contains("bad id: epcCheck: rank 0: topk_idx[0][3]"),
            "{stdout}"
        );
    }
}

#[test]
fn the_high_throughput_example_runs_a_call() {
    let stdout = build_and_run("ht_call");
    if ran_on_gpu("ht_call", &stdout, "every output is its token's rank count") {
        assert!(
            stdout.contains("wrong shape: epcHtDispatchSend"),
            "{stdout}"
        );
    }
}

#[test]
fn the_nccl_example_runs_one_process_per_gpu_over_its_own_communicators() {
    let stdout = build_and_run("nccl_ranks");
    if ran_on_gpu("nccl_ranks", &stdout, "done: ") {
        let ranks = stdout
            .lines()
            .filter(|l| l.contains("match over the caller's ncclComm_t"))
            .count();
        assert!(
            ranks >= 1 && stdout.contains(&format!("done: {ranks} ranks")),
            "{stdout}"
        );
    }
}
