//! A crate whose only dependency is `ep-macros`. With neither `ep-codegen` nor `ep-runtime` to
//! name, the macros give each item inherent constants that use only `core`; that this crate
//! builds at all shows the expansion names no other crate.

/// DeepSeek-V3 decode, declared in Rust.
#[ep_macros::ep_kernel(
    mode = "low_latency",
    hidden = 7168,
    dtype = "bf16",
    dispatch_dtype = "fp8_e4m3",
    fp8(scale = "ue8m0"),
    experts = 256,
    top_k = 8,
    ranks = 8,
    max_tokens_per_rank = 128
)]
pub struct DeepSeekDecode;

ep_macros::ep_spec!(
    /// gpt-oss-120b decode, from the built-in spec file (`specs` links to ep-codegen/specs).
    pub GptOssDecode = "specs/gpt-oss-120b-ll.yaml"
);

#[cfg(test)]
mod tests {
    use super::{DeepSeekDecode, GptOssDecode};

    #[test]
    fn constants_carry_the_checked_spec_and_its_kernels() {
        assert!(DeepSeekDecode::YAML.contains("name: DeepSeekDecode"));
        assert!(DeepSeekDecode::YAML.contains("hidden: 7168"));
        assert_eq!(DeepSeekDecode::SPEC_HASH.len(), 16);
        assert!(
            DeepSeekDecode::SPEC_HASH
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
        let names: Vec<&str> = DeepSeekDecode::KERNELS.iter().map(|k| k.0).collect();
        assert_eq!(names, ["layout", "ll_dispatch", "ll_combine"]);
        assert!(
            DeepSeekDecode::KERNELS
                .iter()
                .all(|(_, source)| source.contains("constexpr int kNumExperts = 256;"))
        );
        assert!(GptOssDecode::YAML.contains("name: gpt-oss-120b-ll"));
        assert_ne!(GptOssDecode::SPEC_HASH, DeepSeekDecode::SPEC_HASH);
        assert_eq!(GptOssDecode::KERNELS.len(), 3);
    }
}
