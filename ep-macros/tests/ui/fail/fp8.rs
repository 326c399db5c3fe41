#[ep_macros::ep_kernel(mode = "low_latency", hidden = 2880, dispatch_dtype = "fp8_e4m3",
                       fp8(block = 64), experts = 128, top_k = 4, ranks = 8,
                       max_tokens_per_rank = 128)]
struct BadFp8;

fn main() {}
