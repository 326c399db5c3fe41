//! Raw bindings of the libnccl functions the `nccl` transport calls, resolved from the library
//! [`super::loader`] opened (never through cudarc's `nccl` module, which opens libnccl by its own
//! list of bare names and panics when none opens).
//!
//! Only types whose layout is fixed by NCCL's ABI appear here (handles, the 128-byte unique id,
//! `int` result codes). The device communicator and its requirements change layout between NCCL
//! versions, so they cross as opaque bytes sized by the probe kernel (see [`super::kernels`]).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

/// `ncclResult_t`: a C enum, passed as `int`.
pub type ncclResult_t = c_int;
/// `ncclSuccess`.
pub const NCCL_SUCCESS: ncclResult_t = 0;
/// `ncclInvalidUsage`.
pub const NCCL_INVALID_USAGE: ncclResult_t = 5;

/// `ncclComm_t`: an opaque communicator handle.
pub type ncclComm_t = *mut c_void;
/// `ncclWindow_t`: a registered window; for a symmetric window, the device address of NCCL's
/// `ncclWindow_vidmem`, which device code passes to `ncclGetLsaPointer`.
pub type ncclWindow_t = *mut c_void;

/// `NCCL_UNIQUE_ID_BYTES`.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;
/// `NCCL_WIN_COLL_SYMMETRIC`: the window is registered by every rank with the same size.
pub const NCCL_WIN_COLL_SYMMETRIC: c_int = 0x01;
/// `NCCL_WIN_REQUIRED_ALIGNMENT`: a window's offset in its allocation must be a multiple of this.
pub const NCCL_WIN_REQUIRED_ALIGNMENT: usize = 4096;

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ncclUniqueId {
    /// The bytes.
    pub internal: [c_char; NCCL_UNIQUE_ID_BYTES],
}

/// `ncclGetVersion(int*)`.
pub type GetVersion = unsafe extern "C" fn(*mut c_int) -> ncclResult_t;
/// `ncclGetErrorString(ncclResult_t)`.
pub type GetErrorString = unsafe extern "C" fn(ncclResult_t) -> *const c_char;
/// `ncclGetLastError(ncclComm_t)` (the comm may be null).
pub type GetLastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;
/// `ncclGetUniqueId(ncclUniqueId*)`.
pub type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t;
/// `ncclCommInitRank(ncclComm_t*, int nranks, ncclUniqueId, int rank)`.
pub type CommInitRank =
    unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t;
/// `ncclCommInitAll(ncclComm_t*, int ndev, const int* devlist)`.
pub type CommInitAll = unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> ncclResult_t;
/// `ncclCommDestroy(ncclComm_t)`.
pub type CommDestroy = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
/// `ncclCommCount`, `ncclCommUserRank` and `ncclCommCuDevice`: `(ncclComm_t, int*)`.
pub type CommQuery = unsafe extern "C" fn(ncclComm_t, *mut c_int) -> ncclResult_t;
/// `ncclCommGetAsyncError(ncclComm_t, ncclResult_t*)`.
pub type CommGetAsyncError = unsafe extern "C" fn(ncclComm_t, *mut ncclResult_t) -> ncclResult_t;
/// `ncclGroupStart()` and `ncclGroupEnd()`.
pub type Group = unsafe extern "C" fn() -> ncclResult_t;
/// `ncclDataType_t`: a C enum, passed as `int`.
pub type ncclDataType_t = c_int;
/// `ncclFloat64`.
pub const NCCL_FLOAT64: ncclDataType_t = 8;
/// `ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t,
/// ncclComm_t, cudaStream_t)`.
pub type AllGather = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclComm_t,
    *mut c_void,
) -> ncclResult_t;
/// `ncclMemAlloc(void**, size_t)`.
pub type MemAlloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> ncclResult_t;
/// `ncclMemFree(void*)`.
pub type MemFree = unsafe extern "C" fn(*mut c_void) -> ncclResult_t;
/// `ncclCommWindowRegister(ncclComm_t, void*, size_t, ncclWindow_t*, int winFlags)`.
pub type CommWindowRegister =
    unsafe extern "C" fn(ncclComm_t, *mut c_void, usize, *mut ncclWindow_t, c_int) -> ncclResult_t;
/// `ncclCommWindowDeregister(ncclComm_t, ncclWindow_t)`.
pub type CommWindowDeregister = unsafe extern "C" fn(ncclComm_t, ncclWindow_t) -> ncclResult_t;
/// `ncclDevCommCreate(ncclComm_t, const ncclDevCommRequirements*, ncclDevComm*)`; both structs
/// are opaque bytes here.
pub type DevCommCreate =
    unsafe extern "C" fn(ncclComm_t, *const c_void, *mut c_void) -> ncclResult_t;
/// `ncclDevCommDestroy(ncclComm_t, const ncclDevComm*)`.
pub type DevCommDestroy = unsafe extern "C" fn(ncclComm_t, *const c_void) -> ncclResult_t;

/// The functions of one loaded libnccl. The library is never unloaded, so the pointers stay
/// valid for the life of the process.
#[derive(Clone, Copy)]
pub struct Api {
    /// `ncclGetErrorString`.
    pub get_error_string: GetErrorString,
    /// `ncclGetLastError`.
    pub get_last_error: GetLastError,
    /// `ncclGetUniqueId`.
    pub get_unique_id: GetUniqueId,
    /// `ncclCommInitRank`.
    pub comm_init_rank: CommInitRank,
    /// `ncclCommInitAll`.
    pub comm_init_all: CommInitAll,
    /// `ncclCommDestroy`.
    pub comm_destroy: CommDestroy,
    /// `ncclCommCount`.
    pub comm_count: CommQuery,
    /// `ncclCommUserRank`.
    pub comm_user_rank: CommQuery,
    /// `ncclCommCuDevice`.
    pub comm_cu_device: CommQuery,
    /// `ncclCommGetAsyncError`.
    pub comm_get_async_error: CommGetAsyncError,
    /// `ncclGroupStart`.
    pub group_start: Group,
    /// `ncclGroupEnd`.
    pub group_end: Group,
    /// `ncclAllGather`.
    pub all_gather: AllGather,
    /// `ncclMemAlloc`.
    pub mem_alloc: MemAlloc,
    /// `ncclMemFree`.
    pub mem_free: MemFree,
    /// `ncclCommWindowRegister`.
    pub comm_window_register: CommWindowRegister,
    /// `ncclCommWindowDeregister`.
    pub comm_window_deregister: CommWindowDeregister,
    /// `ncclDevCommCreate`.
    pub dev_comm_create: DevCommCreate,
    /// `ncclDevCommDestroy`.
    pub dev_comm_destroy: DevCommDestroy,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api { .. }")
    }
}

/// Resolves `name` in `lib`; the error names the symbol (the caller adds the library).
///
/// # Safety
/// `T` must be the function pointer type of the C function `name` as the library defines it.
pub unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    // SAFETY: the caller guarantees that `T` is the symbol's type; the value is copied out of
    // the `Symbol`, which is sound because the library is never unloaded.
    unsafe { lib.get::<T>(&c_name) }
        .map(|s| *s)
        .map_err(|e| format!("it lacks `{name}` ({e})"))
}

impl Api {
    /// Resolves every function but `ncclGetVersion`, which the loader resolves and calls first,
    /// alone, so that an old library is reported by its version rather than by a missing
    /// function.
    ///
    /// # Safety
    /// `lib` must be a libnccl that stays loaded for the life of the process.
    pub unsafe fn resolve(lib: &libloading::Library) -> Result<Api, String> {
        // SAFETY: each type alias above is the C prototype of the function of the same name
        // in nccl.h or nccl_device/core.h, NCCL 2.28 to 2.30.
        unsafe {
            Ok(Api {
                get_error_string: symbol(lib, "ncclGetErrorString")?,
                get_last_error: symbol(lib, "ncclGetLastError")?,
                get_unique_id: symbol(lib, "ncclGetUniqueId")?,
                comm_init_rank: symbol(lib, "ncclCommInitRank")?,
                comm_init_all: symbol(lib, "ncclCommInitAll")?,
                comm_destroy: symbol(lib, "ncclCommDestroy")?,
                comm_count: symbol(lib, "ncclCommCount")?,
                comm_user_rank: symbol(lib, "ncclCommUserRank")?,
                comm_cu_device: symbol(lib, "ncclCommCuDevice")?,
                comm_get_async_error: symbol(lib, "ncclCommGetAsyncError")?,
                group_start: symbol(lib, "ncclGroupStart")?,
                group_end: symbol(lib, "ncclGroupEnd")?,
                all_gather: symbol(lib, "ncclAllGather")?,
                mem_alloc: symbol(lib, "ncclMemAlloc")?,
                mem_free: symbol(lib, "ncclMemFree")?,
                comm_window_register: symbol(lib, "ncclCommWindowRegister")?,
                comm_window_deregister: symbol(lib, "ncclCommWindowDeregister")?,
                dev_comm_create: symbol(lib, "ncclDevCommCreate")?,
                dev_comm_destroy: symbol(lib, "ncclDevCommDestroy")?,
            })
        }
    }
}
