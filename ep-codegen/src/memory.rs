//! How much device memory a spec needs, per rank and for R virtual ranks on one GPU.
//!
//! Every figure comes from the layout code the runtime allocates with ([`Window`],
//! [`CallLayout`], [`workspace_ints`]), so what `epc check` prints is what `ep-runtime` asks the
//! driver for: exact bytes before the driver rounds each allocation up to its granularity.
//! Sums saturate at `u64::MAX` instead of overflowing (no valid spec comes near it).
//!
//! ```
//! let yaml = "name: demo\nmode: low_latency\nhidden: 1024\nexperts: 16\ntop_k: 2\n\
//!             ranks: 4\nmax_tokens_per_rank: 32\n";
//! let spec = ep_codegen::Spec::from_yaml(yaml, None).unwrap();
//! let plan = ep_codegen::MemoryPlan::of(&spec);
//! assert!(plan.per_rank() > plan.window);
//! assert!(plan.check(64 << 30).is_ok());
//! assert_eq!(ep_codegen::human_bytes(3 << 29), "1.5 GiB");
//! ```

use std::fmt::Write as _;

use crate::kernels::ht::{HtWindow, NOTIFY_STATUS_WORDS, destinations, notify_output_ints};
use crate::kernels::ll::{CallLayout, Window, workspace_ints};
use crate::{Dtype, Mode, Spec};

/// Calls whose state the runtime keeps at once per rank: two calls may be in flight (one per
/// window half), each with its own [`CallLayout`].
pub const CALLS_IN_FLIGHT: u64 = 2;

/// Bytes of one peer table entry (a device pointer).
const PEER_ENTRY_BYTES: u64 = 8;

/// Device memory of one spec, in bytes, per rank unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The spec's name.
    pub spec_name: String,
    /// The spec's mode.
    pub mode: Mode,
    /// R.
    pub ranks: u64,
    /// The symmetric window: both halves of [`Window::bytes`] in low-latency mode; in
    /// high-throughput mode, [`HtWindow::bytes`] (notify's region, the receive buffer, the flags
    /// and, with G < R, the staging regions).
    pub window: u64,
    /// The rank's workspace: [`workspace_ints`] 32-bit words.
    pub workspace: u64,
    /// The state of [`CALLS_IN_FLIGHT`] calls ([`CallLayout::bytes`] each).
    pub call_state: u64,
    /// The peer table: R device pointers. Over NCCL every rank has its own; R virtual ranks on
    /// one GPU share one.
    pub peer_table: u64,
    /// The routing layout kernel's buffers at `max_tokens_per_rank` tokens (every spec has the
    /// layout kernel): `topk_idx`, the counters `[R + E + 2]` and `is_token_in_rank [T, R]`.
    pub layout: u64,
    /// The caller's tensors of one call at `max_tokens_per_rank` tokens (`x`, `topk_idx`,
    /// `topk_weights`, `out`): not the runtime's (a serving stack brings its own), but the
    /// host-vector helpers behind `epc run` allocate them, for [`CALLS_IN_FLIGHT`] calls.
    pub caller_tensors: u64,
    dims: Dims,
}

/// The spec values the plan's hints name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    hidden: u64,
    experts: u64,
    top_k: u64,
    ranks: u64,
    tokens: u64,
    bf16_dispatch: bool,
}

// Spec values are read through these helpers only, so the plan follows the spec's accessors in
// one place if its fields change.
fn hidden(s: &Spec) -> u64 {
    u64::from(s.hidden)
}
fn experts(s: &Spec) -> u64 {
    u64::from(s.experts)
}
fn top_k(s: &Spec) -> u64 {
    u64::from(s.top_k)
}
fn ranks(s: &Spec) -> u64 {
    u64::from(s.ranks)
}
fn tokens(s: &Spec) -> u64 {
    u64::from(s.max_tokens_per_rank)
}
fn mode(s: &Spec) -> Mode {
    s.mode
}
fn name(s: &Spec) -> &str {
    &s.name
}
fn activation_bytes(s: &Spec) -> u64 {
    u64::from(s.dtype.size())
}
fn index_bytes(s: &Spec) -> u64 {
    u64::from(s.index_dtype.size())
}
fn bf16_dispatch(s: &Spec) -> bool {
    s.dispatch_dtype == Dtype::Bf16
}

/// `a * b`, saturating.
fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

/// The sum of `parts`, saturating.
fn sum(parts: &[u64]) -> u64 {
    parts.iter().fold(0u64, |acc, &p| acc.saturating_add(p))
}

impl MemoryPlan {
    /// The plan of `spec`, from the same layout code the runtime allocates with.
    pub fn of(spec: &Spec) -> MemoryPlan {
        let (h, e, k, r, m) = (
            hidden(spec),
            experts(spec),
            top_k(spec),
            ranks(spec),
            tokens(spec),
        );
        let idx = index_bytes(spec);
        // LayoutKernel: topk_idx uploads at least one id, is_token_in_rank at least one byte.
        let layout = sum(&[
            mul(mul(m, k).max(1), idx),
            mul(sum(&[r, e, 2]), 4),
            mul(m, r).max(1),
        ]);
        let caller_tensors = sum(&[
            mul(mul(2, mul(m, h)), activation_bytes(spec)),
            mul(mul(m, k).max(1), idx),
            mul(mul(m, k), 4),
        ]);
        let (window, workspace, call_state, peer_table) = match mode(spec) {
            Mode::LowLatency => {
                let w = Window::of(spec);
                (
                    w.bytes(),
                    mul(4, u64::from(workspace_ints(spec))),
                    mul(CALLS_IN_FLIGHT, CallLayout::of(spec).bytes),
                    mul(r, PEER_ENTRY_BYTES),
                )
            }
            // The window and notify's words.
            Mode::HighThroughput => (
                HtWindow::of(spec).bytes,
                // Notify's outputs, status and epoch; each token's row on each destination
                // [M, R] (flat) or each slot's [M, K] (expert-major).
                mul(
                    4,
                    u64::from(notify_output_ints(spec) + NOTIFY_STATUS_WORDS + 1),
                )
                .saturating_add(mul(mul(m, u64::from(destinations(spec))), 4)),
                0,
                mul(r, PEER_ENTRY_BYTES),
            ),
        };
        MemoryPlan {
            spec_name: name(spec).to_owned(),
            mode: mode(spec),
            ranks: r,
            window,
            workspace,
            call_state,
            peer_table,
            layout,
            caller_tensors: match mode(spec) {
                Mode::LowLatency => mul(CALLS_IN_FLIGHT, caller_tensors),
                // One call's tensors (the host helper's).
                Mode::HighThroughput => caller_tensors,
            },
            dims: Dims {
                hidden: h,
                experts: e,
                top_k: k,
                ranks: r,
                tokens: m,
                bf16_dispatch: bf16_dispatch(spec),
            },
        }
    }

    /// What the runtime allocates for one rank (one GPU over NCCL): window, workspace, call
    /// state, peer table and layout buffers.
    pub fn per_rank(&self) -> u64 {
        sum(&[self.private(), self.peer_table])
    }

    /// What R virtual ranks on one GPU take together: R times each rank's own memory, and one
    /// shared peer table.
    pub fn virtual_ranks(&self) -> u64 {
        sum(&[mul(self.ranks, self.private()), self.peer_table])
    }

    /// [`MemoryPlan::virtual_ranks`] plus every rank's caller tensors: what `epc run` allocates
    /// on one GPU.
    pub fn virtual_ranks_with_caller_tensors(&self) -> u64 {
        sum(&[self.virtual_ranks(), mul(self.ranks, self.caller_tensors)])
    }

    /// Each rank's own memory (all but the peer table).
    fn private(&self) -> u64 {
        sum(&[self.window, self.workspace, self.call_state, self.layout])
    }

    /// The parts of [`MemoryPlan::per_rank`] with their names, largest first (ties in the
    /// order of the fields).
    pub fn parts(&self) -> Vec<(&'static str, u64)> {
        let mut parts = vec![
            ("window", self.window),
            ("workspace", self.workspace),
            ("call state", self.call_state),
            ("peer table", self.peer_table),
            ("layout buffers", self.layout),
        ];
        parts.sort_by_key(|&(_, bytes)| std::cmp::Reverse(bytes));
        parts
    }

    /// One line: the per-rank total with its largest parts, then the virtual-ranks total.
    pub fn summary(&self) -> String {
        let mut line = format!("{} per rank (", human_bytes(self.per_rank()));
        let shown: Vec<String> = self
            .parts()
            .into_iter()
            .filter(|&(_, b)| b > 0)
            .take(3)
            .map(|(n, b)| format!("{n} {}", human_bytes(b)))
            .collect();
        line.push_str(&shown.join(", "));
        let rest = sum(&self
            .parts()
            .into_iter()
            .filter(|&(_, b)| b > 0)
            .skip(3)
            .map(|(_, b)| b)
            .collect::<Vec<_>>());
        if rest > 0 {
            let _ = write!(line, ", other {}", human_bytes(rest));
        }
        line.push(')');
        let _ = write!(
            line,
            "; {} for {} virtual rank{} on one GPU",
            human_bytes(self.virtual_ranks()),
            self.ranks,
            if self.ranks == 1 { "" } else { "s" }
        );
        line
    }

    /// Whether one rank fits in `cap` bytes; if not, an error naming the fields that
    /// dominate the size.
    pub fn check(&self, cap: u64) -> Result<(), MemoryError> {
        let needs = self.per_rank();
        if needs <= cap {
            return Ok(());
        }
        let (largest, bytes) = self.parts()[0];
        Err(MemoryError::TooLarge {
            spec: self.spec_name.clone(),
            needs,
            cap,
            largest,
            largest_bytes: bytes,
            advice: self.advice(largest),
        })
    }

    /// Which fields to lower when `part` dominates, with their values.
    fn advice(&self, part: &str) -> String {
        let d = &self.dims;
        let fields: &[(&str, u64)] = match part {
            "window" => &[
                ("max_tokens_per_rank", d.tokens),
                ("experts", d.experts),
                ("hidden", d.hidden),
            ],
            "workspace" => &[
                ("experts", d.experts),
                ("max_tokens_per_rank", d.tokens),
                ("top_k", d.top_k),
            ],
            "call state" => &[("max_tokens_per_rank", d.tokens), ("top_k", d.top_k)],
            "peer table" => &[("ranks", d.ranks)],
            _ => &[
                ("max_tokens_per_rank", d.tokens),
                ("ranks", d.ranks),
                ("top_k", d.top_k),
            ],
        };
        let mut advice = String::from("lower ");
        for (i, (field, value)) in fields.iter().enumerate() {
            if i > 0 {
                advice.push_str(if i + 1 == fields.len() { " or " } else { ", " });
            }
            let _ = write!(advice, "`{field}` ({value})");
        }
        if part == "window" {
            advice.push_str(
                ": each half of the window holds experts x max_tokens_per_rank rows of hidden \
                 values, received and combined (the rank count does not change it)",
            );
            if d.bf16_dispatch {
                advice.push_str("; `dispatch_dtype: fp8_e4m3` saves about a quarter");
            }
        }
        advice
    }
}

/// Errors of memory planning and of memory sizes given as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// One rank needs more device memory than allowed.
    #[error(
        "spec `{spec}` needs {} of device memory per rank, more than the cap of {} (the {largest} \
         alone takes {}); {advice}",
        human_bytes(*needs),
        human_bytes(*cap),
        human_bytes(*largest_bytes)
    )]
    TooLarge {
        /// The spec's name.
        spec: String,
        /// Bytes per rank.
        needs: u64,
        /// The cap, in bytes.
        cap: u64,
        /// The largest part.
        largest: &'static str,
        /// Its bytes.
        largest_bytes: u64,
        /// Which fields to lower.
        advice: String,
    },
    /// A memory size that is not a number followed by a unit.
    #[error(
        "`{text}` is not a memory size: {why}; write a number and a unit, such as 16GiB, \
         512MiB or 1.5TiB (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
    )]
    BadSize {
        /// The text given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
}

/// `bytes` in binary units with one decimal (`3.2 GiB`, `512.0 MiB`), plain below 1 KiB
/// (`80 B`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // One decimal would print 1024.0 for values just below the next unit.
    if format!("{value:.1}") == "1024.0" && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Parses a memory size: a number (digits, at most one `.`), optional spaces, and a unit among
/// `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) and `kB`, `MB`, `GB`, `TB` (powers of 1000),
/// case-insensitive. The result is rounded down to whole bytes and must be above zero.
pub fn parse_size(text: &str) -> Result<u64, MemoryError> {
    let bad = |why: &str| MemoryError::BadSize {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    if unit.is_empty() {
        return Err(bad("the unit is missing"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad("the number is malformed"));
    }
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad(&format!("`{unit}` is not a unit"))),
    };
    // Exact decimal arithmetic: whole * scale + fraction * scale / 10^digits.
    let too_large = || bad("it is too large");
    let parse = |digits: &str| -> Result<u128, MemoryError> {
        if digits.len() > 30 {
            return Err(too_large());
        }
        digits.parse::<u128>().map_err(|_| too_large())
    };
    let mut bytes = parse(whole)?.checked_mul(scale).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits = fraction.trim_end_matches('0');
        if digits.len() > 18 {
            return Err(bad("too many decimals"));
        }
        if !digits.is_empty() {
            let part = parse(digits)?;
            let ten = 10u128.pow(digits.len() as u32);
            bytes = bytes
                .checked_add(part.checked_mul(scale).ok_or_else(too_large)? / ten)
                .ok_or_else(too_large)?;
        }
    }
    let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
    if bytes == 0 {
        return Err(bad("it must be more than zero bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Spec {
        Spec::from_yaml(yaml, None).unwrap()
    }

    const SMALL: &str = "name: small\nmode: low_latency\nhidden: 1024\nexperts: 16\ntop_k: 2\n\
                         ranks: 4\nmax_tokens_per_rank: 32\n";

    #[test]
    fn a_small_spec_needs_exactly_what_its_layouts_say() {
        let s = spec(SMALL);
        let p = MemoryPlan::of(&s);
        // L = 4, R*M = 128 rows per expert, 512 rows: recv_x 512 x 2048 = 1 MiB at 0,
        // no scales, recv_src 2 KiB at 1 MiB, y 1 MiB at 1 MiB + 2 KiB, counter at
        // 2 MiB + 2 KiB, range at +256, dispatch flags at +512, done counters at +768, combine
        // flags at +1024, half rounded up to 4096.
        let half: u64 = 2 * 1024 * 1024 + 2048 + 1024;
        let half = half.div_ceil(4096) * 4096;
        assert_eq!(p.window, 2 * half);
        assert_eq!(p.window, Window::of(&s).bytes());
        assert_eq!(p.workspace, 4 * (2 + 8 + 2 * 32 * 2));
        assert_eq!(p.workspace, 4 * u64::from(workspace_ints(&s)));
        // call state: 16 bytes, recv_count [4] at 16, dispatch_row [32 x 2] int2 at 32.
        assert_eq!(p.call_state, 2 * (32u64 + 8 * 64).div_ceil(256) * 256);
        assert_eq!(p.peer_table, 32);
        // topk_idx is i64 unless the spec says otherwise.
        assert_eq!(p.layout, 64 * 8 + (4 + 16 + 2) * 4 + 32 * 4);
        assert_eq!(
            p.per_rank(),
            p.window + p.workspace + p.call_state + p.peer_table + p.layout
        );
        assert_eq!(p.virtual_ranks(), 4 * (p.per_rank() - 32) + 32);
        assert_eq!(p.caller_tensors, 2 * (2 * 32 * 1024 * 2 + 64 * 8 + 64 * 4));
        assert_eq!(p.parts()[0].0, "window");
        assert!(p.check(p.per_rank()).is_ok());
        assert!(p.check(p.per_rank() - 1).is_err());
    }

    #[test]
    fn high_throughput_specs_count_their_window_positions_and_notify_words() {
        let base = "name: ht\nmode: high_throughput\nhidden: 4096\nexperts: 64\ntop_k: 6\n\
                    ranks: 8\nmax_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n";
        let flat = MemoryPlan::of(&spec(base));
        assert_eq!(flat.layout, 4096 * 6 * 8 + (8 + 64 + 2) * 4 + 4096 * 8);
        assert_eq!(flat.window, HtWindow::of(&spec(base)).bytes);
        // Each of the 32768 rows: x and y (4096 x 2 bytes each), 6 ids, 6 weights, a source.
        assert!(flat.window >= 32768 * (2 * 4096 * 2 + 6 * 8 + 6 * 4 + 4));
        // Notify's outputs, status and epoch, then each token's row on each rank [M, R].
        assert_eq!(
            flat.workspace,
            4 * ((8 + 1 + 8 + 9 + 64) + 6 + 1) + 4 * 4096 * 8
        );
        assert_eq!(
            flat.per_rank(),
            flat.layout + flat.window + flat.workspace + flat.peer_table
        );
        // Expert-major: the same window, a row per slot in `positions` [M, K].
        let major_spec = spec(&format!(
            "{base}layout: expert_major\nexpert_alignment: 128\n"
        ));
        let major = MemoryPlan::of(&major_spec);
        assert_eq!(major.window, HtWindow::of(&major_spec).bytes);
        assert_eq!(
            major.workspace,
            4 * ((8 + 1 + 8 + 9 + 64) + 6 + 1) + 4 * 4096 * 6
        );
    }

    #[test]
    fn the_largest_valid_spec_is_refused_with_the_fields_to_lower() {
        let s = spec(
            "name: huge\nmode: low_latency\nhidden: 65536\nexperts: 4096\ntop_k: 32\n\
             ranks: 1024\nmax_tokens_per_rank: 1024\n",
        );
        let p = MemoryPlan::of(&s);
        // 4096 x 1024 rows of 65536 x (2 + 2) bytes per half, two halves: 2 TiB.
        assert!(p.window > 2 << 40, "{}", p.window);
        assert!(p.virtual_ranks() > 2048 << 40);
        let e = p.check(64 << 30).unwrap_err().to_string();
        for part in [
            "`huge`",
            "per rank",
            "64.0 GiB",
            "`max_tokens_per_rank` (1024)",
            "`experts` (4096)",
            "`hidden` (65536)",
            "fp8_e4m3",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(3_435_973_837), "3.2 GiB");
        assert_eq!(human_bytes((1 << 30) - 1), "1.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5TiB"), Ok(3 << 39));
        assert_eq!(parse_size("80gb"), Ok(80_000_000_000));
        assert_eq!(parse_size("100B"), Ok(100));
        for bad in [
            "", "16", "GiB", "16 GiBs", "-1GiB", "1..5GiB", "1.GiB", ".5GiB", "0GiB", "16 G",
            "1e3MiB",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("is not a memory size"), "{bad}: {e}");
        }
        assert!(
            parse_size("99999999999999999999TiB")
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }
}
