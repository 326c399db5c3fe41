//! The canonical YAML of a spec: every field, defaults resolved, in one fixed order and spelling.
//!
//! It is what a spec's hash covers and what generated files quote, so it is written by hand
//! rather than by a serializer whose formatting could change under us; it parses back to the
//! same spec (a test holds this for every built-in spec).

use std::fmt::Write;

use crate::spec::{Layout, Mode, ScaleFormat, Spec};

/// The canonical YAML text of `spec`.
pub(crate) fn to_yaml(spec: &Spec) -> String {
    let mut y = String::new();
    // A section's value starts with a newline: no space after its colon.
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let value = value.to_string();
        let sep = if value.starts_with('\n') { ":" } else { ": " };
        // Writing into a String cannot fail.
        let _ = writeln!(y, "{key}{sep}{value}");
    };
    line("name", &quoted_if_needed(&spec.name));
    line(
        "mode",
        &match spec.mode {
            Mode::LowLatency => "low_latency",
            Mode::HighThroughput => "high_throughput",
        },
    );
    line("hidden", &spec.hidden);
    line("dtype", &spec.dtype.as_str());
    line("dispatch_dtype", &spec.dispatch_dtype.as_str());
    let fp8 = spec.fp8.map(|f| {
        let scale = match f.scale {
            ScaleFormat::F32 => "f32",
            ScaleFormat::Ue8m0 => "ue8m0",
        };
        format!("\n  block: {}\n  scale: {scale}", f.block)
    });
    if let Some(fp8) = fp8 {
        line("fp8", &fp8);
    }
    line("combine_dtype", &spec.combine_dtype.as_str());
    line(
        "index_dtype",
        &match spec.index_dtype {
            crate::spec::IndexDtype::I32 => "i32",
            crate::spec::IndexDtype::I64 => "i64",
        },
    );
    line("experts", &spec.experts);
    line("top_k", &spec.top_k);
    line("ranks", &spec.ranks);
    line("nvlink_domain", &spec.nvlink_domain);
    line("max_tokens_per_rank", &spec.max_tokens_per_rank);
    if let Some(ht) = spec.high_throughput {
        line("max_recv_tokens_per_rank", &ht.max_recv_tokens_per_rank);
        line(
            "layout",
            &match ht.layout {
                Layout::Flat => "flat",
                Layout::ExpertMajor => "expert_major",
            },
        );
        line("expert_alignment", &ht.expert_alignment);
    }
    let t = spec.tuning;
    let knob = |k: Option<u32>| k.map_or_else(|| "auto".to_owned(), |v| v.to_string());
    let tuning = format!(
        "\n  sms: {}\n  warps_per_block: {}\n  tokens_per_warp: {}\n  vector_bytes: {}\n  unroll: {}",
        knob(t.sms),
        knob(t.warps_per_block),
        knob(t.tokens_per_warp),
        knob(t.vector_bytes),
        knob(t.unroll)
    );
    line("tuning", &tuning);
    y
}

/// A name as a YAML scalar: plain unless YAML would read it as something other than text.
fn quoted_if_needed(name: &str) -> String {
    let is_number = name.parse::<f64>().is_ok()
        || name
            .chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == '.');
    let is_word = matches!(
        name.to_ascii_lowercase().as_str(),
        "" | "~" | "null" | "true" | "false" | ".inf" | "-.inf" | ".nan"
    );
    if is_number || is_word || name.starts_with('-') || name.starts_with('0') {
        format!("'{name}'")
    } else {
        name.to_owned()
    }
}
