//! NVRTC as a [`Compiler`]: CUDA C++ to a cubin for one exact `sm_XX`.
//!
//! cudarc's checked `result` layer creates and compiles programs; the cubin getters it lacks a
//! safe wrapper for are called through its raw `sys` layer in [`get_cubin`].

pub(crate) mod loader;

use std::ffi::CString;

use cudarc::nvrtc::{result, sys};
use ep_codegen::KernelSource;

pub use loader::{NvrtcLibrary, NvrtcSearch};

use crate::jit::compiler::{CompileOutput, Compiler, listing};
use crate::{Arch, Error};

/// The NVRTC compiler, with its library loaded.
#[derive(Debug, Clone)]
pub struct Nvrtc {
    library: &'static NvrtcLibrary,
    version: (i32, i32),
}

impl Nvrtc {
    /// Finds and loads libnvrtc (see [`NvrtcSearch`] for where it looks).
    pub fn new() -> Result<Nvrtc, Error> {
        let library = loader::load()?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the library is loaded (above), and both pointers are valid for writes.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| nvrtc_error("nvrtcVersion", e))?;
        Ok(Nvrtc {
            library,
            version: (major, minor),
        })
    }

    /// Where the library was found.
    pub fn location(&self) -> &str {
        &self.library.location
    }

    /// (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }
}

impl Compiler for Nvrtc {
    fn id(&self) -> String {
        format!("nvrtc {}.{}", self.version.0, self.version.1)
    }

    fn options(&self, arch: Arch) -> Vec<String> {
        vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "--ptxas-options=--verbose".into(),
        ]
    }

    fn compile_to_cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CompileOutput, Error> {
        let source = CString::new(kernel.source.as_str())
            .map_err(|_| Error::Input(format!("{} holds a NUL byte", kernel.file_name)))?;
        let name = CString::new(kernel.file_name.as_str())
            .map_err(|_| Error::Input(format!("{} holds a NUL byte", kernel.file_name)))?;
        let options = self.options(arch);
        let program = Program(
            result::create_program(&source, Some(&name))
                .map_err(|e| nvrtc_error("nvrtcCreateProgram", e))?,
        );
        let (compiled, log) = compile_with_log(&program, &options);
        if compiled.is_err() {
            return Err(Error::Compile {
                kernel: kernel.file_name.clone(),
                arch: arch.to_string(),
                options,
                log,
                listing: listing(&kernel.source),
            });
        }
        let cubin = get_cubin(&program)?;
        Ok(CompileOutput { cubin, log })
    }
}

/// Destroys the NVRTC program on every exit path.
pub(crate) struct Program(pub(crate) sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed exactly once, here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// The cubin of a compiled program (its target must be a real `sm_XX`).
pub(crate) fn get_cubin(program: &Program) -> Result<Vec<u8>, Error> {
    let mut size = 0usize;
    // SAFETY: the program is compiled and alive; `size` is valid for writes.
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }
        .result()
        .map_err(|e| nvrtc_error("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds exactly the `size` bytes NVRTC reported for this program.
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| nvrtc_error("nvrtcGetCUBIN", e))?;
    if cubin.is_empty() {
        return Err(Error::Nvrtc {
            context: "nvrtcGetCUBIN".into(),
            message: "empty cubin (was the target a virtual compute_XX architecture?)".into(),
        });
    }
    Ok(cubin)
}

/// Compiles `program` with `options`; returns whether it compiled and NVRTC's log.
pub(crate) fn compile_with_log(
    program: &Program,
    options: &[String],
) -> (Result<(), result::NvrtcError>, String) {
    // SAFETY: `program` is alive (destroyed only by its Drop).
    let compiled = unsafe { result::compile_program(program.0, options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(program.0) }
        .map(|raw| c_chars_to_string(&raw))
        .unwrap_or_default();
    (compiled, log)
}

/// An NVRTC call's failure, with what was being done.
pub(crate) fn nvrtc_error(context: &str, e: result::NvrtcError) -> Error {
    Error::Nvrtc {
        context: context.to_owned(),
        message: format!("{e:?}"),
    }
}

fn c_chars_to_string(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_owned()
}
