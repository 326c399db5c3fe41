//! Raw bindings of the libnvrtc functions epc calls, resolved from the library [`super::loader`]
//! opened.
//!
//! Not through cudarc's `nvrtc` module: it opens libnvrtc by its own list of bare names
//! (`libnvrtc.so` first), which can reach another file than the one the search chose (an
//! `EPC_NVRTC` beside a toolkit on the loader's path), and it panics on a missing function.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

/// `nvrtcResult`: a C enum, passed as `int`.
pub type nvrtcResult = c_int;
/// `NVRTC_SUCCESS`.
pub const NVRTC_SUCCESS: nvrtcResult = 0;
/// `nvrtcProgram`: an opaque handle.
pub type nvrtcProgram = *mut c_void;

/// `nvrtcVersion(int* major, int* minor)`.
pub type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> nvrtcResult;
/// `nvrtcGetErrorString(nvrtcResult)`.
pub type GetErrorString = unsafe extern "C" fn(nvrtcResult) -> *const c_char;
/// `nvrtcCreateProgram(prog*, src, name, numHeaders, headers, includeNames)`.
pub type CreateProgram = unsafe extern "C" fn(
    *mut nvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> nvrtcResult;
/// `nvrtcCompileProgram(prog, numOptions, options)`.
pub type CompileProgram =
    unsafe extern "C" fn(nvrtcProgram, c_int, *const *const c_char) -> nvrtcResult;
/// `nvrtcGetProgramLogSize` and `nvrtcGetCUBINSize`: `(prog, size_t*)`.
pub type GetSize = unsafe extern "C" fn(nvrtcProgram, *mut usize) -> nvrtcResult;
/// `nvrtcGetProgramLog` and `nvrtcGetCUBIN`: `(prog, char*)`.
pub type GetBytes = unsafe extern "C" fn(nvrtcProgram, *mut c_char) -> nvrtcResult;
/// `nvrtcDestroyProgram(prog*)`.
pub type DestroyProgram = unsafe extern "C" fn(*mut nvrtcProgram) -> nvrtcResult;
/// `nvrtcGetNumSupportedArchs(int*)`.
pub type GetNumSupportedArchs = unsafe extern "C" fn(*mut c_int) -> nvrtcResult;
/// `nvrtcGetSupportedArchs(int*)`.
pub type GetSupportedArchs = unsafe extern "C" fn(*mut c_int) -> nvrtcResult;

/// The functions of one loaded libnvrtc. The library is never unloaded, so the pointers stay
/// valid for the life of the process.
#[derive(Clone, Copy)]
pub struct Api {
    /// `nvrtcGetErrorString`.
    pub get_error_string: GetErrorString,
    /// `nvrtcCreateProgram`.
    pub create_program: CreateProgram,
    /// `nvrtcCompileProgram`.
    pub compile_program: CompileProgram,
    /// `nvrtcGetProgramLogSize`.
    pub get_program_log_size: GetSize,
    /// `nvrtcGetProgramLog`.
    pub get_program_log: GetBytes,
    /// `nvrtcGetCUBINSize`.
    pub get_cubin_size: GetSize,
    /// `nvrtcGetCUBIN`.
    pub get_cubin: GetBytes,
    /// `nvrtcDestroyProgram`.
    pub destroy_program: DestroyProgram,
    /// `nvrtcGetNumSupportedArchs`.
    pub get_num_supported_archs: GetNumSupportedArchs,
    /// `nvrtcGetSupportedArchs`.
    pub get_supported_archs: GetSupportedArchs,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api { .. }")
    }
}

/// Resolves `name` in `lib`; the error names the symbol (the caller adds the library).
///
/// # Safety
/// `T` must be the function pointer type of the C function `name` as the library defines it, and
/// the library must never be unloaded.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    let mut c_name = name.as_bytes().to_vec();
    c_name.push(0);
    // SAFETY: the caller guarantees that `T` is the symbol's type; the value is copied out of
    // the `Symbol`, which is sound because the library is never unloaded.
    unsafe { lib.get::<T>(&c_name) }
        .map(|s| *s)
        .map_err(|_| format!("it lacks {name}"))
}

impl Api {
    /// Resolves `nvrtcVersion` alone, so that an old or foreign library is reported by its first
    /// missing function before anything else is asked of it.
    ///
    /// # Safety
    /// `lib` must stay loaded for the life of the process.
    pub unsafe fn version_of(lib: &libloading::Library) -> Result<Version, String> {
        // SAFETY: `Version` is the prototype of nvrtcVersion in nvrtc.h of every release; the
        // caller keeps `lib` loaded.
        unsafe { symbol(lib, "nvrtcVersion") }
    }

    /// Resolves every function epc calls.
    ///
    /// # Safety
    /// `lib` must be a libnvrtc that stays loaded for the life of the process.
    pub unsafe fn resolve(lib: &libloading::Library) -> Result<Api, String> {
        // SAFETY: each type alias above is the C prototype of the function of the same name in
        // nvrtc.h (NVRTC 11.2 to 13); the caller keeps `lib` loaded.
        unsafe {
            Ok(Api {
                get_error_string: symbol(lib, "nvrtcGetErrorString")?,
                create_program: symbol(lib, "nvrtcCreateProgram")?,
                compile_program: symbol(lib, "nvrtcCompileProgram")?,
                get_program_log_size: symbol(lib, "nvrtcGetProgramLogSize")?,
                get_program_log: symbol(lib, "nvrtcGetProgramLog")?,
                get_cubin_size: symbol(lib, "nvrtcGetCUBINSize")?,
                get_cubin: symbol(lib, "nvrtcGetCUBIN")?,
                destroy_program: symbol(lib, "nvrtcDestroyProgram")?,
                get_num_supported_archs: symbol(lib, "nvrtcGetNumSupportedArchs")?,
                get_supported_archs: symbol(lib, "nvrtcGetSupportedArchs")?,
            })
        }
    }

    /// NVRTC's name for a result code (`NVRTC_ERROR_COMPILATION`).
    pub fn error_string(&self, code: nvrtcResult) -> String {
        // SAFETY: nvrtcGetErrorString takes any code and returns a static string (or null).
        let ptr = unsafe { (self.get_error_string)(code) };
        if ptr.is_null() {
            return format!("NVRTC error {code}");
        }
        // SAFETY: non-null pointers from nvrtcGetErrorString are static NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}
