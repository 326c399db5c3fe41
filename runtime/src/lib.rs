//! `ep-runtime`: compiles epc's generated kernels with NVRTC, caches the cubins, launches them on
//! a GPU and checks them against CPU references.
//!
//! The pieces stack one on another: [`Nvrtc`] (a [`Compiler`]) turns a rendered
//! [`ep_codegen::KernelSource`] into a cubin; [`KernelCache`] keeps cubins on disk; [`Jit`] joins
//! the two and loads the result on a [`Gpu`]; kernel handles such as [`LayoutKernel`] launch it.
//! [`reference`] defines what every kernel must compute, and [`routing`] makes reproducible inputs.

mod arch;
mod cache;
mod compiler;
mod cubin;
mod device_index;
mod error;
mod gpu;
mod jit;
mod layout;
mod ll;
pub mod ll_check;
mod nvcc;
mod nvrtc;
pub mod reference;
pub mod routing;
pub mod timing;
mod typed;
mod virtual_ranks;

pub use arch::Arch;
pub use cache::{CacheOutcome, CachedCubin, KernelCache, Metadata, compile_uncached};
pub use compiler::{CompileOutput, Compiler, KernelStats, listing};
pub use error::Error;
pub use gpu::Gpu;
pub use jit::{Jit, LoadedKernel};
pub use layout::LayoutKernel;
pub use ll::{DEFAULT_TIMEOUT, LlCall, LlGraphs, LowLatency, PhaseTimes, RankDispatch};
pub use nvcc::Nvcc;
pub use nvrtc::{Nvrtc, NvrtcLibrary};
pub use typed::{LlKernels, SpecCall};
pub use virtual_ranks::VirtualRanks;
