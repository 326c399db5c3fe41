#[ep_macros::ep_kernel(mode = "low_latency", hiden = 7168, experts = 256, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128)]
struct Typo;

fn main() {}
