//! Exported sources compile standalone with the toolkit's `nvcc -cubin` (where a toolkit is
//! installed), and the resulting kernel agrees with NVRTC's on resources.

use ep_runtime::{Arch, Compiler, KernelStats, Nvcc};
use ep_tests::{all_specs, nvrtc_or_skip, renderer};

#[test]
fn exported_sources_compile_with_nvcc() {
    let nvcc = match Nvcc::new() {
        Ok(n) => n,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP exported_sources_compile_with_nvcc: {e}"
            );
            return;
        }
    };
    let nvrtc = nvrtc_or_skip("exported_sources_compile_with_nvcc");
    let dir = tempfile::tempdir().unwrap();
    let renderer = renderer();
    for spec in all_specs() {
        let kernels = renderer.render(&spec).unwrap();
        // Through the exported files, as a user profiling them would.
        let folder = dir.path().join(spec.name());
        ep_codegen::export(&folder, &spec, &kernels, false).unwrap();
        for k in kernels {
            let exported = std::fs::read_to_string(folder.join(&k.file_name)).unwrap();
            assert_eq!(exported, k.source);
            let out = nvcc
                .compile_to_cubin(&k, Arch::SM90)
                .unwrap_or_else(|e| panic!("{e}"));
            let with_nvcc = KernelStats::of(&out.cubin, &out.log);
            assert!(with_nvcc.registers.is_some(), "{}", k.file_name);
            if let Some(nvrtc) = &nvrtc {
                let other = nvrtc.compile_to_cubin(&k, Arch::SM90).unwrap();
                let with_nvrtc = KernelStats::of(&other.cubin, &other.log);
                assert_eq!(
                    with_nvcc.stack_frame_bytes, with_nvrtc.stack_frame_bytes,
                    "{}",
                    k.file_name
                );
            }
        }
    }
}
