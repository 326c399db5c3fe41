//! The command line, run as a user would.

use std::io::Write as _;
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
fn export_refuses_to_replace_another_specs_files_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let folder = out_dir.join("shared-name");
    let ll = "name: shared-name\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
              ranks: 8\nmax_tokens_per_rank: 128\n";
    let ht = "name: shared-name\nmode: high_throughput\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
              ranks: 8\nmax_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n";
    let (ll_path, ht_path) = (dir.path().join("ll.yaml"), dir.path().join("ht.yaml"));
    std::fs::write(&ll_path, ll).unwrap();
    std::fs::write(&ht_path, ht).unwrap();
    let hash = |yaml: &str| ep_codegen::Spec::from_yaml(yaml, None).unwrap().hash();
    let export = |spec: &std::path::Path, force: bool| {
        let mut args = vec!["export", spec.to_str().unwrap(), "--out"];
        args.push(out_dir.to_str().unwrap());
        if force {
            args.push("--force");
        }
        epc(&args, dir.path())
    };
    let o = export(&ll_path, false);
    assert!(o.status.success(), "{}", text(&o));
    assert!(folder.join("shared-name.ll_dispatch.cu").exists());
    // The same spec again: rewritten without a word.
    let o = export(&ll_path, false);
    assert!(o.status.success(), "{}", text(&o));
    // Another spec of the same name: refused, naming the folder, both hashes and --force.
    let o = export(&ht_path, false);
    assert!(!o.status.success());
    let out = text(&o);
    for part in [
        folder.display().to_string(),
        hash(ll),
        hash(ht),
        "--force".to_owned(),
    ] {
        assert!(out.contains(&part), "{part} missing from: {out}");
    }
    let manifest = std::fs::read_to_string(folder.join("manifest.json")).unwrap();
    assert!(
        manifest.contains(&hash(ll)),
        "nothing may change: {manifest}"
    );
    // With --force the folder becomes the new spec's export, without the old one's kernels.
    let o = export(&ht_path, true);
    assert!(o.status.success(), "{}", text(&o));
    let manifest = std::fs::read_to_string(folder.join("manifest.json")).unwrap();
    assert!(manifest.contains(&hash(ht)), "{manifest}");
    assert!(folder.join("shared-name.layout.cu").exists());
    assert!(!folder.join("shared-name.ll_dispatch.cu").exists());
    // A folder of other files (no manifest) is not epc's to overwrite either.
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("notes.txt"), "mine").unwrap();
    let o = export(&ll_path, false);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("is not an epc export (it holds files but no manifest.json)")
            && out.contains("--force"),
        "{out}"
    );
    assert!(!folder.join("manifest.json").exists());
}

#[test]
fn export_writes_nothing_outside_its_folder_for_a_spec_named_as_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("a/b/out");
    for bad in ["../../escaped", "a/b", ".hidden"] {
        let spec = dir.path().join("bad.yaml");
        std::fs::write(
            &spec,
            format!(
                "name: \"{bad}\"\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
                 ranks: 8\nmax_tokens_per_rank: 128\n"
            ),
        )
        .unwrap();
        let o = epc(
            &[
                "export",
                spec.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(!o.status.success(), "{bad}: {}", text(&o));
        assert!(text(&o).contains("`name`"), "{bad}: {}", text(&o));
    }
    assert!(!dir.path().join("a/escaped").exists() && !out_dir.exists());
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
        (
            &["bench", "gpt-oss-120b-ll", "--pattern", "lopsided"],
            "invalid value 'lopsided' for '--pattern <PATTERN>'",
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

/// `epc` with `stdin` as its standard input.
fn epc_with_stdin(args: &[&str], cache: &std::path::Path, stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(epc_binary())
        .args(args)
        .env("EPC_CACHE_DIR", cache)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("epc starts");
    let mut input = child.stdin.take().expect("a stdin pipe");
    // epc may stop reading early (over 1 MiB), which breaks the pipe: that is fine.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().expect("epc runs")
}

const HUGE: &str = "name: huge\nmode: low_latency\nhidden: 65536\nexperts: 4096\ntop_k: 32\n\
                    ranks: 1024\nmax_tokens_per_rank: 1024\n";

#[test]
fn check_prints_each_specs_memory_and_refuses_one_too_large_for_a_rank() {
    let dir = tempfile::tempdir().unwrap();
    let o = epc(&["check", "gpt-oss-120b-ll"], dir.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("memory cap per rank: "), "{out}");
    assert!(
        out.contains("     memory 720.3 MiB per rank (window 720.3 MiB")
            && out.contains("; 5.6 GiB for 8 virtual ranks on one GPU"),
        "{out}"
    );

    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, HUGE).unwrap();
    let o = epc(&["check", huge.to_str().unwrap()], dir.path());
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    for part in [
        "FAIL ",
        "2.0 TiB per rank",
        "spec `huge` needs 2.0 TiB of device memory per rank, more than the cap of",
        "lower `max_tokens_per_rank` (1024), `experts` (4096) or `hidden` (65536)",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }

    let o = epc(
        &["check", "gpt-oss-120b-ll", "--max-memory", "512MiB"],
        dir.path(),
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("memory cap per rank: 512.0 MiB (--max-memory)"),
        "{out}"
    );
    assert!(out.contains("more than the cap of 512.0 MiB"), "{out}");
    let o = epc(
        &["check", "gpt-oss-120b-ll", "--max-memory", "1TiB"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    for bad in ["16G", "16", "lots", "0GiB"] {
        let o = epc(&["check", "--max-memory", bad], dir.path());
        assert!(!o.status.success(), "{bad}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("`{bad}` is not a memory size")),
            "{bad}: {}",
            text(&o)
        );
    }
}

#[test]
fn high_throughput_specs_are_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let runs: [&[&str]; 3] = [
        &["check", "qwen3-235b-a22b-ht", "gpt-oss-120b-ll"],
        &[
            "export",
            "qwen3-235b-a22b-ht",
            "gpt-oss-120b-ll",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &["all", "qwen3-235b-a22b-ht", "gpt-oss-120b-ll"],
    ];
    for args in runs {
        let o = epc(args, dir.path());
        let out = text(&o);
        assert!(o.status.success(), "{args:?}: {out}");
        assert!(!out.contains("not built yet"), "{args:?}: {out}");
    }
    // Qwen3-235B's 32 ranks sit in domains of 8: dispatch forwards between send and receive.
    let dispatch = std::fs::read_to_string(
        out_dir.join("qwen3-235b-a22b-ht/qwen3-235b-a22b-ht.ht_dispatch.cu"),
    )
    .unwrap();
    assert!(dispatch.contains("epc_ht_dispatch_forward"), "{dispatch}");
}

#[test]
fn spec_arguments_that_name_nothing_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["export", dir.path().to_str().unwrap(), "--out", out],
            "is a folder; give a .yaml file or a built-in name",
        ),
        (
            &["export", "deepseek-v3-l", "--out", out],
            "`deepseek-v3-l` is neither a file nor a built-in spec; did you mean `deepseek-v3-ll`?",
        ),
        (
            &["export", "llama", "--out", out],
            "`llama` is neither a file nor a built-in spec (built-ins: deepseek-v2-lite-ll,",
        ),
        (
            &["export", "missing/spec.yaml", "--out", out],
            "`missing/spec.yaml`: no such file",
        ),
    ];
    for (args, expected) in cases {
        let o = epc(args, dir.path());
        assert!(!o.status.success(), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(expected), "{args:?}: {}", text(&o));
    }
}

#[test]
fn a_spec_can_come_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let yaml = "name: piped\nmode: low_latency\nhidden: 1024\nexperts: 16\ntop_k: 2\nranks: 4\n\
                max_tokens_per_rank: 32\n";
    let o = epc_with_stdin(
        &["export", "-", "--out", out_dir.to_str().unwrap()],
        dir.path(),
        yaml.as_bytes(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out_dir.join("piped/piped.ll_dispatch.cu").is_file());

    let o = epc_with_stdin(&["check", "-"], dir.path(), b"name: piped\nhidden: x\n");
    assert!(!o.status.success());
    assert!(text(&o).contains("<stdin>:2:9: `hidden`"), "{}", text(&o));

    let o = epc_with_stdin(&["check", "-", "-"], dir.path(), yaml.as_bytes());
    assert!(!o.status.success());
    assert!(text(&o).contains("`-` is given twice"), "{}", text(&o));

    let o = epc_with_stdin(&["check", "-"], dir.path(), b"name: piped\n\xfe\n");
    assert!(
        text(&o).contains("<stdin>:2:1: not UTF-8 text: byte 12 (0xfe)"),
        "{}",
        text(&o)
    );

    let big = vec![b'#'; (1 << 20) + 10];
    let o = epc_with_stdin(&["check", "-"], dir.path(), &big);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("<stdin>:1:1: the input holds more than 1048576 bytes (1 MiB)"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_io_error_prints_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let out_dir = dir.path().join("out");
    let o = epc(
        &[
            "export",
            "mixtral-8x7b-ht",
            "--templates",
            missing.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert_eq!(out.matches("os error").count(), 1, "{out}");
    assert_eq!(out.matches("no-such-folder").count(), 1, "{out}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let o = epc(
        &[
            "export",
            "mixtral-8x7b-ht",
            "--out",
            file.join("below").to_str().unwrap(),
        ],
        dir.path(),
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert_eq!(out.matches("os error").count(), 1, "{out}");
}

#[test]
fn no_colour_codes_off_a_terminal_or_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    for no_color in [None, Some("1")] {
        let mut cmd = Command::new(epc_binary());
        cmd.args([
            "export",
            "mixtral-8x7b-ht",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .env("EPC_CACHE_DIR", dir.path())
        .env("EPC_LOG", "debug")
        .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let o = cmd.output().expect("epc runs");
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("DEBUG"), "debug logs are on: {out}");
        assert!(!out.contains('\u{1b}'), "escape codes in: {out}");
        let o = Command::new(epc_binary())
            .args(["check", "--no-such-option"])
            .envs(no_color.map(|v| ("NO_COLOR", v)))
            .output()
            .expect("epc runs");
        assert!(!o.status.success());
        assert!(!text(&o).contains('\u{1b}'), "{}", text(&o));
    }
}

#[test]
fn a_misspelled_template_override_is_an_error_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("t");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("layuot.cu.hbs"), "// mine\n").unwrap();
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
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("`layuot.cu.hbs` matches no template; did you mean `layout.cu.hbs`?"),
        "{out}"
    );
}

#[test]
fn counts_are_singular_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = epc(&["all", "mixtral-8x7b-ht"], dir.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("1 spec checked:"), "{out}");
    // Every spec has three kernels at least (a flat HT spec: layout, notify, dispatch, combine).
    assert!(out.contains("4 kernels rendered"), "{out}");
    if nvrtc_present() {
        assert!(out.contains("4 kernels, "), "{out}");
    }
    assert!(
        !out.contains("1 kernels") && !out.contains("1 specs"),
        "{out}"
    );
}

#[test]
fn tune_compiles_every_variant_and_keeps_a_fleet_file() {
    let cache = tempfile::tempdir().unwrap();
    // With a GPU the tuned winner is stored: the export then holds its entry.
    let mut n = "0 tuning entries";
    if nvrtc_present() {
        let o = epc(
            &["tune", "gpt-oss-120b-ll", "qwen3-30b-a3b-ht"],
            cache.path(),
        );
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        // The defaults first, then every warps x sms combination, each compiled.
        assert!(
            out.contains("17 variants of warps_per_block, sms (all compiled)"),
            "{out}"
        );
        assert!(out.contains("  defaults "), "{out}");
        assert!(out.contains("warps 32 sms "), "{out}");
        // High throughput tunes the SMs its data kernels spread over.
        assert!(
            out.contains("qwen3-30b-a3b-ht: 5 variants of sms (all compiled)"),
            "{out}"
        );
        assert!(out.contains("T=16 d / c us"), "{out}");
        // Both specs' winners are stored (a GPU was found) or neither.
        if out.contains("wins (") {
            assert_eq!(
                out.matches("every winner matches the reference").count(),
                2,
                "{out}"
            );
            n = "2 tuning entries";
        } else {
            assert!(out.contains("nothing timed or stored"), "{out}");
        }
    }
    // Export and import need no GPU (without one the database is empty), and a bad file is
    // refused by name.
    let fleet = cache.path().join("fleet.json");
    let o = epc(&["tune", "--export", fleet.to_str().unwrap()], cache.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("exported {n}")), "{}", text(&o));
    let o = epc(&["tune", "--import", fleet.to_str().unwrap()], cache.path());
    assert!(text(&o).contains(&format!("imported {n}")), "{}", text(&o));
    std::fs::write(&fleet, "not json").unwrap();
    let o = epc(&["tune", "--import", fleet.to_str().unwrap()], cache.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("fleet.json") && text(&o).contains("not an `epc tune` export"),
        "{}",
        text(&o)
    );
    let o = epc(
        &["tune", "--export", "x.json", "--import", "y.json"],
        cache.path(),
    );
    assert!(
        !o.status.success(),
        "export and import together are refused"
    );
}

/// On a GPU: a short `epc tune` stores a winner that matches the reference, and `epc run` then
/// runs with it (said under EPC_LOG=info). Skipped with the reason where there is no GPU.
/// Whether a GPU is present, said past the harness's capture (`GPU test: ...` or
/// `SKIP test: no GPU`, lines the test command counts); no GPU fails under EPC_REQUIRE_GPU=1.
fn gpu_or_skip(test: &str) -> bool {
    if !ep_runtime::Gpu::probe().is_ok_and(|d| !d.devices.is_empty()) {
        assert!(
            std::env::var("EPC_REQUIRE_GPU").as_deref() != Ok("1"),
            "EPC_REQUIRE_GPU=1 but no GPU"
        );
        let _ = writeln!(std::io::stderr(), "SKIP {test}: no GPU");
        return false;
    }
    let _ = writeln!(std::io::stderr(), "GPU {test}: on GPU 0");
    true
}

#[test]
fn a_tuned_spec_is_stored_checked_and_used() {
    if !gpu_or_skip("a_tuned_spec_is_stored_checked_and_used") {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let o = epc(
        &[
            "tune",
            "gpt-oss-120b-ll",
            "--budget",
            "20",
            "--warmup",
            "1",
            "--iters",
            "3",
            "--repeats",
            "1",
        ],
        cache.path(),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("wins (") && out.contains("matches the reference"),
        "{out}"
    );
    let stored = std::fs::read_dir(cache.path().join("tuning"))
        .unwrap()
        .count();
    assert_eq!(stored, 1, "{out}");
    let o = Command::new(epc_binary())
        .args(["run", "gpt-oss-120b-ll"])
        .env("EPC_CACHE_DIR", cache.path())
        .env("EPC_LOG", "info")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("tuned knobs"), "{out}");
}

/// `epc soak` refuses a zero count, and on a GPU checks every call, reports no error and gives
/// the same hash for the same seed (another seed, another hash).
#[test]
fn soak_checks_its_calls_and_repeats_its_hash() {
    let cache = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], expected: &str| {
        let o = epc(args, cache.path());
        assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
        assert!(text(&o).contains(expected), "{args:?}: {}", text(&o));
    };
    refused(
        &["soak", "gpt-oss-120b-ll", "--calls", "0"],
        "--calls and --every must be at least 1",
    );
    // Seconds that bound nothing, and budgets that are no number of seconds, are refused.
    for bad in ["-1", "0", "NaN", "inf"] {
        refused(
            &["soak", "gpt-oss-120b-ll", &format!("--seconds={bad}")],
            "positive, finite number of seconds",
        );
    }
    for bad in ["-1", "NaN", "inf"] {
        refused(
            &["tune", "gpt-oss-120b-ll", &format!("--budget={bad}")],
            "the timing budget is a finite number of seconds",
        );
    }
    if !gpu_or_skip("soak_checks_its_calls_and_repeats_its_hash") {
        return;
    }
    let hash = |seed: &str| -> String {
        let o = epc(
            &[
                "soak",
                "gpt-oss-120b-ll",
                "--calls",
                "60",
                "--every",
                "20",
                "--seed",
                seed,
            ],
            cache.path(),
        );
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(
            out.contains("60 calls") && out.contains("4 checked bit for bit, 0 errors"),
            "{out}"
        );
        out.split("hash ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    let first = hash("3");
    assert_eq!(first.len(), 32, "{first}");
    assert_eq!(hash("3"), first);
    assert_ne!(hash("4"), first);
}
