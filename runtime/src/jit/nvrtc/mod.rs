//! NVRTC as a [`Compiler`]: CUDA C++ to a cubin for one exact `sm_XX`.
//!
//! Every call goes through [`sys::Api`], the functions of the very file the search loaded
//! ([`loader`]), never through a library the system loader might pick by name.

pub(crate) mod loader;
pub(crate) mod sys;

use std::ffi::{CString, c_char, c_int};
use std::path::Path;

use ep_codegen::KernelSource;

pub use loader::{NvrtcLibrary, NvrtcSearch};

use crate::jit::compiler::{CompileOutput, Compiler};
use crate::{Arch, Error};

/// The NVRTC compiler, with its library loaded.
#[derive(Debug, Clone)]
pub struct Nvrtc {
    library: &'static NvrtcLibrary,
}

impl Nvrtc {
    /// Finds and loads libnvrtc (see [`NvrtcSearch`] for where it looks).
    pub fn new() -> Result<Nvrtc, Error> {
        Ok(Nvrtc {
            library: loader::load()?,
        })
    }

    /// Where the library was found.
    pub fn location(&self) -> &Path {
        &self.library.location
    }

    /// The loaded library (file, how it was found, version, architectures).
    pub fn library(&self) -> &'static NvrtcLibrary {
        self.library
    }

    /// (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        self.library.version
    }

    /// The real architectures this NVRTC compiles for, ascending.
    pub fn supported_archs(&self) -> &[Arch] {
        &self.library.supported_archs
    }

    /// [`Error::ArchUnsupported`] unless this NVRTC compiles for `arch` (an `sm_XXa` needs its
    /// `sm_XX`).
    pub fn check_arch(&self, arch: Arch) -> Result<(), Error> {
        if self
            .supported_archs()
            .iter()
            .any(|a| a.number == arch.number)
        {
            return Ok(());
        }
        Err(Error::ArchUnsupported {
            arch,
            nvrtc: format!("{}.{}", self.version().0, self.version().1),
            location: self.location().display().to_string(),
            supported: crate::jit::arch::list(self.supported_archs()),
        })
    }

    /// Compiles `source` (named `name`, with in-memory `headers` as (include name, text)) with
    /// `options`; returns the cubin and the log, or the log of the failure.
    pub(crate) fn compile_raw(
        &self,
        name: &str,
        source: &str,
        headers: &[(&str, &str)],
        options: &[String],
    ) -> Result<CompileOutput, CompileFailure> {
        let api = self.library.api();
        let nul =
            |what: &str| CompileFailure::Call(Error::Input(format!("{what} holds a NUL byte")));
        let c_source = CString::new(source).map_err(|_| nul(name))?;
        let c_name = CString::new(name).map_err(|_| nul(name))?;
        let mut texts = Vec::with_capacity(headers.len());
        let mut names = Vec::with_capacity(headers.len());
        for (include, text) in headers {
            names.push(CString::new(*include).map_err(|_| nul(include))?);
            texts.push(CString::new(*text).map_err(|_| nul(include))?);
        }
        let text_ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string for the call, and the two header
        // arrays hold `headers.len()` entries each; `raw` is valid for writes.
        let rc = unsafe {
            (api.create_program)(
                &mut raw,
                c_source.as_ptr(),
                c_name.as_ptr(),
                headers.len() as c_int,
                text_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
            )
        };
        self.check(rc, "nvrtcCreateProgram")
            .map_err(CompileFailure::Call)?;
        let program = Program { raw, api };
        let c_options = options
            .iter()
            .map(|o| CString::new(o.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| nul("an option"))?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: the program is alive (destroyed only by its Drop); the options are live
        // NUL-terminated strings, `option_ptrs.len()` of them.
        let compiled = unsafe {
            (api.compile_program)(
                program.raw,
                option_ptrs.len() as c_int,
                option_ptrs.as_ptr(),
            )
        };
        let log = program.log();
        if compiled != sys::NVRTC_SUCCESS {
            return Err(CompileFailure::Rejected { log });
        }
        let cubin = program.cubin().map_err(CompileFailure::Call)?;
        Ok(CompileOutput { cubin, log })
    }

    fn check(&self, rc: sys::nvrtcResult, call: &str) -> Result<(), Error> {
        if rc == sys::NVRTC_SUCCESS {
            Ok(())
        } else {
            Err(Error::Nvrtc {
                context: call.to_owned(),
                message: self.library.api().error_string(rc),
            })
        }
    }
}

/// Why [`Nvrtc::compile_raw`] produced no cubin.
pub(crate) enum CompileFailure {
    /// The compiler rejected the source; its log.
    Rejected {
        /// NVRTC's log.
        log: String,
    },
    /// An NVRTC call other than the compile failed.
    Call(Error),
}

impl Compiler for Nvrtc {
    fn id(&self) -> String {
        format!("nvrtc {}.{}", self.version().0, self.version().1)
    }

    fn options(&self, arch: Arch) -> Vec<String> {
        vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "--ptxas-options=--verbose".into(),
        ]
    }

    fn compile_to_cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CompileOutput, Error> {
        self.check_arch(arch)?;
        let options = self.options(arch);
        match self.compile_raw(&kernel.file_name, &kernel.source, &[], &options) {
            Ok(out) => Ok(out),
            Err(CompileFailure::Call(e)) => Err(e),
            Err(CompileFailure::Rejected { log }) => Err(Error::Compile {
                compiler: "NVRTC",
                kernel: kernel.file_name.clone(),
                arch,
                options,
                log,
                source_file: None,
            }),
        }
    }
}

/// An NVRTC program, destroyed on every exit path.
struct Program {
    raw: sys::nvrtcProgram,
    api: &'static sys::Api,
}

impl Program {
    /// The program's log (empty when NVRTC gives none).
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: the program is alive; `size` is valid for writes.
        let rc = unsafe { (self.api.get_program_log_size)(self.raw, &mut size) };
        if rc != sys::NVRTC_SUCCESS || size == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds the `size` bytes NVRTC reported for this program's log.
        let rc = unsafe { (self.api.get_program_log)(self.raw, buf.as_mut_ptr().cast()) };
        if rc != sys::NVRTC_SUCCESS {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim_end().to_owned()
    }

    /// The cubin of the compiled program (its target must be a real `sm_XX`).
    fn cubin(&self) -> Result<Vec<u8>, Error> {
        let call = |rc: sys::nvrtcResult, name: &str| {
            if rc == sys::NVRTC_SUCCESS {
                Ok(())
            } else {
                Err(Error::Nvrtc {
                    context: name.to_owned(),
                    message: self.api.error_string(rc),
                })
            }
        };
        let mut size = 0usize;
        // SAFETY: the program is compiled and alive; `size` is valid for writes.
        let rc = unsafe { (self.api.get_cubin_size)(self.raw, &mut size) };
        call(rc, "nvrtcGetCUBINSize")?;
        let mut cubin = vec![0u8; size];
        // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported for this program.
        let rc = unsafe { (self.api.get_cubin)(self.raw, cubin.as_mut_ptr().cast()) };
        call(rc, "nvrtcGetCUBIN")?;
        if cubin.is_empty() {
            return Err(Error::Nvrtc {
                context: "nvrtcGetCUBIN".into(),
                message: "empty cubin (was the target a virtual compute_XX architecture?)".into(),
            });
        }
        Ok(cubin)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed exactly once, here.
        let _ = unsafe { (self.api.destroy_program)(&mut self.raw) };
    }
}
