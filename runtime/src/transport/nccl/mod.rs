//! The `nccl` transport's lower floors: ranks on several GPUs reaching each other's windows
//! through NCCL (>= 2.28) symmetric memory.
//!
//! - [`NcclLibrary`] (`loader.rs`): libnccl found at run time like libnvrtc (`EPC_NCCL`, the
//!   dynamic loader's path, the pip wheels in site-packages), its version checked, its headers
//!   found; [`NcclSearch`] is the same search with explicit inputs.
//! - `sys` / `result`: raw function pointers resolved from that library (not cudarc's `nccl`
//!   module, which opens libnccl by its own names and panics when none opens), and checked
//!   wrappers whose errors carry NCCL's code, string and last error.
//! - [`NcclUniqueId`], [`NcclComm`]: communicators, one process per GPU (`ncclCommInitRank`) or
//!   one process over several GPUs (`ncclCommInitAll`), or a caller's own (`from_raw`).
//! - [`SymmetricWindow`]: a zeroed window per rank (`ncclMemAlloc` + `ncclCommWindowRegister`),
//!   its device communicator (`ncclDevCommCreate`) and its peer table, built on the device by a
//!   kernel that calls NCCL's device API (`ncclGetLsaPointer`).
//! - [`kernels`]: that kernel and a probe of NCCL's struct sizes (`peers.cu`), compiled by NVRTC
//!   against NCCL's own headers with shims for the system and CUDA headers NVRTC lacks
//!   (`shims/`), so no CUDA toolkit is needed. `extract-headers.sh` prepares NCCL headers from
//!   NCCL's git repository for the CPU test of that compile.
//!
//! What an LL kernel needs per local rank: [`SymmetricWindow::rank`], [`SymmetricWindow::ranks`],
//! [`SymmetricWindow::base`] and [`SymmetricWindow::peers_ptr`].

mod comm;
pub mod kernels;
mod loader;
mod result;
mod sys;
mod version;
mod window;

pub use comm::{NcclComm, NcclUniqueId};
pub use kernels::compile_device_kernels;
pub use loader::{Candidate, CandidateSource, NcclLibrary, NcclSearch, NcclVersion};
pub use window::SymmetricWindow;
