//! The command line, run as a user would.

use std::process::{Command, Output};

/// The epc binary: cargo's, or `bin/epc` beside a bundle's `tests/` folder on another machine.
fn epc_binary() -> std::path::PathBuf {
    let built = std::path::PathBuf::from(env!("CARGO_BIN_EXE_epc"));
    if built.exists() {
        return built;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(|tests| tests.parent())
        .map(|bundle| bundle.join("bin/epc"))
        .filter(|p| p.exists())
        .unwrap_or(built)
}

fn epc(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(epc_binary())
        .args(args)
        .env("EPC_CACHE_DIR", cache)
        .output()
        .expect("epc runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn nvrtc_present() -> bool {
    ep_runtime::Nvrtc::new().is_ok()
}

#[test]
fn check_lists_every_builtin_spec() {
    let cache = tempfile::tempdir().unwrap();
    let o = epc(&["check"], cache.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.lines().filter(|l| l.starts_with("ok  ")).count() >= 8,
        "{out}"
    );
    assert!(
        out.contains("deepseek-v3-ll") && out.contains("bf16->fp8_e4m3"),
        "{out}"
    );
}

#[test]
fn check_reports_a_bad_file_with_its_location_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "name: bad\nmode: low_latency\nhidden: 7000\nexperts: 256\ntop_k: 8\nranks: 12\nmax_tokens_per_rank: 128\n",
    )
    .unwrap();
    let o = epc(
        &["check", path.to_str().unwrap(), "no-such-spec"],
        dir.path(),
    );
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("bad.yaml:6:8: `ranks`") || out.contains("bad.yaml:4:10: `experts`"),
        "{out}"
    );
    assert!(out.contains("divisible by ranks (12)"), "{out}");
    assert!(
        out.contains("`no-such-spec` is neither a file nor a built-in spec"),
        "{out}"
    );
}

#[test]
fn export_writes_sources_and_a_manifest_per_spec() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let o = epc(
        &[
            "export",
            "mixtral-8x7b-ht",
            "gpt-oss-120b-ll",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    for name in ["mixtral-8x7b-ht", "gpt-oss-120b-ll"] {
        let cu =
            std::fs::read_to_string(out_dir.join(name).join(format!("{name}.layout.cu"))).unwrap();
        assert!(cu.contains(&format!("spec `{name}`")));
        let manifest = std::fs::read_to_string(out_dir.join(name).join("manifest.json")).unwrap();
        assert!(manifest.contains("\"epc_layout\""), "{manifest}");
    }
}

#[test]
fn templates_folder_overrides_the_embedded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("t");
    std::fs::create_dir_all(templates.join("partials")).unwrap();
    std::fs::write(
        templates.join("partials/header.hbs"),
        "// house header {{spec_hash}}\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let o = epc(
        &[
            "export",
            "mixtral-8x7b-ht",
            "--templates",
            templates.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let cu =
        std::fs::read_to_string(out_dir.join("mixtral-8x7b-ht/mixtral-8x7b-ht.layout.cu")).unwrap();
    assert!(cu.starts_with("// house header "), "{cu}");
}

#[test]
fn compile_reports_time_registers_and_cache_use() {
    if !nvrtc_present() {
        assert_ne!(
            std::env::var("EPC_REQUIRE_NVRTC").as_deref(),
            Ok("1"),
            "EPC_REQUIRE_NVRTC=1 but NVRTC is missing"
        );
        eprintln!("SKIP compile_reports_time_registers_and_cache_use: no NVRTC");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let first = epc(
        &["compile", "deepseek-v3-ht", "--arch", "sm_90"],
        cache.path(),
    );
    assert!(first.status.success(), "{}", text(&first));
    let out = text(&first);
    assert!(
        out.contains("deepseek-v3-ht.layout.cu") && out.contains(" compiled "),
        "{out}"
    );
    assert!(out.contains(" regs "), "{out}");
    let second = epc(
        &["compile", "deepseek-v3-ht", "--arch", "sm_90"],
        cache.path(),
    );
    assert!(text(&second).contains(" cached "), "{}", text(&second));
    let bad = epc(
        &["compile", "deepseek-v3-ht", "--arch", "hopper"],
        cache.path(),
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("`hopper` is not an architecture epc compiles for"),
        "{}",
        text(&bad)
    );
}

#[test]
fn compile_checks_the_arch_against_nvrtc_and_the_spec() {
    let cache = tempfile::tempdir().unwrap();
    // Spellings are checked before NVRTC is needed.
    let virt = epc(
        &["compile", "deepseek-v3-ht", "--arch", "compute_90"],
        cache.path(),
    );
    assert!(!virt.status.success());
    let out = text(&virt);
    assert!(
        out.contains("virtual") && out.contains("use sm_90"),
        "{out}"
    );
    assert!(out.contains("sm_90a"), "{out}");
    if !nvrtc_present() {
        eprintln!("SKIP compile_checks_the_arch_against_nvrtc_and_the_spec: no NVRTC");
        return;
    }
    let nvrtc = ep_runtime::Nvrtc::new().unwrap();
    // An architecture NVRTC does not compile for (sm_70 for NVRTC 13): its list is printed.
    let oldest = nvrtc.supported_archs()[0].number;
    let too_old = format!("sm_{}", oldest - 5);
    let o = epc(
        &["compile", "deepseek-v3-ht", "--arch", &too_old],
        cache.path(),
    );
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains(&format!("does not compile for {too_old}")),
        "{out}"
    );
    assert!(out.contains(&format!("supports sm_{oldest}")), "{out}");
    // FP8 dispatch needs sm_89: named with the spec's dtype, the arch and the minimum, and
    // nothing is compiled.
    let o = epc(
        &["compile", "deepseek-v3-ll", "--arch", "sm_80"],
        cache.path(),
    );
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("spec `deepseek-v3-ll` (dispatch_dtype fp8_e4m3) needs sm_89 or newer"),
        "{out}"
    );
    assert!(out.contains("which sm_80 lacks"), "{out}");
    assert!(!out.contains(" compiled "), "{out}");
    // The architecture-specific variant is accepted.
    let o = epc(
        &["compile", "deepseek-v3-ht", "--arch", "sm_90a"],
        cache.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("target sm_90a"), "{}", text(&o));
}

#[test]
fn doctor_names_the_nvrtc_file_and_says_what_is_missing() {
    let cache = tempfile::tempdir().unwrap();
    let o = epc(&["doctor"], cache.path());
    let out = text(&o);
    for section in ["GPU", "NVRTC", "NCCL", "cache"] {
        assert!(out.lines().any(|l| l.starts_with(section)), "{out}");
    }
    assert!(out.contains(&cache.path().display().to_string()), "{out}");
    assert!(out.contains("writable: yes"), "{out}");
    match ep_runtime::Nvrtc::new() {
        Ok(nvrtc) => {
            assert!(o.status.success(), "{out}");
            let file = format!("file: {}", nvrtc.location().display());
            assert!(out.contains(&file), "{out}");
            assert!(out.contains("architectures: "), "{out}");
        }
        Err(_) => {
            assert!(!o.status.success(), "{out}");
            assert!(out.contains("nvidia-cuda-nvrtc"), "{out}");
        }
    }
    // Without a GPU it says why; with one it lists it.
    assert!(out.contains("no GPU: ") || out.contains("GPU 0: "), "{out}");
    // Without NCCL it says how to get it.
    assert!(
        out.contains("version: 2.") || out.contains("pip install --target"),
        "{out}"
    );
}

#[test]
fn doctor_fails_on_a_missing_epc_nvrtc_and_an_unwritable_cache() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/libnvrtc.so.13");
    let not_a_folder = dir.path().join("file");
    std::fs::write(&not_a_folder, b"").unwrap();
    let o = Command::new(epc_binary())
        .arg("doctor")
        .env("EPC_NVRTC", &missing)
        .env("EPC_CACHE_DIR", &not_a_folder)
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains(&missing.display().to_string()), "{out}");
    assert!(out.contains("writable: no"), "{out}");
    assert!(out.contains("2 problem(s)"), "{out}");
}

#[test]
fn the_main_job_checks_renders_and_compiles_everything() {
    let cache = tempfile::tempdir().unwrap();
    let o = epc(&[], cache.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("specs checked"), "{out}");
    assert!(out.contains("kernels rendered"), "{out}");
    if nvrtc_present() {
        assert!(out.contains("3 kernels, 3 compiled"), "{out}");
        assert!(
            out.contains("GPU steps skipped")
                || out.contains("all specs verified against the CPU reference"),
            "{out}"
        );
    } else {
        assert!(out.contains("compile and GPU steps skipped"), "{out}");
    }
}

#[test]
fn nccl_rank_options_are_checked_before_any_gpu_work() {
    let cache = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "run",
                "gpt-oss-120b-ll",
                "--transport",
                "nccl",
                "--nccl-rank",
                "2",
                "--nccl-ranks",
                "2",
            ],
            "must be below the rank count",
        ),
        (
            &[
                "run",
                "gpt-oss-120b-ll",
                "--transport",
                "nccl",
                "--nccl-rank",
                "1",
            ],
            "needs both its rank and the rank count",
        ),
        (
            &["bench", "--transport", "virtual", "--nccl-ranks", "2"],
            "need --transport nccl",
        ),
        (
            &["run", "gpt-oss-120b-ll", "--transport", "carrier-pigeon"],
            "invalid value",
        ),
    ];
    for (args, expected) in cases {
        let o = epc(args, cache.path());
        assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
        assert!(text(&o).contains(expected), "{args:?}: {}", text(&o));
    }
    let o = Command::new(epc_binary())
        .args(["run", "gpt-oss-120b-ll", "--transport", "nccl"])
        .env("EPC_CACHE_DIR", cache.path())
        .env("RANK", "zero")
        .env("WORLD_SIZE", "2")
        .output()
        .expect("epc runs");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("RANK=\"zero\" is not a rank number"),
        "{}",
        text(&o)
    );
}
