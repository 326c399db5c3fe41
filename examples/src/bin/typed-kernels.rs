//! Kernel specs declared in Rust, compiled with NVRTC at run time and run on virtual ranks.
//!
//! Two specs come from `#[ep_kernel]`, one from a YAML file through `ep_spec!`; a wrong value
//! in any of them fails `cargo build`. On a GPU, each spec's dispatch and combine run on random
//! routings and are checked bit for bit against the CPU reference. Without a GPU the program
//! says so and exits (with an error under EPC_REQUIRE_GPU=1).
//!
//! Run: `cargo run --release -p ep-examples --bin typed-kernels`.

use anyhow::{Context, Result, anyhow, bail};
use ep_codegen::KernelSpec;
use ep_macros::{ep_kernel, ep_spec};
use ep_runtime::reference::ll::{RankInput, random_activations};
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Error, Gpu, Jit, LlKernels, check};

/// DeepSeek-V3 decode on 8 ranks, FP8 dispatch with power-of-two scales.
#[ep_kernel(
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
struct DeepSeekDecode;

/// gpt-oss-120b decode on 4 ranks, BF16, 32-bit expert ids.
#[ep_kernel(
    mode = "low_latency",
    hidden = 2880,
    experts = 128,
    top_k = 4,
    ranks = 4,
    max_tokens_per_rank = 64,
    index_dtype = "i32"
)]
struct GptOssDecode;

// Qwen3-235B-A22B decode, from the built-in spec file (`specs` links to ep-codegen/specs).
ep_spec!(QwenDecode = "specs/qwen3-235b-a22b-ll.yaml");

/// Runs `calls` checked calls of `S` and prints what they did.
fn run<S: KernelSpec>(gpu: &Gpu, jit: &Jit, calls: usize) -> Result<()> {
    let spec = S::spec()?;
    let mut kernels =
        LlKernels::<S>::load(gpu, jit).with_context(|| format!("loading {}", spec.name()))?;
    let mut call = kernels.new_call()?;
    let d = spec.dims();
    for i in 0..calls {
        let inputs: Vec<RankInput> = (0..d.ranks)
            .map(|rank| {
                let tokens = if i == 0 {
                    d.tokens
                } else {
                    (i * 37 + rank * 11) % (d.tokens + 1)
                };
                let seed = (i * 1000 + rank) as u64;
                RankInput {
                    routing: generate(
                        Pattern::ALL[i % Pattern::ALL.len()],
                        tokens,
                        d.top_k,
                        d.experts,
                        d.ranks,
                        seed,
                    ),
                    x: random_activations(&spec, tokens, seed),
                }
            })
            .collect();
        let received = kernels.dispatch(&mut call, &inputs)?;
        check::ll::check_dispatch(&spec, &inputs, &received)
            .map_err(|why| anyhow!("{}: dispatch {i}: {why}", spec.name()))?;
        let y = check::ll::expert_outputs(&spec, &received);
        let out = kernels.combine(&mut call, &y)?;
        check::ll::check_combine(&spec, &inputs, &out)
            .map_err(|why| anyhow!("{}: combine {i}: {why}", spec.name()))?;
    }
    println!(
        "{:<16} H={:<5} E={:<4} K={} R={:<2} {} -> {}: {calls} calls, dispatch and combine match the reference",
        spec.name(),
        spec.hidden(),
        spec.experts(),
        spec.top_k(),
        spec.ranks(),
        spec.dtype().as_str(),
        spec.dispatch_dtype().as_str()
    );
    Ok(())
}

fn main() -> Result<()> {
    let gpu = match Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(e @ (Error::DriverNotFound { .. } | Error::NoGpu { .. })) => {
            if std::env::var("EPC_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                bail!("EPC_REQUIRE_GPU=1 but {e}");
            }
            println!("skipped: no GPU ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let jit = Jit::nvrtc()?;
    println!("GPU {} ({})", gpu.name(), gpu.arch());
    run::<DeepSeekDecode>(&gpu, &jit, 5)?;
    run::<GptOssDecode>(&gpu, &jit, 5)?;
    run::<QwenDecode>(&gpu, &jit, 5)?;
    Ok(())
}
