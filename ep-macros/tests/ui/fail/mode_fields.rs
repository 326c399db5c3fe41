#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096, experts = 128, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128, layout = "flat")]
struct DecodeWithLayout;

#[ep_macros::ep_kernel(mode = "high_throughput", hidden = 4096, experts = 128, top_k = 8,
                       ranks = 8, max_tokens_per_rank = 4096)]
struct PrefillWithoutCapacity;

fn main() {}
