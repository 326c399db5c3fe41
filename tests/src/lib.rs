//! Helpers shared by epc's end-to-end tests: find NVRTC and a GPU, or skip with a reason.
//!
//! A missing NVRTC skips compile tests unless `EPC_REQUIRE_NVRTC=1`; a missing GPU skips GPU
//! tests unless `EPC_REQUIRE_GPU=1`. In both cases the reason is printed.

use std::io::Write;

use ep_codegen::{Renderer, Spec, builtin_specs};
use ep_runtime::{Error, Gpu, Jit, KernelCache, Nvrtc};

/// Prints past the test harness's capture, so a skip's reason is always seen.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// NVRTC, or `None` after printing why the test is skipped.
pub fn nvrtc_or_skip(test: &str) -> Option<Nvrtc> {
    match Nvrtc::new() {
        Ok(n) => Some(n),
        Err(e) if !required("EPC_REQUIRE_NVRTC") => {
            say(&format!("SKIP {test}: {e}"));
            None
        }
        Err(e) => panic!("{test}: EPC_REQUIRE_NVRTC=1 but {e}"),
    }
}

/// A GPU, or `None` after printing why the test is skipped. Both outcomes print one line
/// (`GPU test: ...` or `SKIP test: no GPU: ...`) that the test command counts.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => {
            say(&format!("GPU {test}: on {}", g.name()));
            Some(g)
        }
        Err(e @ (Error::DriverNotFound { .. } | Error::NoGpu { .. }))
            if !required("EPC_REQUIRE_GPU") =>
        {
            say(&format!("SKIP {test}: no GPU: {e}"));
            None
        }
        Err(e) => panic!("{test}: EPC_REQUIRE_GPU=1 but {e}"),
    }
}

/// A JIT with NVRTC and a fresh cache in a temporary folder (kept alive by the returned guard).
pub fn fresh_jit(nvrtc: Nvrtc) -> (Jit, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let jit = Jit::new(Box::new(nvrtc), Some(KernelCache::new(dir.path())));
    (jit, dir)
}

/// A GPU and a NVRTC JIT with a fresh cache, or `None` after printing why the test is skipped.
pub fn gpu_jit_or_skip(test: &str) -> Option<(Gpu, Jit, tempfile::TempDir)> {
    let gpu = gpu_or_skip(test)?;
    let (jit, dir) = fresh_jit(nvrtc_or_skip(test)?);
    Some((gpu, jit, dir))
}

/// Every spec in `specs/`, parsed.
pub fn all_specs() -> Vec<Spec> {
    builtin_specs()
        .map(|b| b.parse().unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The embedded renderer.
pub fn renderer() -> Renderer {
    Renderer::new().expect("embedded templates load")
}

/// Reads the first `n` elements of a device view (a window view the API returned) on `stream`.
pub fn read_view<T: Default + Clone + cudarc::driver::DeviceRepr>(
    stream: &cudarc::driver::CudaStream,
    view: &ep_runtime::Tensor,
    n: usize,
) -> Vec<T> {
    let mut v = vec![T::default(); n];
    if n > 0 {
        assert!(
            n * std::mem::size_of::<T>() <= view.bytes(),
            "{n} elements past the view"
        );
        // SAFETY: the view lies inside the group's memory and holds at least `n` elements of T
        // (checked above).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut v, view.ptr(), stream.cu_stream())
        }
        .unwrap();
    }
    stream.synchronize().unwrap();
    v
}

/// The first `n` elements of a device slice the test allocated (empty for `n = 0`), read on
/// `stream`.
pub fn read_prefix<T: Default + Clone + cudarc::driver::DeviceRepr>(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    slice: &cudarc::driver::CudaSlice<T>,
    n: usize,
) -> Vec<T> {
    let mut v = vec![T::default(); n];
    if n > 0 {
        stream.memcpy_dtoh(&slice.slice(..n), &mut v).unwrap();
    }
    stream.synchronize().unwrap();
    v
}

/// Writes `values` at the start of a device view on `stream` (an expert kernel's job for `y`).
pub fn write_view(stream: &cudarc::driver::CudaStream, view: &ep_runtime::Tensor, values: &[u16]) {
    assert!(
        values.len() * 2 <= view.bytes(),
        "{} values past the view",
        values.len()
    );
    if values.is_empty() {
        return;
    }
    // SAFETY: the view holds at least `values.len()` 16-bit elements (checked above).
    unsafe { cudarc::driver::result::memcpy_htod_async(view.ptr(), values, stream.cu_stream()) }
        .unwrap();
    stream.synchronize().unwrap();
}

/// Every rank's inputs of round `round`: `tokens[r]` tokens of rank r, the routing patterns
/// rotating over rounds and ranks, reproducible from the round.
pub fn round_inputs(
    spec: &Spec,
    round: usize,
    tokens: &[usize],
) -> Vec<ep_runtime::reference::ll::RankInput> {
    use ep_runtime::routing::{Pattern, generate};
    let d = spec.dims();
    (0..d.ranks)
        .map(|rank| {
            let seed = (round * 1000 + rank) as u64;
            let pattern = Pattern::ALL[(round + rank) % Pattern::ALL.len()];
            ep_runtime::reference::ll::RankInput {
                routing: generate(pattern, tokens[rank], d.top_k, d.experts, d.ranks, seed),
                x: ep_runtime::reference::ll::random_activations(spec, tokens[rank], seed),
            }
        })
        .collect()
}
