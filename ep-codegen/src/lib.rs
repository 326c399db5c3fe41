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
mod canonical;
mod embedded;
mod error;
mod export;
pub mod kernels;
pub mod memory;
mod paths;
mod render;
mod spec;
mod suggest;
mod validate;
mod yaml;

pub use builtin::{BuiltinSpec, builtin_specs, closest_builtin, find_builtin, unknown_builtin};
pub use embedded::{EmbeddedKernel, KernelSpec};
pub use error::{Error, Snippet, SpecError, SpecErrors};
pub use export::{Manifest, export};
pub use memory::{MemoryError, MemoryPlan, human_bytes, parse_size};
pub use paths::{PathError, check_path_component, join_component};
pub use render::{GENERATOR_VERSION, KernelSource, Renderer};
pub use spec::{
    Dims, Dtype, Fp8, HighThroughput, IndexDtype, Layout, Mode, ScaleFormat, Spec, Tuning, hex,
};
pub use suggest::closest;
pub use validate::{
    FP8_BLOCK, MAX_EXPERTS, MAX_HIDDEN, MAX_HT_TOKENS, MAX_LL_TOKENS, MAX_NAME, MAX_RANKS,
    MAX_TOP_K, did_you_mean,
};
pub use yaml::MAX_SPEC_BYTES;

/// Reads, parses and validates a spec file: at most [`MAX_SPEC_BYTES`] are read, and text that
/// is not UTF-8 is refused with the place of the first bad byte.
pub fn parse_spec_file(path: &std::path::Path) -> Result<Spec, Error> {
    let label = path.display().to_string();
    let bytes = read_spec_bytes(path)?;
    let text = spec_text(&bytes, &label)?;
    Ok(Spec::from_yaml(text, Some(&label))?)
}

/// The bytes of a spec file, for [`spec_text`]: at most one byte more than a spec may hold is
/// read, so that a huge file (or an endless one, such as a device) is refused without being read
/// whole.
pub fn read_spec_bytes(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// The bytes of a spec as text: UTF-8 (a byte-order mark is allowed), at most [`MAX_SPEC_BYTES`].
pub fn spec_text<'b>(bytes: &'b [u8], label: &str) -> Result<&'b str, Error> {
    let placed = |rule: String, line: usize, column: usize, before: Option<&str>| {
        Error::Spec(SpecErrors(vec![SpecError {
            file: Some(label.to_owned()),
            line: Some(line),
            column: Some(column),
            path: String::new(),
            value: String::new(),
            rule,
            snippet: before.map(|b| Snippet::new(b.rsplit('\n').next().unwrap_or(""), column)),
        }]))
    };
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(placed(
            format!(
                "the input holds more than {MAX_SPEC_BYTES} bytes (1 MiB); a spec is a few hundred"
            ),
            1,
            1,
            None,
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let good = e.valid_up_to();
        // The prefix before the first bad byte is valid UTF-8 by definition.
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        placed(
            format!(
                "not UTF-8 text: byte {good} (0x{:02x}) is not valid UTF-8; save the spec as UTF-8",
                bytes[good]
            ),
            line,
            column,
            Some(before),
        )
    })
}
