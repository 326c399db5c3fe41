//! Compile errors of the macros, one test per rule family (expected output in `ui/*.stderr`).

/// trybuild compiles each case with cargo; a copy of this test on a machine without a Rust
/// toolchain (the GPU machine's bundle) has nothing to compile with.
fn cargo_available() -> bool {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    std::process::Command::new(cargo)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn ui() {
    if !cargo_available() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP ui: no cargo to compile the cases with"
        );
        return;
    }
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
