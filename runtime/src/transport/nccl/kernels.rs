//! The device side of the `nccl` transport: `peers.cu`, compiled by NVRTC against the NCCL
//! headers of the loaded library with epc's shims of the system and CUDA headers NVRTC lacks
//! (so no CUDA toolkit is needed), and the probe that reads NCCL's struct sizes on the device.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

use super::NcclVersion;
use crate::error::CudaContextExt;
use crate::jit::cache::save_failed_source;
use crate::jit::nvrtc::CompileFailure;
use crate::{Arch, Error, Gpu};

/// The kernels' source.
pub const SOURCE: &str = include_str!("peers.cu");
/// Its file name in NVRTC's messages.
const SOURCE_NAME: &str = "epc_nccl_peers.cu";

/// The in-memory headers given to NVRTC: (include name, text). NVRTC looks these up before any
/// `-I` folder, so NCCL's includes of system and CUDA headers land here even when NCCL's own
/// headers live in `/usr/include`.
pub const SHIMS: &[(&str, &str)] = &[
    ("cuda_runtime.h", include_str!("shims/cuda_runtime.h")),
    ("cuda.h", include_str!("shims/cuda.h")),
    ("cuda_fp16.h", include_str!("shims/cuda_fp16.h")),
    ("cuda_bf16.h", include_str!("shims/cuda_bf16.h")),
    ("cuda_fp8.h", include_str!("shims/cuda_fp8.h")),
    ("cuda/atomic", include_str!("shims/cuda_atomic.h")),
    ("limits.h", include_str!("shims/limits.h")),
    ("stdint.h", include_str!("shims/stdint.h")),
    ("stdbool.h", include_str!("shims/stdbool.h")),
    ("stddef.h", include_str!("shims/stddef.h")),
];

/// The probe's entry point.
pub(crate) const PROBE_ENTRY: &str = "epc_nccl_probe";
/// The peer table kernel's entry point.
pub(crate) const PEERS_ENTRY: &str = "epc_nccl_peer_table";

/// `EPC_NCCL_PROBE_MAGIC` in `peers.cu`.
const PROBE_MAGIC: u64 = 0x4550_4350_524f_4245;
/// `EPC_NCCL_PEERS_MAGIC` in `peers.cu`.
const PEERS_MAGIC: u64 = 0x4550_4350_4545_5253;
/// The probe's output buffer, in 64-bit words (the header takes 8).
pub(crate) const PROBE_WORDS: usize = 512;
/// Words of the peer table kernel's status.
pub(crate) const STATUS_WORDS: usize = 8;
/// The largest struct alignment [`AlignedBytes`] provides.
const MAX_ALIGN: usize = 64;

/// NVRTC's options for `peers.cu` against the headers in `include_dir`.
pub fn options(include_dir: &Path, arch: Arch) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        // NCCL's headers declare its host API without an execution space; NVRTC rejects host
        // functions, and treats such declarations as device ones with this option (they are
        // never defined or called). `peers.cu` empties `__host__` for the ones marked so.
        "-default-device".into(),
        format!("--include-path={}", include_dir.display()),
    ]
}

/// Compiles `peers.cu` (the probe and the peer table kernels) to a cubin for `arch`, including
/// NCCL's device headers from `include_dir` (the folder holding `nccl.h` and `nccl_device/`,
/// as [`super::NcclLibrary::headers`] returns). Needs libnvrtc, not a GPU.
pub fn compile_device_kernels(include_dir: &Path, arch: Arch) -> Result<Vec<u8>, Error> {
    let nvrtc = crate::Nvrtc::new()?;
    nvrtc.check_arch(arch)?;
    let options = options(include_dir, arch);
    match nvrtc.compile_raw(SOURCE_NAME, SOURCE, SHIMS, &options) {
        Ok(out) => Ok(out.cubin),
        Err(CompileFailure::Call(e)) => Err(e),
        Err(CompileFailure::Rejected { log }) => Err(Error::Compile {
            compiler: "NVRTC",
            kernel: format!(
                "{SOURCE_NAME} (NCCL headers from {})",
                include_dir.display()
            ),
            arch,
            options,
            log,
            source_file: save_failed_source(
                &crate::KernelCache::default_root(),
                SOURCE_NAME,
                SOURCE,
            ),
        }),
    }
}

/// Cubins of `peers.cu` per (include folder, arch).
type CubinCache = HashMap<(PathBuf, Arch), Arc<Vec<u8>>>;

/// The cubins compiled in this process (each once).
static CUBINS: Mutex<Option<CubinCache>> = Mutex::new(None);

/// The cubin for `arch`, from the process's cache or compiled now.
pub(crate) fn cubin(include_dir: &Path, arch: Arch) -> Result<Arc<Vec<u8>>, Error> {
    let key = (include_dir.to_path_buf(), arch);
    {
        let cache = CUBINS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref().and_then(|m| m.get(&key)) {
            return Ok(c.clone());
        }
    }
    let start = std::time::Instant::now();
    let cubin = Arc::new(compile_device_kernels(include_dir, arch)?);
    tracing::debug!(
        include = %include_dir.display(),
        %arch,
        ms = start.elapsed().as_millis() as u64,
        "compiled the nccl transport's device kernels"
    );
    let mut cache = CUBINS.lock().unwrap_or_else(|p| p.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .insert(key, cubin.clone());
    Ok(cubin)
}

/// An entry point of `peers.cu`, loaded on `gpu`.
pub(crate) fn function(gpu: &Gpu, cubin: &[u8], entry: &str) -> Result<CudaFunction, Error> {
    let module = gpu
        .context()
        .load_module(Ptx::from_binary(cubin.to_vec()))
        .cuda("loading the nccl transport's kernels")?;
    module.load_function(entry).cuda(&format!(
        "finding `{entry}` in the nccl transport's kernels"
    ))
}

/// One thread.
pub(crate) fn one_thread() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// What the probe measured: NCCL's structs as the headers (of the library's version) lay them
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `sizeof(ncclDevComm)`.
    pub dev_comm_size: usize,
    /// `alignof(ncclDevComm)`.
    pub dev_comm_align: usize,
    /// `alignof(ncclDevCommRequirements)`.
    pub requirements_align: usize,
    /// A requirements struct for default requirements: `NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER`
    /// where the headers define it (2.29 and later), else all zero (2.28).
    pub requirements: Vec<u8>,
    /// Whether the headers define `NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER`.
    pub has_initializer: bool,
    /// The headers' version.
    pub header_version: NcclVersion,
}

impl Probe {
    /// Reads the probe's output (see `peers.cu`) and checks it against the library's version.
    pub fn parse(words: &[u64], library: NcclVersion) -> Result<Probe, Error> {
        let bad = |what: String| Error::NcclHeaders {
            detail: format!("the probe of NCCL's structs {what}"),
        };
        if words.len() < 8 || words[0] != PROBE_MAGIC {
            return Err(bad("did not run (no magic number in its output)".into()));
        }
        let size = |w: u64, what: &str| {
            usize::try_from(w)
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| bad(format!("reports {what} = {w}")))
        };
        let align = |w: u64, what: &str| {
            usize::try_from(w)
                .ok()
                .filter(|a| a.is_power_of_two() && *a <= MAX_ALIGN)
                .ok_or_else(|| {
                    bad(format!(
                        "reports {what} = {w} (at most {MAX_ALIGN} is handled)"
                    ))
                })
        };
        let dev_comm_size = size(words[1], "sizeof(ncclDevComm)")?;
        let dev_comm_align = align(words[2], "alignof(ncclDevComm)")?;
        let requirements_size = size(words[3], "sizeof(ncclDevCommRequirements)")?;
        let requirements_align = align(words[4], "alignof(ncclDevCommRequirements)")?;
        let has_initializer = words[5] == 1;
        let code = i32::try_from(words[6]).unwrap_or(0);
        let header_version = NcclVersion::from_code(code)
            .ok_or_else(|| bad(format!("reports header version {}", words[6])))?;
        if header_version != library {
            return Err(Error::NcclHeaders {
                detail: format!(
                    "the headers compiled are NCCL {header_version} but the library is NCCL \
                     {library}"
                ),
            });
        }
        let bytes: Vec<u8> = words[8..].iter().flat_map(|w| w.to_le_bytes()).collect();
        if requirements_size > bytes.len() {
            return Err(bad(format!(
                "reports sizeof(ncclDevCommRequirements) = {requirements_size}, more than its \
                 buffer holds ({})",
                bytes.len()
            )));
        }
        let requirements = if has_initializer {
            bytes[..requirements_size].to_vec()
        } else {
            vec![0; requirements_size]
        };
        Ok(Probe {
            dev_comm_size,
            dev_comm_align,
            requirements_align,
            requirements,
            has_initializer,
            header_version,
        })
    }
}

/// The probe's result, once per process (the one libnccl and its headers do not change).
static PROBE: Mutex<Option<Arc<Probe>>> = Mutex::new(None);

/// Runs the probe on `gpu` (once per process) and returns what it measured.
pub(crate) fn probe(gpu: &Gpu, cubin: &[u8], library: NcclVersion) -> Result<Arc<Probe>, Error> {
    let mut cached = PROBE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    let f = function(gpu, cubin, PROBE_ENTRY)?;
    let stream = gpu.stream();
    let mut out = stream
        .alloc_zeros::<u64>(PROBE_WORDS)
        .cuda("allocating the probe's output")?;
    let capacity = (PROBE_WORDS * 8) as u64;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&mut out).arg(&capacity);
    // SAFETY: the arguments match `epc_nccl_probe(unsigned long long*, unsigned long long)`, and
    // the kernel writes at most `capacity` bytes of `out`.
    unsafe { launch.launch(one_thread()) }.cuda("launching the NCCL struct probe")?;
    stream.synchronize().cuda("running the NCCL struct probe")?;
    let words = stream
        .clone_dtoh(&out)
        .cuda("reading the NCCL struct probe")?;
    let probe = Arc::new(Probe::parse(&words, library)?);
    tracing::debug!(?probe, "probed NCCL's device structs");
    *cached = Some(probe.clone());
    Ok(probe)
}

/// What the peer table kernel reports besides the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The rank in the world team.
    pub world_rank: usize,
    /// Ranks in the world team.
    pub world_size: usize,
    /// The rank in the LSA (NVLink) team.
    pub lsa_rank: usize,
    /// Ranks in the LSA team.
    pub lsa_size: usize,
    /// World ranks that are not LSA peers, and the first of them.
    pub unreachable: Option<(usize, usize)>,
}

impl PeerStatus {
    /// Reads the status words of `epc_nccl_peer_table` launched with `ranks`.
    pub fn parse(words: &[i64], ranks: usize) -> Result<PeerStatus, Error> {
        let bad = |what: String| Error::NcclWindow {
            detail: format!("the peer table kernel {what}"),
        };
        if words.len() < STATUS_WORDS || words[0] as u64 != PEERS_MAGIC {
            return Err(bad("did not run (no magic number in its status)".into()));
        }
        let field = |i: usize, what: &str| {
            usize::try_from(words[i]).map_err(|_| bad(format!("reports {what} = {}", words[i])))
        };
        if field(7, "ranks")? != ranks {
            return Err(bad(format!("ran for {} ranks, not {ranks}", words[7])));
        }
        let missing = field(5, "unreachable ranks")?;
        Ok(PeerStatus {
            world_rank: field(1, "world rank")?,
            world_size: field(2, "world size")?,
            lsa_rank: field(3, "LSA rank")?,
            lsa_size: field(4, "LSA size")?,
            unreachable: if missing == 0 {
                None
            } else {
                Some((missing, field(6, "first unreachable rank")?))
            },
        })
    }
}

/// A chunk of [`AlignedBytes`].
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Chunk([u8; MAX_ALIGN]);

/// Heap bytes aligned to 64, for NCCL structs known only by size: their address does not
/// change when the value moves (NCCL writes them at `ncclGroupEnd`).
pub(crate) struct AlignedBytes {
    chunks: Box<[Chunk]>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            chunks: vec![Chunk([0; MAX_ALIGN]); len.div_ceil(MAX_ALIGN)].into_boxed_slice(),
            len,
        }
    }

    /// A copy of `bytes`.
    pub(crate) fn from_slice(bytes: &[u8]) -> AlignedBytes {
        let mut out = AlignedBytes::zeroed(bytes.len());
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: the chunks are `len.div_ceil(64)` initialized 64-byte arrays laid out
        // contiguously (repr(C), size 64), so their first `len` bytes are initialized `u8`s.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, through the unique borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.chunks.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// The address, for NCCL to read.
    pub(crate) fn as_ptr(&self) -> *const c_void {
        self.chunks.as_ptr().cast()
    }

    /// The address, for NCCL to write.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut c_void {
        self.chunks.as_mut_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_words(version: u64, initializer: bool) -> Vec<u64> {
        let mut w = vec![0u64; PROBE_WORDS];
        w[0] = PROBE_MAGIC;
        w[1] = 224;
        w[2] = 8;
        w[3] = 20;
        w[4] = 8;
        w[5] = initializer as u64;
        w[6] = version;
        w[8] = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        w[9] = u64::from_le_bytes([9, 10, 11, 12, 13, 14, 15, 16]);
        w[10] = u64::from_le_bytes([17, 18, 19, 20, 21, 22, 23, 24]);
        w
    }

    #[test]
    fn probe_output_gives_sizes_and_requirements() {
        let v = NcclVersion::from_code(22907).unwrap();
        let p = Probe::parse(&probe_words(22907, true), v).unwrap();
        assert_eq!(p.dev_comm_size, 224);
        assert_eq!(p.dev_comm_align, 8);
        assert_eq!(p.requirements, (1..=20).collect::<Vec<u8>>());
        assert!(p.has_initializer);
        // Without an initializer (2.28) the requirements are zero, whatever the buffer held.
        let v = NcclVersion::from_code(22803).unwrap();
        let p = Probe::parse(&probe_words(22803, false), v).unwrap();
        assert_eq!(p.requirements, vec![0; 20]);
    }

    #[test]
    fn probe_output_is_checked() {
        let v = NcclVersion::from_code(22803).unwrap();
        assert!(Probe::parse(&[0; PROBE_WORDS], v).is_err());
        let e = Probe::parse(&probe_words(22809, false), v).unwrap_err();
        assert!(e.to_string().contains("2.28.9"), "{e}");
        let mut w = probe_words(22803, false);
        w[2] = 3;
        assert!(Probe::parse(&w, v).is_err());
        let mut w = probe_words(22803, false);
        w[3] = 1 << 20;
        assert!(Probe::parse(&w, v).is_err());
    }

    #[test]
    fn peer_status_reports_unreachable_ranks() {
        let ok = [PEERS_MAGIC as i64, 1, 4, 1, 4, 0, -1, 4];
        let s = PeerStatus::parse(&ok, 4).unwrap();
        assert_eq!((s.world_rank, s.world_size, s.lsa_size), (1, 4, 4));
        assert_eq!(s.unreachable, None);
        let inter = [PEERS_MAGIC as i64, 0, 16, 0, 8, 8, 8, 16];
        let s = PeerStatus::parse(&inter, 16).unwrap();
        assert_eq!(s.unreachable, Some((8, 8)));
        assert!(PeerStatus::parse(&ok, 8).is_err());
        assert!(PeerStatus::parse(&[0; 8], 4).is_err());
    }

    #[test]
    fn aligned_bytes_are_aligned_and_stable() {
        let mut b = AlignedBytes::from_slice(&[7; 100]);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        let before = b.as_ptr();
        b.as_mut_slice()[99] = 1;
        let moved = b;
        assert_eq!(moved.as_ptr(), before);
        assert_eq!(moved.as_slice().len(), 100);
        assert_eq!(moved.as_slice()[99], 1);
    }
}
