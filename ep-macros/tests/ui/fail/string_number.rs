#[ep_macros::ep_kernel(mode = "low_latency", hidden = "7168", experts = 64, top_k = 4, ranks = 8,
                       max_tokens_per_rank = 128)]
struct QuotedHidden;

fn main() {}
