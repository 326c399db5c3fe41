//! Result codes, the per-thread message of the last failure, and the boundary every entry point
//! goes through (argument errors become codes, panics become `epcInternalError`).

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ep_runtime::{Error, ErrorKind};

/// What an epc call returned. Every value but `epcSuccess` leaves a message for
/// `epcGetLastError` on the calling thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum epcResult_t {
    /// The call did what it says.
    epcSuccess = 0,
    /// An argument is null, out of range, or does not match the group (count, shape, dtype).
    epcInvalidArgument = 1,
    /// The spec does not parse or breaks a rule (the message says where).
    epcInvalidSpec = 2,
    /// Something the call needs is missing on this machine: the CUDA driver, a GPU, NVRTC or
    /// NCCL (the message says where epc looked and how to install it).
    epcUnavailable = 3,
    /// A CUDA driver, NVRTC or NCCL call failed.
    epcCudaError = 4,
    /// A kernel reported an error (an expert id outside `[-1, E)`, a full receive buffer, a peer
    /// that never signalled); the results of that call are not valid.
    epcDeviceError = 5,
    /// A bug in epc, caught at the boundary; please report the message.
    epcInternalError = 6,
}

/// A failure on its way out: the code and the message.
#[derive(Debug)]
pub(crate) struct Failure {
    code: epcResult_t,
    message: String,
}

impl Failure {
    /// A bad argument, described.
    pub(crate) fn argument(message: impl Into<String>) -> Failure {
        Failure {
            code: epcResult_t::epcInvalidArgument,
            message: message.into(),
        }
    }

    /// What went wrong.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            code: code_of(&e),
            message: e.to_string(),
        }
    }
}

impl From<ep_codegen::Error> for Failure {
    fn from(e: ep_codegen::Error) -> Failure {
        Failure::from(Error::Codegen(e))
    }
}

/// The code of a runtime error.
fn code_of(e: &Error) -> epcResult_t {
    match e.kind() {
        ErrorKind::Unavailable => epcResult_t::epcUnavailable,
        ErrorKind::Input => epcResult_t::epcInvalidArgument,
        ErrorKind::Spec => epcResult_t::epcInvalidSpec,
        ErrorKind::Device => epcResult_t::epcDeviceError,
        ErrorKind::Other => epcResult_t::epcCudaError,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NUL bytes cannot cross into C; they become spaces.
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|m| *m.borrow_mut() = text);
}

/// Runs one entry point: its failure becomes a code and the thread's last message, and a panic
/// becomes `epcInternalError` instead of unwinding into C.
pub(crate) fn boundary(what: &str, body: impl FnOnce() -> Result<(), Failure>) -> epcResult_t {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => epcResult_t::epcSuccess,
        Ok(Err(f)) => {
            set_last_error(&format!("{what}: {}", f.message));
            f.code
        }
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            set_last_error(&format!("{what}: internal error (a bug in epc): {detail}"));
            epcResult_t::epcInternalError
        }
    }
}

/// The message of the last call on this thread that did not return `epcSuccess` (empty when
/// none did). The text stays valid until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn epcGetLastError() -> *const c_char {
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

/// A static name for a result code (`"epcInvalidArgument"`), or `"unknown epcResult_t"`.
#[unsafe(no_mangle)]
pub extern "C" fn epcGetErrorString(result: i32) -> *const c_char {
    let name: &'static [u8] = match result {
        0 => b"epcSuccess\0",
        1 => b"epcInvalidArgument\0",
        2 => b"epcInvalidSpec\0",
        3 => b"epcUnavailable\0",
        4 => b"epcCudaError\0",
        5 => b"epcDeviceError\0",
        6 => b"epcInternalError\0",
        _ => b"unknown epcResult_t\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: epcGetLastError returns this thread's NUL-terminated message.
        unsafe { std::ffi::CStr::from_ptr(epcGetLastError()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn failures_and_panics_become_codes_and_messages() {
        assert_eq!(boundary("ok", || Ok(())), epcResult_t::epcSuccess);
        let code = boundary("epcThing", || Err(Failure::argument("x is null")));
        assert_eq!(code, epcResult_t::epcInvalidArgument);
        assert_eq!(last(), "epcThing: x is null");
        let code = boundary("epcThing", || {
            Err(Error::Timeout {
                rank: 3,
                phase: "dispatch",
                peer: 5,
            }
            .on_rank(3)
            .into())
        });
        assert_eq!(code, epcResult_t::epcDeviceError);
        let code = boundary("epcBroken", || panic!("an invariant broke"));
        assert_eq!(code, epcResult_t::epcInternalError);
        assert!(last().contains("an invariant broke"), "{}", last());
        // Messages with NUL bytes still cross.
        boundary("nul", || Err(Failure::argument("a\0b")));
        assert_eq!(last(), "nul: a b");
    }

    #[test]
    fn every_code_has_a_name() {
        for (code, name) in [
            (epcResult_t::epcSuccess, "epcSuccess"),
            (epcResult_t::epcInvalidArgument, "epcInvalidArgument"),
            (epcResult_t::epcInvalidSpec, "epcInvalidSpec"),
            (epcResult_t::epcUnavailable, "epcUnavailable"),
            (epcResult_t::epcCudaError, "epcCudaError"),
            (epcResult_t::epcDeviceError, "epcDeviceError"),
            (epcResult_t::epcInternalError, "epcInternalError"),
            // Not a code.
        ] {
            // SAFETY: a static NUL-terminated name.
            let got = unsafe { std::ffi::CStr::from_ptr(epcGetErrorString(code as i32)) };
            assert_eq!(got.to_str().unwrap(), name);
        }
        // SAFETY: as above.
        let unknown = unsafe { std::ffi::CStr::from_ptr(epcGetErrorString(42)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown epcResult_t");
    }
}
