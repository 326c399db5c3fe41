//! `ep-runtime`: compiles epc's generated kernels with NVRTC, caches the cubins, launches them on
//! a GPU and checks them against CPU references.
//!
//! The crate is laid out by floors, in the direction of the flow:
//! - [`jit`]: the [`Compiler`] trait with [`Nvrtc`] and [`Nvcc`], the cubin [`KernelCache`], cubin
//!   reading, [`Arch`], and [`Jit`], which loads a rendered [`ep_codegen::KernelSource`] on a [`Gpu`];
//! - [`transport`]: how ranks reach each other's windows ([`VirtualRanks`] on one GPU);
//! - [`ll`]: low-latency mode (the per-rank device API and the host-vector helpers on top);
//!   [`ht`]: high-throughput mode ([`HtGroup`]: layout, notify, dispatch and combine);
//! - [`reference`](mod@reference): the CPU definitions of every kernel, [`check`]: comparisons with them, and
//!   [`routing`]: reproducible inputs.

mod device_index;
mod error;
mod gpu;

pub mod check;
pub mod ht;
pub mod jit;
mod launch;
pub mod libsearch;
pub mod ll;
mod mode_group;
mod per_rank;
mod raw_copy;
pub mod reference;
pub mod routing;
pub mod timing;
pub mod transport;
pub mod tuning;

pub use error::{Error, ErrorKind};
pub use gpu::{DeviceInfo, DriverInfo, Gpu};
pub use ht::{
    HtCombineInput, HtDispatchInput, HtGroup, HtNotify, HtReceived, HtReceivedViews, HtTimes,
    LayoutKernel, NotifyResult, expected_notify,
};
pub use jit::arch::{ARCH_SPELLINGS, Arch, ArchNeed, check_spec_arch, spec_needs};
pub use jit::cache::{
    CacheOutcome, CachedCubin, KernelCache, Metadata, compile_uncached, save_failed_source,
};
pub use jit::compiler::{CompileOutput, Compiler, KernelStats, listing};
pub use jit::nvcc::Nvcc;
pub use jit::nvrtc::{Nvrtc, NvrtcLibrary, NvrtcSearch};
pub use jit::{Jit, LoadedKernel};
pub use libsearch::{Candidate, CandidateSource};
pub use ll::{
    CombineInput, DEFAULT_TIMEOUT, DispatchInput, Elem, GraphTimes, HostCall, LaunchFloor, LlCall,
    LlGraphs, LlGroup, LlKernels, LowLatency, PhaseTimes, RankDispatch, Received, SpecCall, Stream,
    Tensor,
};
pub use mode_group::ModeGroup;
pub use transport::VirtualRanks;

/// `ep-codegen`, the crate of specs and rendered kernels this one compiles and launches, so a
/// program depending on `ep-runtime` alone names `ep_runtime::codegen::{Spec, KernelSpec, ...}`
/// (and `ep-macros` expands to these paths when the caller has no `ep-codegen` dependency).
pub use ep_codegen as codegen;
