#[ep_macros::ep_kernel(mode = "low_latency", hidden = 7164, experts = 256, top_k = 40, ranks = 8,
                       max_tokens_per_rank = 128)]
struct OutOfRange;

fn main() {}
