//! `nvcc -cubin` as a second [`Compiler`], for comparison with NVRTC and for profiling builds.
//! It needs a CUDA toolkit; epc itself never does.

use std::path::PathBuf;
use std::process::Command;

use ep_codegen::KernelSource;

use crate::jit::cache::join_name;
use crate::jit::compiler::{CompileOutput, Compiler};
use crate::{Arch, Error};

/// The toolkit's `nvcc`.
#[derive(Debug, Clone)]
pub struct Nvcc {
    path: PathBuf,
    version: String,
}

impl Nvcc {
    /// Finds `nvcc` in `$CUDA_PATH/bin`, `/usr/local/cuda/bin` or on `PATH`.
    pub fn new() -> Result<Nvcc, Error> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(cuda) = std::env::var_os("CUDA_PATH") {
            candidates.push(PathBuf::from(cuda).join("bin/nvcc"));
        }
        candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
        candidates.push(PathBuf::from("nvcc"));
        for path in candidates {
            let Ok(out) = Command::new(&path).arg("--version").output() else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let version = text
                .lines()
                .find_map(|l| l.split("release ").nth(1))
                .and_then(|r| r.split(',').next())
                .unwrap_or("unknown")
                .to_owned();
            return Ok(Nvcc { path, version });
        }
        Err(Error::NvccNotFound {
            searched: "$CUDA_PATH/bin, /usr/local/cuda/bin and PATH".into(),
        })
    }
}

impl Compiler for Nvcc {
    fn id(&self) -> String {
        format!("nvcc {}", self.version)
    }

    fn options(&self, arch: Arch) -> Vec<String> {
        vec![
            "-cubin".into(),
            format!("-arch={arch}"),
            "-std=c++17".into(),
            "-Xptxas=--verbose".into(),
        ]
    }

    fn compile_to_cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CompileOutput, Error> {
        let tmp = std::env::temp_dir();
        let work = format!("epc-nvcc-{}-{}", std::process::id(), kernel.source_hash);
        let dir = join_name(&tmp, &work, "nvcc work folder")?;
        let cu = join_name(&dir, &kernel.file_name, "kernel file")?;
        let io = |source| Error::Cache {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let cubin_path = dir.join("kernel.cubin");
        std::fs::write(&cu, &kernel.source).map_err(io)?;
        let options = self.options(arch);
        let out = Command::new(&self.path)
            .args(&options)
            .arg("-o")
            .arg(&cubin_path)
            .arg(&cu)
            .output()
            .map_err(io)?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cubin = std::fs::read(&cubin_path);
        let _ = std::fs::remove_dir_all(&dir);
        match cubin {
            Ok(cubin) if out.status.success() => Ok(CompileOutput { cubin, log }),
            _ => Err(Error::Compile {
                compiler: "nvcc",
                kernel: kernel.file_name.clone(),
                arch,
                options,
                log,
                source_file: None,
            }),
        }
    }
}
