//! The one kernel parameter of every entry point that serves several ranks, `LaunchArgs`, packed
//! as the generated code declares it (`partials/ll_constants.hbs` for LL,
//! `partials/ht_constants.hbs` and `ht_notify.cu.hbs` for HT), and launches on a caller's raw
//! stream. Each family declares its own rank entry (`ll::launch::RankArgs`, ...).

use std::ffi::c_void;

use cudarc::driver::CudaFunction;
use cudarc::driver::sys::{
    self, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig,
};
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
    /// Whether the launch may begin while the kernel before it on the stream ends
    /// (programmatic dependent launch). Only for kernels whose entries wait for that kernel
    /// before they read memory (`dependent_launch::begin` in the templates), on sm_90 and later.
    pub dependent: bool,
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
    let (mut attrs, num_attrs) = attributes(grid);
    let config = CUlaunchConfig {
        gridDimX: grid.blocks,
        gridDimY: n as u32,
        gridDimZ: 1,
        blockDimX: grid.threads,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: stream.raw(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: num_attrs,
    };
    // SAFETY: the kernel's one parameter is `LaunchArgs` by value, whose layout `args` follows
    // (checked by the static asserts on both sides); the driver copies it, and reads `config`
    // and its attributes, before returning. The caller guarantees the addresses inside (see
    // `# Safety`); a dependent launch is asked only for entries that wait before they read.
    let launched = unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result();
    launched.cuda("launching a kernel")
}

/// The launch attributes `grid` asks for: the first `.1` of the array.
fn attributes(grid: Grid) -> ([CUlaunchAttribute; 2], u32) {
    let attribute = |id, value| CUlaunchAttribute {
        id,
        pad: [0; 4],
        value,
    };
    let ignore = || {
        attribute(
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_IGNORE,
            CUlaunchAttributeValue { cooperative: 0 },
        )
    };
    let mut attrs = [ignore(), ignore()];
    let mut n = 0;
    if grid.cooperative {
        attrs[n] = attribute(
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
            CUlaunchAttributeValue { cooperative: 1 },
        );
        n += 1;
    }
    if grid.dependent {
        attrs[n] = attribute(
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        );
        n += 1;
    }
    (attrs, n as u32)
}

#[cfg(test)]
mod tests {
    use super::{Grid, attributes};
    use cudarc::driver::sys::CUlaunchAttributeID as Id;

    fn ids(cooperative: bool, dependent: bool) -> Vec<Id> {
        let grid = Grid {
            blocks: 16,
            threads: 512,
            cooperative,
            dependent,
        };
        let (attrs, n) = attributes(grid);
        attrs[..n as usize].iter().map(|a| a.id).collect()
    }

    #[test]
    fn a_grid_asks_for_exactly_its_attributes() {
        assert_eq!(ids(false, false), []);
        assert_eq!(ids(true, false), [Id::CU_LAUNCH_ATTRIBUTE_COOPERATIVE]);
        assert_eq!(
            ids(false, true),
            [Id::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION]
        );
        assert_eq!(
            ids(true, true),
            [
                Id::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
                Id::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            ]
        );
    }
}
