#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096, experts = 128, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128, tuning(vector_bytes = 3, warps_per_block = 64))]
struct BadKnobs;

#[ep_macros::ep_kernel(mode = "low_latency", hidden = 4096, experts = 128, top_k = 8, ranks = 8,
                       max_tokens_per_rank = 128, tuning(smz = 4))]
struct MisspelledKnob;

fn main() {}
