//! The JIT floor: rendered source in, launchable function out.
//!
//! [`Compiler`] turns a [`KernelSource`] into a cubin for one exact [`Arch`] ([`Nvrtc`], or
//! [`Nvcc`](crate::Nvcc) for comparison); [`KernelCache`] keeps cubins on disk (`cubin` reads their resource
//! figures); [`Jit`] joins compiler and cache and loads the result on a [`Gpu`].

pub(crate) mod arch;
pub(crate) mod cache;
pub(crate) mod compiler;
pub(crate) mod cubin;
pub(crate) mod nvcc;
pub(crate) mod nvrtc;

use std::path::PathBuf;

use cudarc::driver::CudaFunction;
use cudarc::nvrtc::Ptx;
use ep_codegen::KernelSource;

use crate::error::CudaContextExt;
use crate::jit::cache::{CachedCubin, KernelCache, compile_uncached};
use crate::jit::compiler::Compiler;
use crate::{Arch, Error, Gpu, Nvrtc};

/// Just-in-time compilation through an on-disk cache.
pub struct Jit {
    compiler: Box<dyn Compiler>,
    cache: Option<KernelCache>,
}

/// A kernel loaded on a GPU.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The entry points, in the order of `KernelSource::entries`.
    pub functions: Vec<CudaFunction>,
    /// Where the cubin came from.
    pub cubin: CachedCubin,
}

impl Jit {
    /// NVRTC with the default cache folder ([`KernelCache::default_root`]).
    pub fn nvrtc() -> Result<Jit, Error> {
        Ok(Jit::new(
            Box::new(Nvrtc::new()?),
            Some(KernelCache::new(KernelCache::default_root())),
        ))
    }

    /// Any compiler, with a cache or none.
    pub fn new(compiler: Box<dyn Compiler>, cache: Option<KernelCache>) -> Jit {
        Jit { compiler, cache }
    }

    /// The compiler's id.
    pub fn compiler_id(&self) -> String {
        self.compiler.id()
    }

    /// The cache folder, when caching.
    pub fn cache_root(&self) -> Option<PathBuf> {
        self.cache.as_ref().map(|c| c.root().to_path_buf())
    }

    /// The cubin of `kernel` for `arch`, from the cache when possible.
    pub fn cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CachedCubin, Error> {
        match &self.cache {
            Some(cache) => cache.get_or_compile(self.compiler.as_ref(), kernel, arch),
            None => compile_uncached(self.compiler.as_ref(), kernel, arch),
        }
    }

    /// Compiles (or fetches) `kernel` for the GPU's architecture and loads its entry point.
    pub fn load(&self, gpu: &Gpu, kernel: &KernelSource) -> Result<LoadedKernel, Error> {
        let cubin = self.cubin(kernel, gpu.arch())?;
        let module = gpu
            .context()
            .load_module(Ptx::from_binary(cubin.cubin.clone()))
            .cuda(&format!("loading the cubin of {}", kernel.file_name))?;
        let functions = kernel
            .entries
            .iter()
            .map(|entry| {
                module
                    .load_function(entry)
                    .cuda(&format!("finding `{entry}` in {}", kernel.file_name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoadedKernel { functions, cubin })
    }
}
