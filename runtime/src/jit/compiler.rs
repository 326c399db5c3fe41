//! The compiler interface the cache is written against: NVRTC in production, fakes in tests.

use ep_codegen::KernelSource;

use crate::{Arch, Error};

/// A cubin and what the compiler said while making it.
#[derive(Debug, Clone)]
pub struct CompileOutput {
    /// The cubin for exactly one architecture.
    pub cubin: Vec<u8>,
    /// The compiler's log (ptxas statistics included when it gives them).
    pub log: String,
}

/// Turns rendered CUDA C++ into a cubin.
pub trait Compiler: Send + Sync {
    /// Name and version (`nvrtc 13.0`): part of every cache key.
    fn id(&self) -> String;
    /// The options used for `arch`: part of every cache key.
    fn options(&self, arch: Arch) -> Vec<String>;
    /// Compiles one kernel.
    fn compile_to_cubin(&self, kernel: &KernelSource, arch: Arch) -> Result<CompileOutput, Error>;
}

/// Resource figures of a compiled kernel.
///
/// Registers and the stack frame are read from the cubin itself, so they are known whatever the
/// compiler printed; spill bytes come from a ptxas `--verbose` log when the compiler gives one
/// (the NVRTC of the pip wheel does, some toolkit builds print nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelStats {
    /// Registers per thread.
    pub registers: Option<u32>,
    /// Per-thread stack frame (local memory) in bytes.
    pub stack_frame_bytes: Option<u32>,
    /// Bytes of spill stores, from the log.
    pub spill_stores: Option<u32>,
    /// Bytes of spill loads, from the log.
    pub spill_loads: Option<u32>,
}

impl KernelStats {
    /// Figures of a cubin and the log of its compile.
    pub fn of(cubin: &[u8], log: &str) -> KernelStats {
        let from_elf = crate::jit::cubin::stats(cubin);
        let from_log = KernelStats::parse_log(log);
        KernelStats {
            registers: from_elf.registers.or(from_log.registers),
            stack_frame_bytes: from_elf.stack_frame_bytes,
            ..from_log
        }
    }

    /// Reads `Used N registers` and `N bytes spill stores, M bytes spill loads` from a log;
    /// with several entry points, the largest of each.
    pub fn parse_log(log: &str) -> KernelStats {
        let number_before = |line: &str, word: &str| -> Option<u32> {
            let at = line.find(word)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        let max = |slot: &mut Option<u32>, n: Option<u32>| {
            if let Some(n) = n {
                *slot = Some(slot.map_or(n, |v| v.max(n)));
            }
        };
        let mut stats = KernelStats::default();
        for line in log.lines() {
            max(&mut stats.registers, number_before(line, "registers"));
            max(
                &mut stats.spill_stores,
                number_before(line, "bytes spill stores"),
            );
            max(
                &mut stats.spill_loads,
                number_before(line, "bytes spill loads"),
            );
        }
        stats
    }
}

/// The source with right-aligned line numbers, for compile errors.
pub fn listing(source: &str) -> String {
    source
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{:>4} | {l}\n", i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::KernelStats;

    #[test]
    fn reads_ptxas_statistics() {
        let log = "ptxas info    : Used 12 registers\n\
                   ptxas info    : Compiling entry function 'epc_layout' for 'sm_90'\n\
                   ptxas info    : Function properties for epc_layout\n\
                   \x20   0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 26 registers, used 1 barriers, 1152 bytes smem\n";
        let s = KernelStats::parse_log(log);
        assert_eq!(
            (s.registers, s.spill_stores, s.spill_loads),
            (Some(26), Some(8), Some(4))
        );
        assert_eq!(KernelStats::parse_log(""), KernelStats::default());
    }
}
