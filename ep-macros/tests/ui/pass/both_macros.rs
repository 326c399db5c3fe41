use ep_codegen::KernelSpec;

#[ep_macros::ep_kernel(mode = "high_throughput", hidden = 4096, experts = 128, top_k = 8,
                       ranks = 8, max_tokens_per_rank = 4096, max_recv_tokens_per_rank = 32768,
                       layout = "expert_major", expert_alignment = 128)]
struct Prefill;

ep_macros::ep_spec!(pub Decode = "../../../../ep-codegen/specs/gpt-oss-120b-ll.yaml");

fn main() {
    assert_eq!(Prefill::spec().unwrap().experts(), 128);
    assert_eq!(Decode::spec().unwrap().name(), "gpt-oss-120b-ll");
    assert_eq!(Decode::KERNELS.len(), 3);
}
