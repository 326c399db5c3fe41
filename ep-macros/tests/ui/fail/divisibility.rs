#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096, experts = 100, top_k = 8, ranks = 8,
                       nvlink_domain = 3, max_tokens_per_rank = 128)]
struct Uneven;

fn main() {}
