//! A crate depending on `ep-macros` and on `ep-runtime` renamed `rt`, not on `ep-codegen`: the
//! macros implement `rt::codegen::KernelSpec`, so the runtime's typed API takes the specs.

use rt::codegen::KernelSpec;

/// Qwen3-30B-A3B-sized decode, declared in Rust.
#[ep_macros::ep_kernel(
    mode = "low_latency",
    hidden = 2048,
    experts = 128,
    top_k = 8,
    ranks = 8,
    max_tokens_per_rank = 64
)]
pub struct QwenDecode;

/// The typed low-latency kernels of `S` (a signature the runtime accepts only for a
/// `KernelSpec`).
pub type Kernels<S> = rt::LlKernels<S>;

/// The family names of a spec's embedded kernels.
pub fn kernel_names<S: KernelSpec>() -> Vec<&'static str> {
    S::KERNELS.iter().map(|k| k.name).collect()
}

#[cfg(test)]
mod tests {
    use super::{QwenDecode, kernel_names};
    use rt::codegen::KernelSpec;

    #[test]
    fn the_spec_implements_the_runtime_re_exported_trait() {
        let spec = QwenDecode::spec().unwrap();
        assert_eq!((spec.name(), spec.local_experts()), ("QwenDecode", 16));
        assert_eq!(
            kernel_names::<QwenDecode>(),
            ["layout", "ll_dispatch", "ll_combine"]
        );
        let sources = QwenDecode::kernel_sources().unwrap();
        assert!(sources.iter().all(|k| k.spec_hash == spec.hash()));
        let _: Option<super::Kernels<QwenDecode>> = None;
    }
}
