//! Checked wrappers of [`super::sys`]: every NCCL call returns a `Result`, whose error carries
//! the call, NCCL's result code, its name and string, and `ncclGetLastError`'s text. Functions
//! that take raw handles or pointers are `unsafe`, with what they need in `# Safety`.

use std::ffi::{CStr, c_char, c_int, c_void};

use super::sys::{
    Api, NCCL_FLOAT64, NCCL_SUCCESS, NCCL_UNIQUE_ID_BYTES, ncclComm_t, ncclResult_t, ncclUniqueId,
    ncclWindow_t,
};
use crate::Error;

/// The name of an `ncclResult_t`.
pub fn result_name(code: ncclResult_t) -> &'static str {
    match code {
        0 => "ncclSuccess",
        1 => "ncclUnhandledCudaError",
        2 => "ncclSystemError",
        3 => "ncclInternalError",
        4 => "ncclInvalidArgument",
        5 => "ncclInvalidUsage",
        6 => "ncclRemoteError",
        7 => "ncclInProgress",
        8 => "ncclTimeout",
        _ => "unknown ncclResult_t",
    }
}

/// A C string NCCL returned, or "" for null.
///
/// # Safety
/// `s` is null or a NUL-terminated string that stays valid during the call.
unsafe fn c_text(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated, per the caller.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

/// `Ok` for `ncclSuccess`, else [`Error::Nccl`] with everything NCCL says about it. `comm` (may
/// be null) is the communicator whose last error to read.
///
/// # Safety
/// `comm` is null or a live communicator of `api`'s library.
pub unsafe fn check(
    api: &Api,
    comm: ncclComm_t,
    code: ncclResult_t,
    call: impl FnOnce() -> String,
) -> Result<(), Error> {
    if code == NCCL_SUCCESS {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString accepts any code and returns a static string.
    let message = unsafe { c_text((api.get_error_string)(code)) };
    // SAFETY: `comm` is null or live (caller); the returned string is NCCL's thread-local
    // buffer, copied at once.
    let last_error = unsafe { c_text((api.get_last_error)(comm)) };
    Err(Error::Nccl {
        call: call(),
        code,
        name: result_name(code),
        message,
        last_error,
    })
}

/// `ncclGetUniqueId`: a new id for rank 0 to hand to every rank.
pub fn get_unique_id(api: &Api) -> Result<[u8; NCCL_UNIQUE_ID_BYTES], Error> {
    let mut id = ncclUniqueId {
        internal: [0; NCCL_UNIQUE_ID_BYTES],
    };
    // SAFETY: `id` is valid for writes of one ncclUniqueId.
    let rc = unsafe { (api.get_unique_id)(&mut id) };
    // SAFETY: null comm.
    unsafe { check(api, std::ptr::null_mut(), rc, || "ncclGetUniqueId".into()) }?;
    Ok(id.internal.map(|c| c as u8))
}

/// `ncclCommInitRank`: rank `rank` of `nranks`, on the current device.
///
/// # Safety
/// The CUDA context of the wanted device must be current on this thread.
pub unsafe fn comm_init_rank(
    api: &Api,
    nranks: c_int,
    id: &[u8; NCCL_UNIQUE_ID_BYTES],
    rank: c_int,
) -> Result<ncclComm_t, Error> {
    let id = ncclUniqueId {
        internal: id.map(|b| b as c_char),
    };
    let mut comm: ncclComm_t = std::ptr::null_mut();
    // SAFETY: `comm` is valid for writes; the id is passed by value as NCCL declares it.
    let rc = unsafe { (api.comm_init_rank)(&mut comm, nranks, id, rank) };
    // SAFETY: null comm (none was made).
    unsafe {
        check(api, std::ptr::null_mut(), rc, || {
            format!("ncclCommInitRank (rank {rank} of {nranks})")
        })
    }?;
    Ok(comm)
}

/// `ncclCommInitAll`: one communicator per device of `devices`, rank i on `devices[i]`.
pub fn comm_init_all(api: &Api, devices: &[c_int]) -> Result<Vec<ncclComm_t>, Error> {
    let n = c_int::try_from(devices.len())
        .map_err(|_| Error::Input(format!("{} devices is too many for NCCL", devices.len())))?;
    let mut comms: Vec<ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
    // SAFETY: `comms` and `devices` both hold `n` elements.
    let rc = unsafe { (api.comm_init_all)(comms.as_mut_ptr(), n, devices.as_ptr()) };
    // SAFETY: null comm.
    unsafe {
        check(api, std::ptr::null_mut(), rc, || {
            format!("ncclCommInitAll (devices {devices:?})")
        })
    }?;
    Ok(comms)
}

/// `ncclCommDestroy`.
///
/// # Safety
/// `comm` is a live communicator, not used again.
pub unsafe fn comm_destroy(api: &Api, comm: ncclComm_t) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.comm_destroy)(comm) };
    // SAFETY: the comm is gone; read the thread's last error without it.
    unsafe { check(api, std::ptr::null_mut(), rc, || "ncclCommDestroy".into()) }
}

/// One of the `(comm, int*)` queries.
///
/// # Safety
/// `comm` is a live communicator.
unsafe fn query(
    api: &Api,
    f: super::sys::CommQuery,
    name: &str,
    comm: ncclComm_t,
) -> Result<c_int, Error> {
    let mut v: c_int = 0;
    // SAFETY: `comm` is live (caller); `v` is valid for writes.
    let rc = unsafe { f(comm, &mut v) };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || name.to_owned()) }?;
    Ok(v)
}

/// `ncclCommCount`: the communicator's ranks.
///
/// # Safety
/// `comm` is a live communicator.
pub unsafe fn comm_count(api: &Api, comm: ncclComm_t) -> Result<c_int, Error> {
    // SAFETY: per the caller.
    unsafe { query(api, api.comm_count, "ncclCommCount", comm) }
}

/// `ncclCommUserRank`: this communicator's rank.
///
/// # Safety
/// `comm` is a live communicator.
pub unsafe fn comm_user_rank(api: &Api, comm: ncclComm_t) -> Result<c_int, Error> {
    // SAFETY: per the caller.
    unsafe { query(api, api.comm_user_rank, "ncclCommUserRank", comm) }
}

/// `ncclCommCuDevice`: the CUDA device ordinal the communicator runs on.
///
/// # Safety
/// `comm` is a live communicator.
pub unsafe fn comm_cu_device(api: &Api, comm: ncclComm_t) -> Result<c_int, Error> {
    // SAFETY: per the caller.
    unsafe { query(api, api.comm_cu_device, "ncclCommCuDevice", comm) }
}

/// `ncclCommGetAsyncError`: the error an asynchronous operation of the communicator hit, if
/// any (`Ok(ncclSuccess)` when none; `ncclInProgress` while a non-blocking init runs).
///
/// # Safety
/// `comm` is a live communicator.
pub unsafe fn comm_get_async_error(api: &Api, comm: ncclComm_t) -> Result<ncclResult_t, Error> {
    let mut async_rc: ncclResult_t = NCCL_SUCCESS;
    // SAFETY: `comm` is live (caller); `async_rc` is valid for writes.
    let rc = unsafe { (api.comm_get_async_error)(comm, &mut async_rc) };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || "ncclCommGetAsyncError".into()) }?;
    Ok(async_rc)
}

/// `ncclAllGather` of `count` f64 values per rank, queued on `stream`.
///
/// # Safety
/// `comm` is live; `send` holds `count` f64 and `recv` `count * ranks` f64 on the
/// communicator's GPU, both alive until the stream has run the collective; `stream` is a
/// stream of that GPU's context.
pub unsafe fn all_gather_f64(
    api: &Api,
    comm: ncclComm_t,
    send: u64,
    recv: u64,
    count: usize,
    stream: *mut c_void,
) -> Result<(), Error> {
    // SAFETY: as the caller guarantees.
    let rc = unsafe {
        (api.all_gather)(
            send as *const c_void,
            recv as *mut c_void,
            count,
            NCCL_FLOAT64,
            comm,
            stream,
        )
    };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || "ncclAllGather".into()) }
}

/// `ncclGroupStart`.
pub fn group_start(api: &Api) -> Result<(), Error> {
    // SAFETY: no arguments; an unbalanced group is reported by NCCL, not undefined.
    let rc = unsafe { (api.group_start)() };
    // SAFETY: null comm.
    unsafe { check(api, std::ptr::null_mut(), rc, || "ncclGroupStart".into()) }
}

/// `ncclGroupEnd`: runs the calls made since `ncclGroupStart`; `what` names them for errors.
pub fn group_end(api: &Api, what: &str) -> Result<(), Error> {
    // SAFETY: as for ncclGroupStart.
    let rc = unsafe { (api.group_end)() };
    // SAFETY: null comm.
    unsafe {
        check(api, std::ptr::null_mut(), rc, || {
            format!("ncclGroupEnd (of {what})")
        })
    }
}

/// `ncclMemAlloc`: `size` bytes of device memory NCCL can map to peers, on the current device.
///
/// # Safety
/// The CUDA context of the wanted device must be current on this thread.
pub unsafe fn mem_alloc(api: &Api, size: usize) -> Result<*mut c_void, Error> {
    let mut ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: `ptr` is valid for writes.
    let rc = unsafe { (api.mem_alloc)(&mut ptr, size) };
    // SAFETY: null comm.
    unsafe {
        check(api, std::ptr::null_mut(), rc, || {
            format!("ncclMemAlloc ({size} bytes)")
        })
    }?;
    if ptr.is_null() {
        return Err(Error::NcclWindow {
            detail: format!("ncclMemAlloc of {size} bytes returned success and a null pointer"),
        });
    }
    Ok(ptr)
}

/// `ncclMemFree`.
///
/// # Safety
/// `ptr` came from [`mem_alloc`], is freed once, and nothing uses it afterwards.
pub unsafe fn mem_free(api: &Api, ptr: *mut c_void) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.mem_free)(ptr) };
    // SAFETY: null comm.
    unsafe { check(api, std::ptr::null_mut(), rc, || "ncclMemFree".into()) }
}

/// `ncclCommWindowRegister`. Inside a group the window is written at `ncclGroupEnd`, so `win`
/// must stay valid (and unmoved) until then.
///
/// # Safety
/// `comm` is live; `ptr..ptr+size` is memory from [`mem_alloc`]; `win` is valid for writes
/// until the enclosing group (if any) ends.
pub unsafe fn comm_window_register(
    api: &Api,
    comm: ncclComm_t,
    ptr: *mut c_void,
    size: usize,
    win: *mut ncclWindow_t,
    flags: c_int,
) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.comm_window_register)(comm, ptr, size, win, flags) };
    // SAFETY: `comm` is live.
    unsafe {
        check(api, comm, rc, || {
            format!("ncclCommWindowRegister ({size} bytes, flags {flags:#x})")
        })
    }
}

/// `ncclCommWindowDeregister`.
///
/// # Safety
/// `comm` is live and `win` one of its windows, deregistered once.
pub unsafe fn comm_window_deregister(
    api: &Api,
    comm: ncclComm_t,
    win: ncclWindow_t,
) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.comm_window_deregister)(comm, win) };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || "ncclCommWindowDeregister".into()) }
}

/// `ncclDevCommCreate`. Inside a group the device communicator is written at `ncclGroupEnd`.
///
/// # Safety
/// `comm` is live; `reqs` points to an `ncclDevCommRequirements` of this NCCL version; `out`
/// is valid for writes of one `ncclDevComm` of this version (size and alignment from the probe)
/// until the enclosing group (if any) ends.
pub unsafe fn dev_comm_create(
    api: &Api,
    comm: ncclComm_t,
    reqs: *const c_void,
    out: *mut c_void,
) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.dev_comm_create)(comm, reqs, out) };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || "ncclDevCommCreate".into()) }
}

/// `ncclDevCommDestroy`.
///
/// # Safety
/// `comm` is live and `dev_comm` a device communicator [`dev_comm_create`] made for it,
/// destroyed once.
pub unsafe fn dev_comm_destroy(
    api: &Api,
    comm: ncclComm_t,
    dev_comm: *const c_void,
) -> Result<(), Error> {
    // SAFETY: per the caller.
    let rc = unsafe { (api.dev_comm_destroy)(comm, dev_comm) };
    // SAFETY: `comm` is live.
    unsafe { check(api, comm, rc, || "ncclDevCommDestroy".into()) }
}
