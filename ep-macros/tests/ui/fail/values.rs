#[ep_macros::ep_kernel(mode = "turbo", hidden = 4096, experts = 128, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128)]
struct UnknownMode;

#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096.5, experts = 128, top_k = 8,
                       ranks = 8, max_tokens_per_rank = 128)]
struct FloatHidden;

#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128)]
struct MissingExperts;

fn main() {}
