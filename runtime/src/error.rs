//! The error type of `ep-runtime`.

use std::path::PathBuf;

/// Everything that can go wrong between a rendered kernel and its results.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libnvrtc could not be loaded from any place searched.
    #[error(
        "NVRTC (libnvrtc.so) was not found. Searched:\n  {}\nInstall it with \
         `python3 -m pip install --target ~/.local/share/epc/pip 'nvidia-cuda-nvrtc==13.0.*'` (or \
         `scripts/test`, which installs it into the repository's .epc/pip), or set EPC_NVRTC to the library file or its folder.",
        searched.join("\n  ")
    )]
    NvrtcNotFound {
        /// Every file or name tried, with why it failed.
        searched: Vec<String>,
    },
    /// A libnvrtc named by `EPC_NVRTC` is missing or unusable, or one found loads but is not a
    /// usable NVRTC.
    #[error("the NVRTC library {location} cannot be used: {detail}")]
    NvrtcUnusable {
        /// The file, and where it came from.
        location: String,
        /// What went wrong, and what to do.
        detail: String,
    },
    /// libcuda (the NVIDIA driver) could not be loaded.
    #[error(
        "the CUDA driver library (libcuda.so.1) could not be loaded: {detail}. This needs a \
         machine with an NVIDIA GPU and its driver"
    )]
    DriverNotFound {
        /// What the loader said.
        detail: String,
    },
    /// `nvcc` (only used to compare with NVRTC) is not installed.
    #[error(
        "nvcc was not found in {searched}; it comes with a CUDA toolkit (epc itself needs only NVRTC)"
    )]
    NvccNotFound {
        /// The places tried.
        searched: String,
    },
    /// The driver loaded but sees no GPU.
    #[error("no CUDA GPU is visible (the driver reports {count} devices; wanted device {ordinal})")]
    NoGpu {
        /// Devices the driver reports.
        count: i32,
        /// The device asked for.
        ordinal: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA {context}: {source}")]
    Cuda {
        /// What was being done.
        context: String,
        /// The driver's error code.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// An NVRTC call other than the compile itself failed.
    #[error("NVRTC {context}: {message}")]
    Nvrtc {
        /// What was being done.
        context: String,
        /// NVRTC's result code or message.
        message: String,
    },
    /// The compiler rejected a generated source: a template or generator bug, reported with its
    /// log and the file the source was saved to (never the whole source).
    #[error(
        "{compiler} could not compile `{kernel}` for {arch} with options {options:?}:\n{log}\n{}",
        match source_file {
            Some(path) => format!("the source is saved in {}", path.display()),
            None => "(the source could not be saved; `epc export` writes it)".to_owned(),
        }
    )]
    Compile {
        /// The compiler (`NVRTC`, `nvcc`).
        compiler: &'static str,
        /// Kernel file name.
        kernel: String,
        /// Target architecture.
        arch: crate::Arch,
        /// Compiler options.
        options: Vec<String>,
        /// The compiler's log.
        log: String,
        /// Where the failing source was written (`<cache>/failed/<spec>.<kernel>.cu`).
        source_file: Option<PathBuf>,
    },
    /// Reading or writing the tuning database failed (a file that cannot be read back is
    /// skipped with a warning on lookup; this is for writes, exports and imports).
    #[error("tuning database {}: {detail}", path.display())]
    Tuning {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Reading or writing the kernel cache failed.
    #[error("kernel cache {}: {source}", path.display())]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A path would be built from a name that is not one plain file or folder name (a kernel
    /// whose `file_name` holds `/`, starts with `.`, ...): refused so nothing is written outside
    /// `folder`.
    #[error("{}: {reason}", folder.display())]
    UnsafeName {
        /// The folder the file or folder was to be made in.
        folder: PathBuf,
        /// The name and the rule it breaks (shown in the message, so not a `source` as well).
        reason: ep_codegen::PathError,
    },
    /// An `--arch` value that is not a spelling epc accepts.
    #[error(
        "`{given}` is not an architecture epc compiles for: {why}. Accepted: {}",
        crate::jit::arch::ARCH_SPELLINGS
    )]
    BadArch {
        /// What was given.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// The NVRTC found does not compile for the architecture asked (NVRTC 13 dropped sm_70 and
    /// sm_72, for instance).
    #[error(
        "NVRTC {nvrtc} ({location}) does not compile for {arch}; it supports {supported}. \
         Choose one of those with --arch, or point EPC_NVRTC at an NVRTC that supports {arch} \
         (NVRTC 12 still compiles for sm_70 and sm_72)"
    )]
    ArchUnsupported {
        /// The architecture asked for.
        arch: crate::Arch,
        /// NVRTC's version.
        nvrtc: String,
        /// NVRTC's file.
        location: String,
        /// The architectures it supports (`sm_75, sm_80, ...`).
        supported: String,
    },
    /// A spec's kernels use an instruction the target architecture lacks.
    #[error(
        "spec `{spec}` ({setting}) needs {minimum} or newer: its kernels use {instruction}, which \
         {arch} lacks. Compile for {minimum} or newer (--arch), or change the spec ({alternative})"
    )]
    ArchTooOld {
        /// The spec's name.
        spec: String,
        /// The setting that needs the newer architecture (`dispatch_dtype fp8_e4m3`).
        setting: String,
        /// The target architecture.
        arch: crate::Arch,
        /// The oldest architecture the spec compiles for.
        minimum: crate::Arch,
        /// The PTX instruction behind the minimum.
        instruction: &'static str,
        /// The spec change that lowers the minimum.
        alternative: &'static str,
    },
    /// Inputs whose shapes or values do not fit the spec.
    #[error("invalid input: {0}")]
    Input(String),
    /// `topk_idx` held ids outside `[-1, E)`; the kernel skipped them and wrote nothing for them.
    #[error(
        "topk_idx[{token}][{slot}] = {value} is outside [-1, {experts}) ({count} bad slot(s) in all); \
         the results of this call are not valid"
    )]
    BadExpertId {
        /// Token of the first bad slot.
        token: usize,
        /// Slot (0..K) of the first bad slot.
        slot: usize,
        /// The id found there.
        value: i64,
        /// E.
        experts: u32,
        /// How many slots were bad.
        count: usize,
    },
    /// A receive waited longer than its timeout for a peer's signal: the peer never sent (it
    /// crashed, was not launched, or the calls of the ranks are out of step).
    #[error("rank {rank}: {phase} timed out waiting for rank {peer}")]
    Timeout {
        /// The waiting rank.
        rank: usize,
        /// Which receive.
        phase: &'static str,
        /// The rank whose signal never came.
        peer: usize,
    },
    /// More rows would arrive on a rank than its receive buffer holds: raise
    /// `max_recv_tokens_per_rank` in the spec (or send fewer tokens). Nothing was written past
    /// the buffer.
    #[error(
        "rank {rank}: {rows} rows would arrive, more than max_recv_tokens_per_rank = {capacity}; \
         raise it in the spec"
    )]
    Capacity {
        /// The receiving rank.
        rank: usize,
        /// Rows that would arrive (expert-major: padding included).
        rows: usize,
        /// `max_recv_tokens_per_rank`.
        capacity: usize,
    },
    /// An error of one rank.
    #[error("rank {rank}: {source}")]
    OnRank {
        /// The rank.
        rank: usize,
        /// What went wrong there.
        #[source]
        source: Box<Error>,
    },
    /// Spec or template problem from the code generator.
    #[error(transparent)]
    Codegen(#[from] ep_codegen::Error),
    /// No usable libnccl (NCCL >= 2.28) was found in any place searched.
    #[error(
        "NCCL >= 2.28 (libnccl.so.2) was not found. Searched:\n  {}\nInstall it with \
         `python3 -m pip install nvidia-nccl-cu13` (or use PyTorch's copy), or set EPC_NCCL to \
         the library file or its folder.",
        searched.join("\n  ")
    )]
    NcclNotFound {
        /// Every file or name tried, with why it was not used.
        searched: Vec<String>,
    },
    /// A libnccl that was named explicitly (`EPC_NCCL`) or found cannot be used: the file is
    /// missing, does not load, or lacks a function epc calls.
    #[error("the NCCL library {location} cannot be used: {detail}")]
    NcclUnusable {
        /// The file or name, and where it came from.
        location: String,
        /// What went wrong, and what to do.
        detail: String,
    },
    /// The libnccl found is older than the 2.28 that symmetric memory and the device API need.
    #[error(
        "NCCL {version} at {location} is too old: epc needs NCCL >= 2.28 (symmetric windows and \
         the device API). Install a newer one (`python3 -m pip install nvidia-nccl-cu13`) and \
         point EPC_NCCL at it"
    )]
    NcclTooOld {
        /// The version found.
        version: String,
        /// Where it was found.
        location: String,
    },
    /// NCCL's headers (needed to compile the device side of the `nccl` transport) are missing
    /// or belong to another NCCL version than the library.
    #[error("NCCL headers: {detail}")]
    NcclHeaders {
        /// What was searched or found, and what to do.
        detail: String,
    },
    /// An NCCL call failed.
    #[error(
        "NCCL {call} failed: {name} ({code}): {message}{}",
        if .last_error.trim().is_empty() {
            String::new()
        } else {
            format!(" (NCCL says: {})", .last_error.trim())
        }
    )]
    Nccl {
        /// The call, with what it was called for.
        call: String,
        /// NCCL's result code.
        code: i32,
        /// The result code's name (`ncclInvalidUsage`, ...).
        name: &'static str,
        /// `ncclGetErrorString` of the code.
        message: String,
        /// `ncclGetLastError`'s text (empty when NCCL gave none).
        last_error: String,
    },
    /// A symmetric window could not be set up between the ranks.
    #[error("NCCL symmetric window: {detail}")]
    NcclWindow {
        /// What went wrong, and what it needs.
        detail: String,
    },
}

/// What kind of failure an [`Error`] is: the one classification the C result codes and the
/// Python exception classes are made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something needed is missing on this machine: the driver, a GPU, NVRTC, nvcc or NCCL.
    Unavailable,
    /// The spec does not parse or breaks a rule.
    Spec,
    /// An argument does not fit: a count, shape, dtype or name.
    Input,
    /// A kernel reported an error (a bad expert id, a timeout, a full receive buffer); that
    /// call's results are not valid.
    Device,
    /// A CUDA, NVRTC, NCCL or file-system call failed.
    Other,
}

impl Error {
    /// The kind of failure (an error on a rank is the kind of its cause).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NvrtcNotFound { .. }
            | Error::NvrtcUnusable { .. }
            | Error::DriverNotFound { .. }
            | Error::NvccNotFound { .. }
            | Error::NoGpu { .. }
            | Error::NcclNotFound { .. }
            | Error::NcclUnusable { .. }
            | Error::NcclTooOld { .. }
            | Error::NcclHeaders { .. } => ErrorKind::Unavailable,
            Error::Codegen(_) => ErrorKind::Spec,
            Error::Input(_) | Error::UnsafeName { .. } => ErrorKind::Input,
            Error::BadExpertId { .. } | Error::Timeout { .. } | Error::Capacity { .. } => {
                ErrorKind::Device
            }
            Error::OnRank { source, .. } => source.kind(),
            _ => ErrorKind::Other,
        }
    }

    /// This error, as one of rank `rank`.
    pub fn on_rank(self, rank: usize) -> Error {
        Error::OnRank {
            rank,
            source: Box::new(self),
        }
    }
}

/// Attaches context to driver results.
pub(crate) trait CudaContextExt<T> {
    fn cuda(self, context: &str) -> Result<T, Error>;
}

impl<T> CudaContextExt<T> for Result<T, cudarc::driver::DriverError> {
    fn cuda(self, context: &str) -> Result<T, Error> {
        self.map_err(|source| Error::Cuda {
            context: context.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn each_error_has_the_kind_its_interfaces_report() {
        let timeout = Error::Timeout {
            rank: 1,
            phase: "dispatch",
            peer: 2,
        };
        assert_eq!(timeout.kind(), ErrorKind::Device);
        assert_eq!(timeout.on_rank(1).kind(), ErrorKind::Device);
        assert_eq!(Error::Input("x".into()).kind(), ErrorKind::Input);
        assert_eq!(
            Error::NoGpu {
                count: 0,
                ordinal: 0
            }
            .kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(
            Error::Tuning {
                path: "t".into(),
                detail: "d".into()
            }
            .kind(),
            ErrorKind::Other
        );
    }
}
