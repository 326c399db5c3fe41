//! NCCL communicators: the unique id the ranks of a job meet through, and [`NcclComm`], one
//! rank's communicator on one GPU.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaContext, DevicePtr};

use super::NcclLibrary;
use super::result;
use super::sys::{NCCL_SUCCESS, NCCL_UNIQUE_ID_BYTES, ncclComm_t};
use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// NCCL's unique id (`ncclUniqueId`, 128 bytes): made once by one rank
/// ([`NcclComm::unique_id`]) and handed to every rank of the job (a file, an environment
/// variable, a launcher's store) before [`NcclComm::init_rank`]. Hex text (256 characters)
/// carries it through files and environment variables.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NcclUniqueId([u8; NCCL_UNIQUE_ID_BYTES]);

impl NcclUniqueId {
    /// Its size in bytes.
    pub const BYTES: usize = NCCL_UNIQUE_ID_BYTES;

    /// From its 128 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<NcclUniqueId, Error> {
        <[u8; NCCL_UNIQUE_ID_BYTES]>::try_from(bytes)
            .map(NcclUniqueId)
            .map_err(|_| {
                Error::Input(format!(
                    "an NCCL unique id is {NCCL_UNIQUE_ID_BYTES} bytes, not {}",
                    bytes.len()
                ))
            })
    }

    /// The 128 bytes.
    pub fn as_bytes(&self) -> &[u8; NCCL_UNIQUE_ID_BYTES] {
        &self.0
    }

    /// Lower-case hex, 256 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// From hex (either case; surrounding whitespace, such as a file's final newline, is
    /// ignored).
    pub fn from_hex(text: &str) -> Result<NcclUniqueId, Error> {
        let text = text.trim();
        if let Some((at, c)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_hexdigit())
        {
            return Err(Error::Input(format!(
                "an NCCL unique id in hex holds `{c}` at character {at}; only 0-9 and a-f are \
                 allowed"
            )));
        }
        let want = 2 * NCCL_UNIQUE_ID_BYTES;
        if text.len() != want {
            return Err(Error::Input(format!(
                "an NCCL unique id in hex is {want} characters, not {} (was the whole id \
                 passed, as written by NcclUniqueId::to_hex?)",
                text.len()
            )));
        }
        let mut bytes = [0u8; NCCL_UNIQUE_ID_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            // The text is ASCII hex digits only (checked above), so every slice is on a
            // character boundary and parses.
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|e| Error::Input(format!("an NCCL unique id in hex: {e}")))?;
        }
        Ok(NcclUniqueId(bytes))
    }
}

impl fmt::Debug for NcclUniqueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NcclUniqueId({})", self.to_hex())
    }
}

impl fmt::Display for NcclUniqueId {
    /// The hex form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for NcclUniqueId {
    type Err = Error;

    fn from_str(s: &str) -> Result<NcclUniqueId, Error> {
        NcclUniqueId::from_hex(s)
    }
}

/// The state shared by a communicator and the windows registered on it, so that the
/// communicator outlives every window (a window holds an `Arc` of it).
pub(crate) struct CommInner {
    pub(crate) lib: &'static NcclLibrary,
    raw: ncclComm_t,
    pub(crate) rank: usize,
    pub(crate) ranks: usize,
    pub(crate) device: usize,
    pub(crate) ctx: Arc<CudaContext>,
    owned: bool,
    /// Serializes the NCCL calls epc makes on this communicator (NCCL communicators are not
    /// safe for concurrent calls from several threads).
    lock: Mutex<()>,
}

// SAFETY: the handle is an opaque pointer NCCL allows to be used from any thread, one call at a
// time; every call epc makes with it after construction holds `lock` (see `CommInner::lock`),
// and the immutable fields are plain data.
unsafe impl Send for CommInner {}
// SAFETY: as above: shared access only reads immutable fields or goes through `lock`.
unsafe impl Sync for CommInner {}

impl CommInner {
    /// The raw handle, with the lock that must be held while NCCL uses it.
    pub(crate) fn lock(&self) -> (MutexGuard<'_, ()>, ncclComm_t) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        (guard, self.raw)
    }
}

impl Drop for CommInner {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self.ctx.bind_to_thread() {
            tracing::warn!(
                rank = self.rank,
                "binding the context to destroy the comm: {e}"
            );
        }
        let api = self.lib.api();
        // SAFETY: the handle is live, owned by this value, and this is its only destruction;
        // no window outlives it (each holds an Arc of this value).
        if let Err(e) = unsafe { result::comm_destroy(api, self.raw) } {
            tracing::warn!(rank = self.rank, "{e}");
        }
    }
}

/// One rank's NCCL communicator, on one GPU. Owned communicators ([`NcclComm::init_rank`],
/// [`NcclComm::init_all`]) are destroyed when the last of the communicator and the
/// [`super::SymmetricWindow`]s registered on it is dropped; a borrowed one
/// ([`NcclComm::from_raw`]) is left to its owner.
#[derive(Clone)]
pub struct NcclComm {
    inner: Arc<CommInner>,
}

impl fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclComm")
            .field("rank", &self.inner.rank)
            .field("ranks", &self.inner.ranks)
            .field("device", &self.inner.device)
            .field("owned", &self.inner.owned)
            .finish()
    }
}

impl NcclComm {
    /// A new unique id (`ncclGetUniqueId`), made by one rank and handed to all.
    pub fn unique_id() -> Result<NcclUniqueId, Error> {
        let lib = NcclLibrary::load()?;
        result::get_unique_id(lib.api()).map(NcclUniqueId)
    }

    /// Rank `rank` of `ranks` on `gpu` (one process per GPU, `ncclCommInitRank`); collective:
    /// every rank of the job calls it with the same id. Blocks until all ranks joined.
    pub fn init_rank(
        gpu: &Gpu,
        id: &NcclUniqueId,
        rank: usize,
        ranks: usize,
    ) -> Result<NcclComm, Error> {
        if ranks == 0 || rank >= ranks {
            return Err(Error::Input(format!(
                "NCCL rank {rank} of {ranks}: ranks must be >= 1 and the rank below it"
            )));
        }
        let nranks = c_int::try_from(ranks)
            .map_err(|_| Error::Input(format!("{ranks} NCCL ranks is too many")))?;
        let lib = NcclLibrary::load()?;
        gpu.context()
            .bind_to_thread()
            .cuda("making the GPU's context current for ncclCommInitRank")?;
        // SAFETY: the GPU's context is current on this thread (above); NCCL uses its device.
        let raw = unsafe { result::comm_init_rank(lib.api(), nranks, &id.0, rank as c_int) }?;
        let comm = NcclComm::wrap(lib, gpu, raw, true)?;
        comm.expect(rank, ranks, "ncclCommInitRank")?;
        Ok(comm)
    }

    /// One communicator per GPU of `gpus` (one process driving them all, `ncclCommInitAll`):
    /// rank i on `gpus[i]`.
    pub fn init_all(gpus: &[Gpu]) -> Result<Vec<NcclComm>, Error> {
        if gpus.is_empty() {
            return Err(Error::Input(
                "ncclCommInitAll needs at least one GPU".into(),
            ));
        }
        let mut devices: Vec<c_int> = Vec::with_capacity(gpus.len());
        for gpu in gpus {
            let ordinal = gpu.context().ordinal();
            let d = c_int::try_from(ordinal)
                .map_err(|_| Error::Input(format!("GPU ordinal {ordinal} is out of range")))?;
            if devices.contains(&d) {
                return Err(Error::Input(format!(
                    "GPU {ordinal} appears twice in ncclCommInitAll's list: NCCL needs one rank \
                     per GPU"
                )));
            }
            devices.push(d);
        }
        let lib = NcclLibrary::load()?;
        let raws = result::comm_init_all(lib.api(), &devices)?;
        // Wrap every handle before looking at any result, so that all are owned (and destroyed
        // if any check fails).
        let wrapped: Vec<Result<NcclComm, Error>> = gpus
            .iter()
            .zip(&raws)
            .map(|(gpu, &raw)| NcclComm::wrap(lib, gpu, raw, true))
            .collect();
        let comms = wrapped.into_iter().collect::<Result<Vec<_>, _>>()?;
        for (i, comm) in comms.iter().enumerate() {
            comm.expect(i, gpus.len(), "ncclCommInitAll")?;
        }
        Ok(comms)
    }

    /// A communicator the caller made (PyTorch's, say) and keeps ownership of: it is not
    /// destroyed by epc. Its device must be `gpu`'s.
    ///
    /// # Safety
    /// `comm` must be a live `ncclComm_t` of the same libnccl that [`NcclLibrary::load`] loaded
    /// (one process holds one libnccl), and must outlive the returned value and every window
    /// registered on it. While epc uses it, the caller must not call NCCL on it from another
    /// thread.
    pub unsafe fn from_raw(gpu: &Gpu, comm: *mut c_void) -> Result<NcclComm, Error> {
        if comm.is_null() {
            return Err(Error::Input(
                "NcclComm::from_raw: the communicator is null".into(),
            ));
        }
        let lib = NcclLibrary::load()?;
        NcclComm::wrap(lib, gpu, comm, false)
    }

    /// Reads the communicator's rank, size and device, and checks the device is `gpu`'s. An
    /// owned handle is destroyed if the check fails.
    fn wrap(
        lib: &'static NcclLibrary,
        gpu: &Gpu,
        raw: ncclComm_t,
        owned: bool,
    ) -> Result<NcclComm, Error> {
        let mut inner = CommInner {
            lib,
            raw,
            rank: 0,
            ranks: 0,
            device: 0,
            ctx: gpu.context().clone(),
            owned,
            lock: Mutex::new(()),
        };
        let api = lib.api();
        // SAFETY: `raw` is live (just made by NCCL, or the caller's promise for from_raw).
        let (rank, ranks, device) = unsafe {
            (
                result::comm_user_rank(api, raw)?,
                result::comm_count(api, raw)?,
                result::comm_cu_device(api, raw)?,
            )
        };
        let as_usize = |v: c_int, what: &str| {
            usize::try_from(v).map_err(|_| Error::Input(format!("NCCL reports {what} {v}")))
        };
        inner.rank = as_usize(rank, "rank")?;
        inner.ranks = as_usize(ranks, "a rank count of")?;
        inner.device = as_usize(device, "CUDA device")?;
        let ordinal = gpu.context().ordinal();
        if inner.device != ordinal {
            return Err(Error::Input(format!(
                "the NCCL communicator of rank {} runs on CUDA device {}, but its GPU is device \
                 {ordinal}",
                inner.rank, inner.device
            )));
        }
        Ok(NcclComm {
            inner: Arc::new(inner),
        })
    }

    /// Checks that NCCL made the rank asked for.
    fn expect(&self, rank: usize, ranks: usize, call: &str) -> Result<(), Error> {
        if self.rank() != rank || self.ranks() != ranks {
            return Err(Error::Input(format!(
                "{call} made rank {} of {}; rank {rank} of {ranks} was asked for",
                self.rank(),
                self.ranks()
            )));
        }
        Ok(())
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// Ranks in the communicator.
    pub fn ranks(&self) -> usize {
        self.inner.ranks
    }

    /// The CUDA device ordinal it runs on.
    pub fn device(&self) -> usize {
        self.inner.device
    }

    /// The raw `ncclComm_t`, for calls epc does not wrap. Do not destroy it, and do not call
    /// NCCL on it from another thread while epc uses it.
    pub fn raw(&self) -> *mut c_void {
        self.inner.raw
    }

    /// The library it belongs to.
    pub fn library(&self) -> &'static NcclLibrary {
        self.inner.lib
    }

    /// `Ok` unless an asynchronous operation of the communicator failed
    /// (`ncclCommGetAsyncError`), in which case the error says what NCCL reported.
    pub fn async_error(&self) -> Result<(), Error> {
        let (_guard, raw) = self.inner.lock();
        let api = self.inner.lib.api();
        // SAFETY: `raw` is live while `self` exists; the lock is held.
        let rc = unsafe { result::comm_get_async_error(api, raw) }?;
        if rc == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: as above.
        unsafe {
            result::check(api, raw, rc, || {
                format!("an asynchronous operation of rank {}", self.rank())
            })
        }
    }

    /// Every rank's `values` (the same count on each), in rank order: `ncclAllGather` through
    /// device buffers on `gpu`'s stream, waited for. Collective; a host helper for benchmarks
    /// and tests, not for the hot path.
    pub fn all_gather_f64(&self, gpu: &Gpu, values: &[f64]) -> Result<Vec<f64>, Error> {
        let stream = gpu.stream();
        let send = stream
            .clone_htod(values)
            .cuda("uploading values to gather")?;
        let recv = stream
            .alloc_zeros::<f64>((values.len() * self.ranks()).max(1))
            .cuda("allocating gathered values")?;
        {
            let (send_ptr, _s1) = send.device_ptr(stream);
            let (recv_ptr, _s2) = recv.device_ptr(stream);
            let (_guard, raw) = self.inner.lock();
            gpu.context()
                .bind_to_thread()
                .cuda("making the GPU's context current")?;
            // SAFETY: `raw` is live while `self` exists and the lock is held; `send` holds
            // values.len() f64 and `recv` that many per rank, on this GPU, alive until the
            // synchronization below; the stream belongs to this GPU's context.
            unsafe {
                result::all_gather_f64(
                    self.inner.lib.api(),
                    raw,
                    send_ptr,
                    recv_ptr,
                    values.len(),
                    stream.cu_stream().cast(),
                )
            }?;
        }
        stream.synchronize().cuda("waiting for ncclAllGather")?;
        let mut out = stream.clone_dtoh(&recv).cuda("reading gathered values")?;
        out.truncate(values.len() * self.ranks());
        Ok(out)
    }

    /// The shared state windows keep alive.
    pub(crate) fn shared(&self) -> &Arc<CommInner> {
        &self.inner
    }
}
