//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// epc: a code-generating kernel compiler for MoE expert-parallel dispatch and combine.
///
/// SPEC arguments are YAML files or the names of built-in specs (`epc check` lists them); none
/// means every built-in spec. With no subcommand, epc runs the main job on the built-in specs.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// A folder of templates (`layout.cu.hbs`, `partials/*.hbs`) overriding the embedded ones.
    #[arg(long, global = true, env = "EPC_TEMPLATES_DIR", value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// What to do; the main job when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, render, compile and (on a GPU) run, verify and time every spec: the main job.
    All(AllArgs),
    /// Validate specs and print their key figures and the device memory they need.
    Check(CheckArgs),
    /// Write each spec's generated `.cu` files and `manifest.json` under `DIR/<spec name>/`.
    Export {
        /// Specs to export.
        #[command(flatten)]
        specs: SpecArgs,
        /// Output folder.
        #[arg(long, short)]
        out: PathBuf,
        /// Replace `DIR/<spec name>/` even when it holds another spec's export (or files that
        /// are not an export).
        #[arg(long)]
        force: bool,
    },
    /// Compile each spec's kernels with NVRTC into the cache and report time, registers, spills.
    Compile(CompileArgs),
    /// Run each spec's kernels on the GPU on a random routing and check them against the reference.
    Run(RunArgs),
    /// Time dispatch and combine (both modes) against a copy of the same bytes and the
    /// same-traffic copy, HT dispatch also against its row copies alone.
    Bench(BenchArgs),
    /// Measure the variants of each spec's kernel knobs on this GPU and store the fastest in the
    /// tuning database, which the runtime uses where a spec says `auto`; or export / import it.
    Tune(TuneArgs),
    /// Run many low-latency calls with fresh routings on the GPU: every call's counts checked,
    /// a sample bit for bit, throughput and a hash of the outputs reported.
    Soak(SoakArgs),
    /// Report the GPUs, the driver, NVRTC, NCCL and the cache folder epc would use, with the fix
    /// for each missing piece. Exits 0 when everything needed here is present.
    Doctor,
}

/// `epc soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Low-latency specs to soak.
    #[command(flatten)]
    pub specs: SpecArgs,
    /// Calls per spec.
    #[arg(long, default_value_t = 10_000)]
    pub calls: usize,
    /// Start no call of a spec after this many seconds, whatever the calls left (the call
    /// running then ends first, with its check against the CPU reference if it has one).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Check every Nth call (and the last) bit for bit against the CPU reference; the others'
    /// received counts are checked against their routing.
    #[arg(long, default_value_t = 1000)]
    pub every: usize,
    /// Seed of the routings and activations (the same seed gives the same hash).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `epc tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Specs to tune (YAML files or built-in names; default: every built-in spec).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Tune the standard workloads of `epc bench --standard` (8 ranks unless --ranks).
    #[arg(long, conflicts_with_all = ["export", "import"])]
    pub standard: bool,
    /// Run every spec with this many virtual ranks instead of its own.
    #[arg(long, conflicts_with_all = ["export", "import"])]
    pub ranks: Option<u32>,
    /// Where the ranks run while timing (the tuning database keeps the transport in its key).
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Seconds of GPU timing per spec, at most (the defaults are always timed).
    #[arg(long, default_value_t = 120.0)]
    pub budget: f64,
    /// Untimed calls before each measurement.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed calls per measurement.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Measurements per variant and token count; their median counts.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Write every variant's times as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<std::path::PathBuf>,
    /// Plot time per variant and token count as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    /// Write every tuning database entry into FILE (to ship to a fleet), then stop.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["import", "specs"])]
    pub export: Option<std::path::PathBuf>,
    /// Store every entry of FILE (an export) in the tuning database, then stop.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["export", "specs"])]
    pub import: Option<std::path::PathBuf>,
}

/// Spec selection.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// YAML files, `-` for one spec on standard input, or built-in spec names (default: every
    /// built-in spec).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<String>,
}

/// `epc check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Specs to check.
    #[command(flatten)]
    pub specs: SpecArgs,
    /// The most device memory one rank may need (`16GiB`, `512MiB`, `1.5TiB`); a spec above it
    /// is an error. Default: 80% of GPU 0's memory, or 64GiB without a GPU.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

/// `--max-memory`'s parser.
fn parse_size(text: &str) -> Result<u64, String> {
    ep_codegen::parse_size(text).map_err(|e| e.to_string())
}

/// `epc compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// Specs to compile.
    #[command(flatten)]
    pub specs: SpecArgs,
    /// Target architecture: sm_90 (also 90 or 9.0), or sm_90a, sm_100a, ... (default: the
    /// GPU's, or sm_90 without one).
    #[arg(long)]
    pub arch: Option<String>,
    /// Compile afresh, neither reading nor writing the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Compiler: NVRTC (what epc uses at run time), or the toolkit's nvcc for comparison.
    #[arg(long, value_enum, default_value_t = CompilerArg::Nvrtc)]
    pub compiler: CompilerArg,
}

/// Compilers `epc compile` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompilerArg {
    /// NVRTC, loaded at run time (no toolkit needed).
    Nvrtc,
    /// `nvcc -cubin` from a CUDA toolkit.
    Nvcc,
}

/// `epc run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Specs to run.
    #[command(flatten)]
    pub specs: SpecArgs,
    /// Seed of the random routing.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens on this rank (default: max_tokens_per_rank).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Shape of the routing.
    #[arg(long, value_enum, default_value_t = PatternArg::Uniform)]
    pub pattern: PatternArg,
    /// Timed launches after 10 warm-ups.
    #[arg(long, default_value_t = 100)]
    pub iters: usize,
    /// Low-latency calls compared with the reference (the first at T = max_tokens_per_rank).
    #[arg(long, default_value_t = 1)]
    pub routings: usize,
    /// Run low-latency specs on this many virtual ranks instead of their own.
    #[arg(long)]
    pub ranks: Option<u32>,
    /// Write the first call's tensors here as .npy (`rank<r>.<tensor>.npy`; 16-bit activations
    /// as their bit patterns, uint16). High-throughput: the rows in use of each receive buffer,
    /// with `num_recv_tokens_per_expert` and `group_offset`.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Where the ranks run.
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// Where low-latency ranks run (`epc run`, `epc bench`).
#[derive(Debug, Args)]
pub struct TransportArgs {
    /// `virtual`: every rank on GPU 0. `nccl`: one rank per GPU over NCCL symmetric memory; with
    /// one GPU a 1-rank communicator, with several epc starts one process per GPU, unless this
    /// process is one rank of a job (--nccl-rank and --nccl-ranks, or torchrun's RANK and
    /// WORLD_SIZE, or Open MPI's OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE).
    #[arg(long, value_enum, default_value_t = TransportArg::Virtual)]
    pub transport: TransportArg,
    /// This process's NCCL rank.
    #[arg(long, value_name = "RANK")]
    pub nccl_rank: Option<usize>,
    /// Ranks of the NCCL job.
    #[arg(long, value_name = "RANKS")]
    pub nccl_ranks: Option<usize>,
    /// GPU of this rank (default: LOCAL_RANK or OMPI_COMM_WORLD_LOCAL_RANK, else the rank).
    #[arg(long, value_name = "GPU")]
    pub nccl_device: Option<usize>,
    /// File holding NCCL's unique id (hex) for the ranks of a job: rank 0 writes it when absent,
    /// the others wait for it. `EPC_NCCL_ID` (the id itself, hex) takes precedence.
    #[arg(long, env = "EPC_NCCL_ID_FILE", value_name = "FILE")]
    pub nccl_id_file: Option<PathBuf>,
}

/// Transports of the LL ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// All ranks on one GPU.
    Virtual,
    /// One rank per GPU over NCCL.
    Nccl,
}

/// `epc all`.
#[derive(Debug, Args)]
pub struct AllArgs {
    /// Specs (default: every built-in spec).
    #[command(flatten)]
    pub specs: SpecArgs,
    /// Random routings checked per spec on the GPU.
    #[arg(long, default_value_t = 10)]
    pub routings: usize,
    /// Compile target: sm_90 (also 90 or 9.0), or sm_90a, sm_100a, ... (default: the GPU's, or
    /// sm_90 without one).
    #[arg(long)]
    pub arch: Option<String>,
}

/// `epc bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Specs to time (default: the standard workloads, see --standard).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<String>,
    /// The standard workloads on 8 ranks: LL at T=128 tokens per rank, DeepSeek-V3 (H=7168,
    /// E=256, K=8) with FP8 and with BF16 dispatch, Qwen3-235B (H=4096, E=128, K=8) and
    /// gpt-oss-120b (H=2880, E=128, K=4); HT at T=4096 for the same three shapes (DeepSeek-V3
    /// with BF16 and FP8 dispatch, Qwen3-235B expert-major, gpt-oss flat).
    /// The default when no SPEC is given.
    #[arg(long)]
    pub standard: bool,
    /// Run every spec with this many (virtual) ranks instead of its own.
    #[arg(long)]
    pub ranks: Option<u32>,
    /// Tokens per rank (default: LL 128, HT 4096; at most max_tokens_per_rank); with --sweep,
    /// where the sweep ends.
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Set tuning.sms (SMs all ranks' kernels may occupy) of every spec.
    #[arg(long)]
    pub sms: Option<u32>,
    /// Set tuning.warps_per_block of every spec.
    #[arg(long)]
    pub warps: Option<u32>,
    /// Also time tokens per rank 1, 2, 4, ... up to max_tokens_per_rank, or up to --tokens (for
    /// --csv / --svg).
    #[arg(long)]
    pub sweep: bool,
    /// Timed calls per measurement.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Untimed calls first.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Write every measurement as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Plot time against tokens per rank as SVG (with --sweep).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write every rank's routing of every measurement into this folder as NumPy files
    /// (`WORKLOAD.T<tokens>.rank<r>.topk_idx.npy` and `.topk_weights.npy`), for the baselines in
    /// scripts/bench/.
    #[arg(long, value_name = "DIR")]
    pub routing_out: Option<PathBuf>,
    /// Shape of the routings (the standard workloads and their yardsticks use `uniform`).
    #[arg(long, value_enum, default_value_t = PatternArg::Uniform)]
    pub pattern: PatternArg,
    /// Where the ranks run.
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// Routing shapes (see `ep_runtime::routing::Pattern`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PatternArg {
    /// K distinct experts per token, uniformly.
    Uniform,
    /// Most picks go to a few hot experts.
    Hot,
    /// Every other rank receives nothing.
    EmptyRanks,
    /// A quarter of the slots are -1.
    Sparse,
}

impl From<PatternArg> for ep_runtime::routing::Pattern {
    fn from(p: PatternArg) -> Self {
        use ep_runtime::routing::Pattern;
        match p {
            PatternArg::Uniform => Pattern::Uniform,
            PatternArg::Hot => Pattern::Hot,
            PatternArg::EmptyRanks => Pattern::EmptyRanks,
            PatternArg::Sparse => Pattern::Sparse,
        }
    }
}
