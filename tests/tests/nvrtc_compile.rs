//! Every spec in `specs/` compiles with NVRTC for sm_90, with no GPU and no toolkit header.

use ep_runtime::{Arch, CacheOutcome, Compiler};
use ep_tests::{all_specs, fresh_jit, nvrtc_or_skip, renderer};

#[test]
fn every_spec_compiles_for_sm90() {
    let Some(nvrtc) = nvrtc_or_skip("every_spec_compiles_for_sm90") else {
        return;
    };
    eprintln!("NVRTC {:?} from {}", nvrtc.version(), nvrtc.location());
    let (jit, _dir) = fresh_jit(nvrtc);
    let renderer = renderer();
    let specs = all_specs();
    assert!(specs.len() >= 8);
    for spec in &specs {
        for kernel in renderer.render(spec).unwrap() {
            let cubin = jit
                .cubin(&kernel, Arch::SM90)
                .unwrap_or_else(|e| panic!("{}: {e}", kernel.file_name));
            assert_eq!(cubin.outcome, CacheOutcome::Miss);
            // An ELF cubin.
            assert_eq!(&cubin.cubin[..4], b"\x7fELF", "{}", kernel.file_name);
            // Figures read from the cubin; where ptxas printed its own, they agree.
            let stats = cubin.metadata.stats;
            let regs = stats
                .registers
                .expect("the cubin records its register count");
            assert!(
                (8..=255).contains(&regs),
                "{}: {regs} registers",
                kernel.file_name
            );
            assert_eq!(
                stats.stack_frame_bytes,
                Some(0),
                "{}: no local memory",
                kernel.file_name
            );
            let logged = ep_runtime::KernelStats::parse_log(&cubin.metadata.log);
            if let Some(logged_regs) = logged.registers {
                assert_eq!(logged_regs, regs, "{}", kernel.file_name);
                assert_eq!(logged.spill_stores, Some(0), "{}", kernel.file_name);
            }
            eprintln!(
                "{:<40} {:>7.1} ms  {:>3} registers",
                kernel.file_name,
                cubin.metadata.compile_ms,
                cubin.metadata.stats.registers.unwrap_or(0)
            );
            // The second request is served by the cache, byte for byte.
            let again = jit.cubin(&kernel, Arch::SM90).unwrap();
            assert_eq!(again.outcome, CacheOutcome::Hit);
            assert_eq!(again.cubin, cubin.cubin);
        }
    }
}

#[test]
fn a_compile_error_carries_log_options_and_numbered_source() {
    let Some(nvrtc) = nvrtc_or_skip("a_compile_error_carries_log_options_and_numbered_source")
    else {
        return;
    };
    let spec = &all_specs()[0];
    let mut kernel = renderer().render(spec).unwrap().remove(0);
    kernel.source.push_str("\nthis is not C++;\n");
    let err = nvrtc
        .compile_to_cubin(&kernel, Arch::SM90)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&kernel.file_name), "{err}");
    assert!(err.contains("--gpu-architecture=sm_90"), "{err}");
    assert!(err.contains("error"), "{err}");
    assert!(err.contains("| this is not C++;"), "{err}");
}

#[test]
fn cubins_differ_per_architecture() {
    let Some(nvrtc) = nvrtc_or_skip("cubins_differ_per_architecture") else {
        return;
    };
    let spec = &all_specs()[0];
    let kernel = renderer().render(spec).unwrap().remove(0);
    let a = nvrtc.compile_to_cubin(&kernel, Arch(90)).unwrap();
    let b = nvrtc.compile_to_cubin(&kernel, Arch(80)).unwrap();
    assert_ne!(a.cubin, b.cubin);
}
