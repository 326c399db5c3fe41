//! The one kernel parameter of every entry point that serves several ranks, `LaunchArgs`, packed
//! as the generated code declares it (`partials/ll_constants.hbs` for LL,
//! `partials/ht_constants.hbs` and `ht_notify.cu.hbs` for HT), and launches on a caller's raw
//! stream. Each family declares its own rank entry (`ll::launch::RankArgs`, ...).

use std::ffi::c_void;

use cudarc::driver::CudaFunction;
use ep_codegen::kernels::ll::MAX_LAUNCH_RANKS;

use crate::Error;
use crate::error::CudaContextExt;
use crate::ll::Stream;

/// `struct LaunchArgs` of a kernel family whose rank entry is `A` (`ll::launch::RankArgs` for LL): the
/// timeout, then up to [`MAX_LAUNCH_RANKS`] rank entries (the generated struct holds
/// `launch_ranks(spec)` of them; the driver copies only that many bytes).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct LaunchArgs<A> {
    timeout_ns: u64,
    rank: [A; MAX_LAUNCH_RANKS as usize],
}

/// How one entry point is launched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    /// Blocks per rank (grid.x).
    pub blocks: u32,
    /// Threads per block.
    pub threads: u32,
    /// Whether the grid must be co-resident, its blocks waiting for each other's work
    /// (cooperative launch).
    pub cooperative: bool,
}

/// Launches `f` once for `ranks` (at most [`MAX_LAUNCH_RANKS`], grid.y = entry) on `stream`.
/// The GPU's context must be current on this thread.
///
/// # Safety
/// `f` must be an entry point whose one parameter is `LaunchArgs` with rank entries laid out as
/// `A`, of a spec whose `launch_ranks` is at least `ranks.len()`, and every address in `ranks`
/// must point to memory of the shapes the kernels index (the group checks them), alive until
/// the launch completes.
pub(crate) unsafe fn launch<A: Copy + Default>(
    f: &CudaFunction,
    grid: Grid,
    ranks: &[A],
    timeout_ns: u64,
    stream: Stream<'_>,
) -> Result<(), Error> {
    let n = ranks.len();
    if n == 0 {
        return Ok(());
    }
    if n > MAX_LAUNCH_RANKS as usize {
        return Err(Error::Input(format!(
            "{n} ranks in one launch; at most {MAX_LAUNCH_RANKS}"
        )));
    }
    let mut args = LaunchArgs {
        timeout_ns,
        rank: [A::default(); MAX_LAUNCH_RANKS as usize],
    };
    args.rank[..n].copy_from_slice(ranks);
    let mut params = [(&raw mut args).cast::<c_void>()];
    let dims = ((grid.blocks, n as u32, 1), (grid.threads, 1, 1));
    // SAFETY: the kernel's one parameter is `LaunchArgs` by value, whose layout `args` follows
    // (checked by the static asserts on both sides); the driver copies it before returning.
    // The caller guarantees the addresses inside (see `# Safety`).
    let launched = unsafe {
        if grid.cooperative {
            cudarc::driver::result::launch_cooperative_kernel(
                f.cu_function(),
                dims.0,
                dims.1,
                0,
                stream.raw(),
                &mut params,
            )
        } else {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                dims.0,
                dims.1,
                0,
                stream.raw(),
                &mut params,
            )
        }
    };
    launched.cuda("launching a kernel")
}
