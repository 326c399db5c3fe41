//! `epc check`.

use std::process::ExitCode;

use anyhow::Result;
use ep_codegen::{Mode, Spec};

use crate::cli::SpecArgs;
use crate::inputs::load_specs;

/// Validates specs; prints one line per valid spec. Any invalid spec fails with every error.
pub fn check(args: &SpecArgs) -> Result<ExitCode> {
    for l in load_specs(&args.specs)? {
        println!("ok  {:<40} {}", l.origin, summary(&l.spec));
    }
    Ok(ExitCode::SUCCESS)
}

/// `LL H=7168 bf16->fp8_e4m3 E=256 K=8 R=32 (G=8) M=128 hash ...`.
pub fn summary(s: &Spec) -> String {
    let mode = match s.mode {
        Mode::LowLatency => "LL",
        Mode::HighThroughput => "HT",
    };
    format!(
        "{mode} H={} {}->{} E={} K={} R={} (G={}) M={} hash {}",
        s.hidden,
        s.dtype.as_str(),
        s.dispatch_dtype.as_str(),
        s.experts,
        s.top_k,
        s.ranks,
        s.nvlink_domain,
        s.max_tokens_per_rank,
        s.hash()
    )
}
