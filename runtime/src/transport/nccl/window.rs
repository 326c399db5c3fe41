//! Symmetric windows: one zeroed buffer per rank in NCCL symmetric memory, registered by every
//! rank, and the peer table of each (every rank's window as seen from this GPU).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, PushKernelArg};

use super::NcclComm;
use super::comm::CommInner;
use super::kernels::{self, AlignedBytes, PeerStatus, Probe, STATUS_WORDS};
use super::result;
use super::sys::{
    NCCL_INVALID_USAGE, NCCL_WIN_COLL_SYMMETRIC, NCCL_WIN_REQUIRED_ALIGNMENT, ncclWindow_t,
};
use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// What to do when symmetric memory does not work, said in every such error.
const NEEDS: &str = "NCCL symmetric memory needs CUDA P2P through cuMem (VMM) between the GPUs: \
                     NCCL_CUMEM_ENABLE must not be 0, and the driver and the NVLink / P2P \
                     topology must support it (NCCL_DEBUG=INFO shows NCCL's reasons)";

/// The NCCL resources of one rank's window, released in reverse order of creation when dropped:
/// `ncclDevCommDestroy`, `ncclCommWindowDeregister`, `ncclMemFree`. It holds the communicator
/// (an `Arc`), so the communicator is destroyed only after.
struct Parts {
    comm: Arc<CommInner>,
    gpu: Gpu,
    /// From `ncclMemAlloc`, or null.
    alloc: *mut c_void,
    /// Bytes allocated and registered.
    size: usize,
    /// From `ncclCommWindowRegister`, or null.
    window: ncclWindow_t,
    /// The device communicator (`ncclDevComm`, opaque), valid when `dev_comm_created`.
    dev_comm: AlignedBytes,
    dev_comm_created: bool,
}

// SAFETY: the raw pointers are a device address and NCCL handles, which any thread may use;
// NCCL calls on them go through the communicator's lock (`CommInner::lock`).
unsafe impl Send for Parts {}
// SAFETY: shared access only reads the fields; NCCL is called only from `Drop` (unique access).
unsafe impl Sync for Parts {}

impl Parts {
    fn new(gpu: &Gpu, comm: &NcclComm, dev_comm_size: usize) -> Parts {
        Parts {
            comm: comm.shared().clone(),
            gpu: gpu.clone(),
            alloc: std::ptr::null_mut(),
            size: 0,
            window: std::ptr::null_mut(),
            dev_comm: AlignedBytes::zeroed(dev_comm_size),
            dev_comm_created: false,
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        let rank = self.comm.rank;
        let api = self.comm.lib.api();
        let ctx = self.gpu.context();
        if let Err(e) = ctx.bind_to_thread() {
            tracing::warn!(rank, "binding the context to free the NCCL window: {e}");
        }
        // Kernels still reading or writing the window must finish before it goes.
        if let Err(e) = ctx.synchronize() {
            tracing::warn!(rank, "synchronizing before freeing the NCCL window: {e}");
        }
        let (guard, comm) = self.comm.lock();
        if self.dev_comm_created {
            // SAFETY: the device communicator was made for `comm` (alive: `self.comm` holds
            // it) and is destroyed once, here.
            if let Err(e) = unsafe { result::dev_comm_destroy(api, comm, self.dev_comm.as_ptr()) } {
                tracing::warn!(rank, "{e}");
            }
        }
        if !self.window.is_null() {
            // SAFETY: the window was registered on `comm`, which is alive, and is deregistered
            // once, here.
            if let Err(e) = unsafe { result::comm_window_deregister(api, comm, self.window) } {
                tracing::warn!(rank, "{e}");
            }
        }
        drop(guard);
        if !self.alloc.is_null() {
            // SAFETY: `alloc` came from ncclMemAlloc; no window or kernel uses it any more.
            if let Err(e) = unsafe { result::mem_free(api, self.alloc) } {
                tracing::warn!(rank, "{e}");
            }
        }
    }
}

/// One rank's window in NCCL symmetric memory (`ncclMemAlloc` + `ncclCommWindowRegister` with
/// `NCCL_WIN_COLL_SYMMETRIC`), zeroed, with its device communicator (`ncclDevCommCreate`) and
/// its peer table: a device array `u64[R]` of every world rank's window base as seen from this
/// GPU, read with NCCL's device API (`ncclGetLsaPointer`).
///
/// A window keeps its communicator alive (the communicator is destroyed after the last window
/// registered on it), so it can never outlive it. Dropping a window waits for its GPU, then
/// destroys the device communicator, deregisters the window and frees the memory. Deregistering
/// is local in NCCL 2.28, but peers may still write into this rank's memory until they are done
/// too: drop windows when every rank has finished its kernels.
pub struct SymmetricWindow {
    parts: Parts,
    rank: usize,
    ranks: usize,
    peers: CudaSlice<u64>,
    peers_addr: u64,
    peer_bases: Vec<u64>,
    status: PeerStatus,
}

impl std::fmt::Debug for SymmetricWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymmetricWindow")
            .field("rank", &self.rank)
            .field("ranks", &self.ranks)
            .field("bytes", &self.parts.size)
            .field("base", &format_args!("{:#x}", self.base()))
            .field("lsa_size", &self.status.lsa_size)
            .finish_non_exhaustive()
    }
}

impl SymmetricWindow {
    /// Registers a window of at least `bytes` bytes (rounded up to NCCL's 4096-byte alignment)
    /// for each communicator this process drives: one member for a process per GPU, several
    /// (each on its own GPU, from [`NcclComm::init_all`]) for one process over all GPUs.
    /// Collective: every rank of the communicators must call it at the same time with the same
    /// `bytes`. Every window is zeroed before any rank can see it. Inter-node ranks (not
    /// reachable over NVLink) are an error: they need GIN, which is not built yet.
    pub fn register(
        members: &[(&Gpu, &NcclComm)],
        bytes: usize,
    ) -> Result<Vec<SymmetricWindow>, Error> {
        let Some(&(first_gpu, first_comm)) = members.first() else {
            return Err(Error::Input(
                "SymmetricWindow::register needs at least one (GPU, communicator)".into(),
            ));
        };
        if bytes == 0 {
            return Err(Error::Input("a symmetric window of 0 bytes".into()));
        }
        let size = bytes
            .checked_next_multiple_of(NCCL_WIN_REQUIRED_ALIGNMENT)
            .ok_or_else(|| Error::Input(format!("a symmetric window of {bytes} bytes")))?;
        let ranks = first_comm.ranks();
        for (i, (gpu, comm)) in members.iter().enumerate() {
            if comm.ranks() != ranks {
                return Err(Error::Input(format!(
                    "the communicators have {ranks} and {} ranks: they must be one communicator's",
                    comm.ranks()
                )));
            }
            if comm.device() != gpu.context().ordinal() {
                return Err(Error::Input(format!(
                    "NCCL rank {} runs on CUDA device {}, but is paired with GPU {}",
                    comm.rank(),
                    comm.device(),
                    gpu.context().ordinal()
                )));
            }
            if members[..i].iter().any(|(g, c)| {
                c.rank() == comm.rank() || g.context().ordinal() == gpu.context().ordinal()
            }) {
                return Err(Error::Input(format!(
                    "rank {} or GPU {} appears twice among the members",
                    comm.rank(),
                    gpu.context().ordinal()
                )));
            }
        }
        let lib = first_comm.library();
        let api = lib.api();
        let include = lib.headers()?;
        let mut cubins = Vec::with_capacity(members.len());
        for (gpu, _) in members {
            cubins.push(kernels::cubin(include, gpu.arch())?);
        }
        let probe: Arc<Probe> = kernels::probe(first_gpu, &cubins[0], lib.version)?;

        // 1. Allocate and zero each rank's memory (not collective).
        let mut parts: Vec<Parts> = Vec::with_capacity(members.len());
        for (gpu, comm) in members {
            let mut p = Parts::new(gpu, comm, probe.dev_comm_size);
            let on_rank = |e: Error| e.on_rank(comm.rank());
            gpu.context()
                .bind_to_thread()
                .cuda("making the GPU's context current for ncclMemAlloc")
                .map_err(on_rank)?;
            // SAFETY: the GPU's context is current (above).
            p.alloc = unsafe { result::mem_alloc(api, size) }.map_err(on_rank)?;
            p.size = size;
            let stream = gpu.stream();
            // SAFETY: `alloc` holds `size` bytes on this GPU, and nothing else uses it yet.
            unsafe {
                cudarc::driver::result::memset_d8_async(p.alloc as u64, 0, size, stream.cu_stream())
            }
            .cuda("zeroing the symmetric window")
            .map_err(on_rank)?;
            stream
                .synchronize()
                .cuda("zeroing the symmetric window")
                .map_err(on_rank)?;
            parts.push(p);
        }

        // 2. Register the windows (collective; one group for several communicators).
        let comms: Vec<Arc<CommInner>> = parts.iter().map(|p| p.comm.clone()).collect();
        let mut windows: Vec<ncclWindow_t> = vec![std::ptr::null_mut(); parts.len()];
        let registered = grouped(api, &comms, "registering symmetric windows", |i, comm| {
            // SAFETY: `comm` is live and locked; `alloc` holds `size` bytes from ncclMemAlloc;
            // `windows` is not resized until the group ends, so its slot stays valid.
            unsafe {
                result::comm_window_register(
                    api,
                    comm,
                    parts[i].alloc,
                    size,
                    windows.as_mut_ptr().add(i),
                    NCCL_WIN_COLL_SYMMETRIC,
                )
            }
        });
        for (p, w) in parts.iter_mut().zip(&windows) {
            p.window = *w;
        }
        registered?;
        if let Some(p) = parts.iter().find(|p| p.window.is_null()) {
            return Err(Error::NcclWindow {
                detail: format!(
                    "ncclCommWindowRegister of {size} bytes returned success but no window \
                     for rank {}. {NEEDS}",
                    p.comm.rank
                ),
            });
        }

        // 3. The device communicators (collective too), with default requirements.
        let requirements = AlignedBytes::from_slice(&probe.requirements);
        let dev_ptrs: Vec<*mut c_void> =
            parts.iter_mut().map(|p| p.dev_comm.as_mut_ptr()).collect();
        let created = grouped(api, &comms, "creating device communicators", |i, comm| {
            // SAFETY: `comm` is live and locked; `requirements` is this version's
            // ncclDevCommRequirements (the probe's bytes) and `dev_ptrs[i]` points to a heap
            // buffer of sizeof(ncclDevComm) bytes aligned to 64 that stays put until the group
            // ends.
            unsafe { result::dev_comm_create(api, comm, requirements.as_ptr(), dev_ptrs[i]) }
        });
        for p in &mut parts {
            // On failure, only the communicators NCCL wrote (not all zero) are destroyed.
            p.dev_comm_created = created.is_ok() || p.dev_comm.as_slice().iter().any(|&b| b != 0);
        }
        created.map_err(|e| {
            let invalid = match &e {
                Error::Nccl { code, .. } => *code == NCCL_INVALID_USAGE,
                Error::OnRank { source, .. } => {
                    matches!(**source, Error::Nccl { code, .. } if code == NCCL_INVALID_USAGE)
                }
                _ => false,
            };
            if !invalid {
                return e;
            }
            let version = first_comm.library().version;
            let one_rank =
                if ranks == 1 && (version.major, version.minor, version.patch) < (2, 28, 9) {
                    format!(
                        " NCCL {version} gives a communicator of one rank no symmetric memory \
                     (2.28.9 and later do): point EPC_NCCL at a newer libnccl (the \
                     nvidia-nccl-cu13 wheel, or PyTorch's copy)."
                    )
                } else {
                    String::new()
                };
            Error::NcclWindow {
                detail: format!(
                    "{e}: the communicator has no symmetric memory support.{one_rank} {NEEDS}"
                ),
            }
        })?;

        // 4. Each rank's peer table, read on its GPU with NCCL's device API.
        let mut out = Vec::with_capacity(parts.len());
        for (p, cubin) in parts.into_iter().zip(&cubins) {
            let rank = p.comm.rank;
            out.push(SymmetricWindow::build(p, cubin, ranks).map_err(|e| e.on_rank(rank))?);
        }
        Ok(out)
    }

    /// Runs the peer table kernel for one rank and checks what it found.
    fn build(parts: Parts, cubin: &[u8], ranks: usize) -> Result<SymmetricWindow, Error> {
        let gpu = parts.gpu.clone();
        let rank = parts.comm.rank;
        let stream = gpu.stream();
        gpu.context()
            .bind_to_thread()
            .cuda("making the GPU's context current")?;
        let f = kernels::function(&gpu, cubin, kernels::PEERS_ENTRY)?;
        let dev_comm = stream
            .clone_htod(parts.dev_comm.as_slice())
            .cuda("uploading the device communicator")?;
        let mut peers = stream
            .alloc_zeros::<u64>(ranks)
            .cuda("allocating the peer table")?;
        let mut status = stream
            .alloc_zeros::<i64>(STATUS_WORDS)
            .cuda("allocating the peer table's status")?;
        let window = parts.window as u64;
        let ranks_arg =
            i32::try_from(ranks).map_err(|_| Error::Input(format!("{ranks} ranks is too many")))?;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&dev_comm)
            .arg(&window)
            .arg(&ranks_arg)
            .arg(&mut peers)
            .arg(&mut status);
        // SAFETY: the arguments match `epc_nccl_peer_table(const ncclDevComm*, ncclWindow_t,
        // int, unsigned long long*, long long*)`: `dev_comm` holds this version's ncclDevComm
        // bytes, `window` is the device handle NCCL returned, `peers` holds `ranks` entries and
        // `status` STATUS_WORDS.
        unsafe { launch.launch(kernels::one_thread()) }.cuda("launching the peer table kernel")?;
        stream.synchronize().cuda("running the peer table kernel")?;
        let status = PeerStatus::parse(
            &stream
                .clone_dtoh(&status)
                .cuda("reading the peer table's status")?,
            ranks,
        )?;
        let peer_bases = stream.clone_dtoh(&peers).cuda("reading the peer table")?;
        if status.world_rank != rank || status.world_size != ranks {
            return Err(Error::NcclWindow {
                detail: format!(
                    "the device communicator says rank {} of {}, the communicator rank {rank} \
                     of {ranks}",
                    status.world_rank, status.world_size
                ),
            });
        }
        if let Some((count, first)) = status.unreachable {
            return Err(Error::NcclWindow {
                detail: format!(
                    "inter-node ranks are not supported by the nccl transport yet (needs GIN): \
                     rank {first}{} not load/store reachable (NVLink) from rank {rank}, whose \
                     LSA team has {} of the {ranks} ranks",
                    if count > 1 {
                        format!(" and {} more are", count - 1)
                    } else {
                        " is".to_owned()
                    },
                    status.lsa_size
                ),
            });
        }
        if let Some(r) = peer_bases.iter().position(|&b| b == 0) {
            return Err(Error::NcclWindow {
                detail: format!("ncclGetLsaPointer gave a null address for rank {r}. {NEEDS}"),
            });
        }
        let peers_addr = {
            let (ptr, _sync) = peers.device_ptr(stream);
            ptr
        };
        tracing::debug!(
            rank,
            ranks,
            lsa_rank = status.lsa_rank,
            lsa_size = status.lsa_size,
            bytes = parts.size,
            "registered a symmetric window"
        );
        Ok(SymmetricWindow {
            parts,
            rank,
            ranks,
            peers,
            peers_addr,
            peer_bases,
            status,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks of the communicator.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The device address of this rank's window, the same as `peers()[rank]`: NCCL's mapping of
    /// it in the LSA address range, so that every access to a window, this rank's included,
    /// goes through one address (as with virtual ranks).
    pub fn base(&self) -> u64 {
        self.peer_bases[self.rank]
    }

    /// The address `ncclMemAlloc` returned: the same memory as [`SymmetricWindow::base`] under
    /// another virtual address.
    pub fn alloc_ptr(&self) -> u64 {
        self.parts.alloc as u64
    }

    /// Bytes in the window: the bytes asked for, rounded up to a multiple of 4096.
    pub fn bytes(&self) -> usize {
        self.parts.size
    }

    /// The peer table on this GPU: `u64[R]`, rank r's window base as seen from here.
    pub fn peers(&self) -> &CudaSlice<u64> {
        &self.peers
    }

    /// The device address of the peer table.
    pub fn peers_ptr(&self) -> u64 {
        self.peers_addr
    }

    /// A host copy of the peer table.
    pub fn peer_bases(&self) -> &[u64] {
        &self.peer_bases
    }

    /// This rank's index in its LSA (NVLink) team, and the team's size.
    pub fn lsa(&self) -> (usize, usize) {
        (self.status.lsa_rank, self.status.lsa_size)
    }

    /// The device communicator (`ncclDevComm`) as opaque bytes of this NCCL version's layout,
    /// for kernels that take it by value or from device memory.
    pub fn dev_comm_bytes(&self) -> &[u8] {
        self.parts.dev_comm.as_slice()
    }

    /// The window handle (`ncclWindow_t`: a device address NCCL's device API takes).
    pub fn window_handle(&self) -> *mut c_void {
        self.parts.window
    }

    /// The GPU the window is on.
    pub fn gpu(&self) -> &Gpu {
        &self.parts.gpu
    }
}

/// Calls `f(i, comm)` for every communicator, each locked and with its GPU's context current,
/// inside one `ncclGroupStart`/`ncclGroupEnd` when there are several (NCCL's collective calls
/// on several communicators of one process must be grouped). The group is always ended; the
/// first error is returned. Every context is checked to bind before the group starts, so that
/// a failure of epc's own is not left between collective calls already queued for other
/// communicators (which `ncclGroupEnd` would then wait on forever).
fn grouped(
    api: &super::sys::Api,
    comms: &[Arc<CommInner>],
    what: &str,
    mut f: impl FnMut(usize, super::sys::ncclComm_t) -> Result<(), Error>,
) -> Result<(), Error> {
    for comm in comms {
        comm.ctx
            .bind_to_thread()
            .cuda("making the GPU's context current")
            .map_err(|e| e.on_rank(comm.rank))?;
    }
    let group = comms.len() > 1;
    let guards: Vec<_> = comms.iter().map(|c| c.lock()).collect();
    if group {
        result::group_start(api)?;
    }
    let mut first: Option<Error> = None;
    for (i, (comm, (_, raw))) in comms.iter().zip(&guards).enumerate() {
        let call = comm
            .ctx
            .bind_to_thread()
            .cuda("making the GPU's context current")
            .and_then(|()| f(i, *raw));
        if let Err(e) = call {
            first = Some(e.on_rank(comm.rank));
            break;
        }
    }
    if group && let Err(e) = result::group_end(api, what) {
        first.get_or_insert(e);
    }
    drop(guards);
    first.map_or(Ok(()), Err)
}
