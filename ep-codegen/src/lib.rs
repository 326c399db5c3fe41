//! `ep-codegen`: the front of epc, a code-generating kernel compiler for the dispatch and combine
//! communication of Mixture-of-Experts expert parallelism.
//!
//! A YAML spec fixes one deployment's shapes; this crate parses and validates it (every error
//! located and explained), plans the kernels it needs, and renders specialized CUDA C++ from
//! handlebars templates. It never touches CUDA: compiling and launching is `ep-runtime`'s job.
//!
//! ```
//! let yaml = "name: demo\nmode: high_throughput\nhidden: 4096\nexperts: 64\ntop_k: 6\n\
//!             ranks: 8\nmax_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n";
//! let spec = ep_codegen::Spec::from_yaml(yaml, None).unwrap();
//! assert_eq!(spec.local_experts(), 8);
//! let kernels = ep_codegen::Renderer::new().unwrap().render(&spec).unwrap();
//! assert!(kernels[0].source.contains("constexpr int kNumExperts = 64;"));
//! ```

mod builtin;
mod embedded;
mod error;
mod export;
pub mod kernels;
mod locate;
pub mod memory;
mod render;
mod spec;
mod suggest;
mod validate;

pub use builtin::{BuiltinSpec, builtin_specs, closest_builtin, find_builtin};
pub use embedded::{EmbeddedKernel, KernelSpec};
pub use error::{Error, SpecError, SpecErrors};
pub use export::{Manifest, export};
pub use memory::{MemoryError, MemoryPlan, human_bytes, parse_size};
pub use render::{GENERATOR_VERSION, KernelSource, Renderer};
pub use spec::{
    Dims, Dtype, Fp8, HighThroughput, IndexDtype, Layout, Mode, ScaleFormat, Spec, Tuning, hex,
};
pub use suggest::closest;
pub use validate::{
    FP8_BLOCK, MAX_EXPERTS, MAX_HIDDEN, MAX_HT_TOKENS, MAX_LL_TOKENS, MAX_RANKS, MAX_TOP_K,
    did_you_mean,
};

/// Reads, parses and validates a spec file.
pub fn parse_spec_file(path: &std::path::Path) -> Result<Spec, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(Spec::from_yaml(&text, Some(&path.display().to_string()))?)
}
