//! Specs fixed at compile time: what `#[ep_kernel]` and `ep_spec!` (crate `ep-macros`) emit.
//!
//! The macros validate the spec with this crate's own parser while the program compiles, render
//! its kernels, and emit an implementation of [`KernelSpec`] that carries the canonical spec and
//! the CUDA sources, so a program needs only NVRTC at run time.

use crate::kernels;
use crate::render::KernelSource;
use crate::spec::hex;
use crate::{Error, Spec, SpecError, SpecErrors};
use sha2::{Digest, Sha256};

/// One kernel's source as embedded by the macros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedKernel {
    /// Family name (`layout`, `ll_dispatch`, ...).
    pub name: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
}

/// A spec checked at compile time, with its rendered kernels.
///
/// ```
/// use ep_codegen::{EmbeddedKernel, KernelSpec};
///
/// struct Tiny;
/// impl KernelSpec for Tiny {
///     const YAML: &'static str = "name: tiny\nmode: low_latency\nhidden: 128\nexperts: 8\n\
///                                 top_k: 2\nranks: 2\nmax_tokens_per_rank: 4\n";
///     const KERNELS: &'static [EmbeddedKernel] = &[];
/// }
/// assert_eq!(Tiny::spec().unwrap().local_experts(), 4);
/// ```
pub trait KernelSpec {
    /// The validated spec in canonical YAML.
    const YAML: &'static str;
    /// The kernels rendered from it when the program was compiled.
    const KERNELS: &'static [EmbeddedKernel];

    /// The spec. It was validated at compile time by this same parser; an error here means the
    /// macros and this crate are different versions.
    fn spec() -> Result<Spec, Error> {
        Ok(Spec::from_yaml(
            Self::YAML,
            Some(std::any::type_name::<Self>()),
        )?)
    }

    /// The embedded kernels with their launch metadata, planned again from the spec.
    fn kernel_sources() -> Result<Vec<KernelSource>, Error> {
        let spec = Self::spec()?;
        Self::KERNELS
            .iter()
            .map(|k| KernelSource::from_embedded(&spec, k))
            .collect()
    }
}

impl KernelSource {
    /// The kernel `embedded` of `spec`: the embedded source with the plan's metadata.
    pub fn from_embedded(spec: &Spec, embedded: &EmbeddedKernel) -> Result<KernelSource, Error> {
        let plan = kernels::plans(spec)
            .into_iter()
            .find(|p| p.name == embedded.name)
            .ok_or_else(|| {
                Error::Spec(SpecErrors(vec![SpecError::unplaced(
                    embedded.name.to_owned(),
                    format!(
                        "spec `{}` has no kernel family `{}` (macros and ep-codegen differ in version?)",
                        spec.name, embedded.name
                    ),
                )]))
            })?;
        Ok(KernelSource {
            spec_name: spec.name.clone(),
            spec_hash: spec.hash(),
            name: plan.name.to_owned(),
            entries: plan.entries.into_iter().map(|(_, name)| name).collect(),
            file_name: format!("{}.{}.cu", spec.name, plan.name),
            source_hash: hex(&Sha256::digest(embedded.source.as_bytes())[..8]),
            constants: plan.constants,
            launch: plan.launch,
            params: plan.params,
            source: embedded.source.to_owned(),
        })
    }
}
