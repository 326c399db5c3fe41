//! The rank entry of the LL kernels' `LaunchArgs` (`struct RankArgs` of
//! `partials/ll_constants.hbs`), launched through [`crate::launch`].

use cudarc::driver::sys::CUdeviceptr;
use ep_codegen::kernels::ll::RANK_ARGS_BYTES;

/// One rank's entry of `LaunchArgs` (`struct RankArgs` in the generated code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct RankArgs {
    pub x: CUdeviceptr,
    pub topk_idx: CUdeviceptr,
    pub topk_weights: CUdeviceptr,
    pub out: CUdeviceptr,
    pub call: CUdeviceptr,
    pub workspace: CUdeviceptr,
    pub peers: CUdeviceptr,
    pub rank: i32,
    pub tokens: i32,
    pub half: i32,
    /// 1 when every rank of the group is on this GPU (signals at GPU scope).
    pub one_gpu: i32,
}

const _: () = assert!(std::mem::size_of::<RankArgs>() == RANK_ARGS_BYTES);
