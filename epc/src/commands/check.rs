//! `epc check`.

use std::process::ExitCode;

use anyhow::{Result, bail};
use ep_codegen::{MemoryPlan, Mode, Spec, human_bytes};

use crate::cli::CheckArgs;
use crate::inputs::load_specs;

/// The memory cap per rank without a GPU to size it by.
const DEFAULT_CAP: u64 = 64 << 30;

/// Validates specs; prints two lines per spec (its key figures, the memory it needs) and a note
/// per high-throughput spec. An invalid spec fails with every error, and so does a spec whose
/// ranks need more memory than the cap.
pub fn check(args: &CheckArgs) -> Result<ExitCode> {
    let specs = load_specs(&args.specs.specs)?;
    let (cap, why) = cap(args.max_memory);
    println!("memory cap per rank: {} ({why})", human_bytes(cap));
    let mut too_large = Vec::new();
    for l in &specs {
        let plan = MemoryPlan::of(&l.spec);
        let verdict = plan.check(cap);
        let status = if verdict.is_ok() { "ok" } else { "FAIL" };
        println!("{status:<4} {:<40} {}", l.origin, summary(&l.spec));
        let mut memory = plan.summary();
        if verdict.is_ok() && plan.virtual_ranks() > cap {
            memory.push_str(" (above the cap: `epc run` runs fewer virtual ranks)");
        }
        println!("     memory {memory}");
        if let Err(e) = verdict {
            too_large.push(format!("{}: {e}", l.origin));
        }
    }
    if !too_large.is_empty() {
        bail!(
            "{}\n(the cap is {} per rank: {why})",
            too_large.join("\n"),
            human_bytes(cap)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The cap per rank, and where it comes from.
fn cap(max_memory: Option<u64>) -> (u64, String) {
    if let Some(bytes) = max_memory {
        return (bytes, "--max-memory".to_owned());
    }
    match ep_runtime::Gpu::total_memory(0) {
        Ok(total) => (
            u64::try_from(u128::from(total) * 4 / 5).unwrap_or(u64::MAX),
            format!(
                "80% of GPU 0's {}; --max-memory changes it",
                human_bytes(total)
            ),
        ),
        Err(_) => (
            DEFAULT_CAP,
            "no GPU to size it by; --max-memory changes it".to_owned(),
        ),
    }
}

/// `LL H=7168 bf16->fp8_e4m3 E=256 K=8 R=32 (G=8) M=128 hash ...`.
pub fn summary(s: &Spec) -> String {
    let mode = match s.mode() {
        Mode::LowLatency => "LL",
        Mode::HighThroughput => "HT",
    };
    format!(
        "{mode} H={} {}->{} E={} K={} R={} (G={}) M={} hash {}",
        s.hidden(),
        s.dtype().as_str(),
        s.dispatch_dtype().as_str(),
        s.experts(),
        s.top_k(),
        s.ranks(),
        s.nvlink_domain(),
        s.max_tokens_per_rank(),
        s.hash()
    )
}
