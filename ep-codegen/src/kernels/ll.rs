//! Low-latency dispatch and combine: the symmetric window layout and the two kernel families.
//!
//! Each rank owns one window, split in two halves used by alternate calls (epoch parity), so two
//! calls can be in flight. Senders write straight into the receivers' halves, so the receive
//! tensors are views of the window and nothing is copied twice. A half holds, in order:
//! - `recv_x [L][R*M][payload]`, `recv_scales [L][R*M][H/128]` (FP8 only) and
//!   `recv_meta [L][R*M]` (int2: source `s * M + t`, slot k): dispatch's outputs;
//! - `y [L][R*M][H]`: the experts' outputs, which combine reads from the peers (pull);
//! - `counter [L]`: rows reserved so far per local expert (senders add with system atomics,
//!   the receive reads and resets it);
//! - `range [L][R]` (int2: first row, rows) written by each sender;
//! - dispatch flags `[R]` and combine flags `[R]` (u64: epoch << 32 | 1), one per peer.

use std::collections::BTreeMap;

use super::{KernelPlan, LaunchShape, Param};
use crate::spec::{Dtype, IndexDtype, Spec};

/// Warps per block when `tuning.warps_per_block` is `auto`.
pub const DEFAULT_WARPS: u32 = 16;

const fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Byte offsets of everything in one half of a rank's low-latency window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Bytes of one row's payload (H x dispatch dtype size).
    pub payload_bytes: u64,
    /// FP8 block scales per row (H / 128), 0 without FP8.
    pub scale_count: u64,
    /// Rows per local expert (R x M).
    pub rows_per_expert: u64,
    /// `recv_x`.
    pub recv_x_offset: u64,
    /// `recv_scales`.
    pub recv_scales_offset: u64,
    /// `recv_meta`.
    pub recv_meta_offset: u64,
    /// `y`.
    pub y_offset: u64,
    /// `counter`.
    pub counter_offset: u64,
    /// `range`.
    pub range_offset: u64,
    /// Dispatch flags.
    pub dispatch_flags_offset: u64,
    /// Combine flags.
    pub combine_flags_offset: u64,
    /// Bytes of one half.
    pub half_bytes: u64,
    /// Offset of the scales in a staged (pre-quantized FP8) row.
    pub staged_scales_offset: u64,
    /// Bytes of a staged row (0 without FP8: rows are sent from x as they are).
    pub staged_bytes: u64,
}

impl Window {
    /// The layout for a spec.
    pub fn of(spec: &Spec) -> Window {
        let (h, r, m, l) = (
            u64::from(spec.hidden),
            u64::from(spec.ranks),
            u64::from(spec.max_tokens_per_rank),
            u64::from(spec.local_experts()),
        );
        let rows = l * r * m;
        let payload_bytes = h * u64::from(spec.dispatch_dtype.size());
        let scale_count = spec.fp8.map_or(0, |f| h / u64::from(f.block));
        let recv_x_offset = 0;
        let recv_scales_offset = align(recv_x_offset + rows * payload_bytes, 256);
        let recv_meta_offset = align(recv_scales_offset + rows * scale_count * 4, 256);
        let y_offset = align(recv_meta_offset + rows * 8, 256);
        let counter_offset = align(
            y_offset + rows * h * u64::from(spec.combine_dtype.size()),
            256,
        );
        let range_offset = align(counter_offset + l * 4, 256);
        let dispatch_flags_offset = align(range_offset + l * r * 8, 256);
        let combine_flags_offset = align(dispatch_flags_offset + r * 8, 256);
        let half_bytes = align(combine_flags_offset + r * 8, 4096);
        let staged_scales_offset = align(payload_bytes, 16);
        let staged_bytes = if scale_count == 0 {
            0
        } else {
            align(staged_scales_offset + scale_count * 4, 16)
        };
        Window {
            staged_scales_offset,
            staged_bytes,
            payload_bytes,
            scale_count,
            rows_per_expert: r * m,
            recv_x_offset,
            recv_scales_offset,
            recv_meta_offset,
            y_offset,
            counter_offset,
            range_offset,
            dispatch_flags_offset,
            combine_flags_offset,
            half_bytes,
        }
    }

    /// Bytes of the whole window (two halves).
    pub fn bytes(&self) -> u64 {
        2 * self.half_bytes
    }

    /// Offset of the half used by the call with this epoch.
    pub fn half(&self, epoch: u32) -> u64 {
        u64::from(epoch & 1) * self.half_bytes
    }
}

/// Ints of per-rank workspace: per-expert counts and bases `[E]` each, the last epoch, the
/// bases-ready epoch, two done counters, four error words and each selection's slot `[M * K]`.
pub fn workspace_ints(spec: &Spec) -> u32 {
    2 * spec.experts + 8 + spec.max_tokens_per_rank * spec.top_k
}

/// Index of the error words inside a rank's workspace.
pub fn errors_offset(spec: &Spec) -> u32 {
    2 * spec.experts + 4
}

/// Error codes the kernels write into `errors[0]` (the first error of a rank wins).
pub mod error_code {
    /// A dispatch flag did not arrive in time; detail = source rank.
    pub const DISPATCH_TIMEOUT: i32 = 1;
    /// A combine flag did not arrive in time; detail = expert rank.
    pub const COMBINE_TIMEOUT: i32 = 2;
    /// An expert id outside [-1, E); detail = token * K + slot.
    pub const BAD_EXPERT: i32 = 3;
    /// A receive region overflowed (a previous call was never received); detail = expert.
    pub const OVERFLOW: i32 = 4;
    /// The blocks of a rank did not meet in time (not co-resident); detail = rank.
    pub const BARRIER_TIMEOUT: i32 = 5;
}

/// Constants, strings, flags and threads shared by the LL kernels.
type Common = (
    BTreeMap<&'static str, i64>,
    BTreeMap<&'static str, String>,
    BTreeMap<&'static str, bool>,
    u32,
);

fn common(spec: &Spec) -> Common {
    let threads = 32 * spec.tuning.warps_per_block.unwrap_or(DEFAULT_WARPS);
    let w = Window::of(spec);
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let constants = BTreeMap::from([
        ("hidden", i64::from(spec.hidden)),
        ("top_k", i64::from(spec.top_k)),
        ("experts", i64::from(spec.experts)),
        ("ranks", i64::from(spec.ranks)),
        ("local_experts", i64::from(spec.local_experts())),
        ("max_tokens", i64::from(spec.max_tokens_per_rank)),
        ("threads", i64::from(threads)),
        ("payload_bytes", as_i64(w.payload_bytes)),
        ("scale_count", as_i64(w.scale_count)),
        ("recv_x_offset", as_i64(w.recv_x_offset)),
        ("recv_scales_offset", as_i64(w.recv_scales_offset)),
        ("recv_meta_offset", as_i64(w.recv_meta_offset)),
        ("y_offset", as_i64(w.y_offset)),
        ("counter_offset", as_i64(w.counter_offset)),
        ("range_offset", as_i64(w.range_offset)),
        ("dispatch_flags_offset", as_i64(w.dispatch_flags_offset)),
        ("combine_flags_offset", as_i64(w.combine_flags_offset)),
        ("half_bytes", as_i64(w.half_bytes)),
        ("staged_scales_offset", as_i64(w.staged_scales_offset)),
        ("staged_bytes", as_i64(w.staged_bytes)),
        ("workspace_ints", i64::from(workspace_ints(spec))),
    ]);
    let index_ctype = match spec.index_dtype {
        IndexDtype::I32 => "epc::i32",
        IndexDtype::I64 => "epc::i64",
    };
    let strings = BTreeMap::from([("index_ctype", index_ctype.to_owned())]);
    let flags = BTreeMap::from([
        ("act_is_bf16", spec.dtype == Dtype::Bf16),
        ("fp8", spec.fp8.is_some()),
        (
            "ue8m0",
            spec.fp8
                .is_some_and(|f| f.scale == crate::spec::ScaleFormat::Ue8m0),
        ),
    ]);
    (constants, strings, flags, threads)
}

fn param(entry: &'static str, name: &'static str, ctype: &str, shape: &str) -> Param {
    Param {
        entry,
        name,
        ctype: ctype.into(),
        shape: shape.into(),
    }
}

/// A plan of the LL family `name` (`ll_dispatch`, `ll_combine`) with send and receive entries.
fn plan(
    spec: &Spec,
    name: &'static str,
    template: &'static str,
    title: String,
    params: Vec<Param>,
) -> KernelPlan {
    let (constants, strings, flags, threads) = common(spec);
    let entry = |phase: &str| format!("epc_{name}_{phase}");
    KernelPlan {
        name,
        title,
        template,
        entries: vec![("entry_send", entry("send")), ("entry_recv", entry("recv"))],
        constants,
        strings,
        flags,
        launch: LaunchShape {
            block_threads: threads,
            tokens_per_block: 0,
            shared_mem_bytes: 0,
            cooperative: true,
        },
        params,
    }
}

/// The dispatch kernels (send, then receive).
pub fn dispatch_plan(spec: &Spec) -> KernelPlan {
    const SEND: &str = "epc_ll_dispatch_send";
    const RECV: &str = "epc_ll_dispatch_recv";
    let mut params = vec![
        param(
            SEND,
            "x",
            "const unsigned short*",
            "[G, M, H] (G = ranks in the launch)",
        ),
        param(SEND, "topk_idx", "const index_t*", "[G, M, K]"),
        param(SEND, "num_tokens", "const int*", "[G]"),
        param(
            SEND,
            "dispatch_row",
            "int*",
            "[G, M, K]: row at the expert, -1 for none",
        ),
        param(SEND, "call_epoch", "unsigned*", "[G]: the call's epoch"),
        param(SEND, "workspace", "int*", "[G, 2E + 8 + M*K]"),
    ];
    if spec.fp8.is_some() {
        params.push(param(SEND, "staging", "char*", "[G, M, staged row]"));
    }
    params.extend([
        param(SEND, "peers", "char* const*", "[R] window bases"),
        param(SEND, "rank_base", "int", "rank of grid.y = 0"),
        param(
            SEND,
            "timeout_ns",
            "unsigned long long",
            "bound of every wait",
        ),
        param(RECV, "call_epoch", "const unsigned*", "[G]"),
        param(RECV, "recv_count", "int*", "[G, L]"),
        param(RECV, "workspace", "int*", "[G, 2E + 8 + M*K]"),
        param(RECV, "peers", "char* const*", "[R] window bases"),
        param(RECV, "rank_base", "int", "rank of grid.y = 0"),
        param(
            RECV,
            "timeout_ns",
            "unsigned long long",
            "bound of every wait",
        ),
    ]);
    let title = format!(
        "Low-latency dispatch: H={} {} -> {}, E={} over R={} ranks, top-{}, M={}.",
        spec.hidden,
        spec.dtype.as_str(),
        spec.dispatch_dtype.as_str(),
        spec.experts,
        spec.ranks,
        spec.top_k,
        spec.max_tokens_per_rank
    );
    plan(spec, "ll_dispatch", "ll_dispatch.cu", title, params)
}

/// The combine kernels (send, then receive).
pub fn combine_plan(spec: &Spec) -> KernelPlan {
    const SEND: &str = "epc_ll_combine_send";
    const RECV: &str = "epc_ll_combine_recv";
    let params = vec![
        param(SEND, "call_epoch", "const unsigned*", "[G] (from dispatch)"),
        param(SEND, "peers", "char* const*", "[R] window bases"),
        param(SEND, "rank_base", "int", "rank of grid.y = 0"),
        param(RECV, "topk_idx", "const index_t*", "[G, M, K]"),
        param(RECV, "topk_weights", "const float*", "[G, M, K]"),
        param(RECV, "num_tokens", "const int*", "[G]"),
        param(
            RECV,
            "dispatch_row",
            "const int*",
            "[G, M, K] (from dispatch)",
        ),
        param(RECV, "call_epoch", "const unsigned*", "[G] (from dispatch)"),
        param(RECV, "out", "unsigned short*", "[G, M, H]"),
        param(RECV, "workspace", "int*", "[G, 2E + 8 + M*K]"),
        param(RECV, "peers", "char* const*", "[R] window bases"),
        param(RECV, "rank_base", "int", "rank of grid.y = 0"),
        param(
            RECV,
            "timeout_ns",
            "unsigned long long",
            "bound of every wait",
        ),
    ];
    let title = format!(
        "Low-latency combine: H={} {}, E={} over R={} ranks, top-{}, M={}.",
        spec.hidden,
        spec.combine_dtype.as_str(),
        spec.experts,
        spec.ranks,
        spec.top_k,
        spec.max_tokens_per_rank
    );
    plan(spec, "ll_combine", "ll_combine.cu", title, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        sized(7168, 256, 8, extra)
    }

    fn sized(hidden: u32, experts: u32, top_k: u32, extra: &str) -> Spec {
        let yaml = format!(
            "name: w\nmode: low_latency\nhidden: {hidden}\nexperts: {experts}\ntop_k: {top_k}\n\
             ranks: 8\nmax_tokens_per_rank: 128\n{extra}"
        );
        Spec::from_yaml(&yaml, None).unwrap()
    }

    #[test]
    fn window_regions_are_aligned_ordered_and_large_enough() {
        for s in [
            spec(""),
            spec("dispatch_dtype: fp8_e4m3\n"),
            sized(2880, 128, 4, ""),
        ] {
            let w = Window::of(&s);
            let rows = u64::from(s.local_experts()) * w.rows_per_expert;
            let regions = [
                (w.recv_x_offset, rows * w.payload_bytes),
                (w.recv_scales_offset, rows * w.scale_count * 4),
                (w.recv_meta_offset, rows * 8),
                (w.y_offset, rows * u64::from(s.hidden) * 2),
                (w.counter_offset, u64::from(s.local_experts()) * 4),
                (w.range_offset, u64::from(s.local_experts() * s.ranks) * 8),
                (w.dispatch_flags_offset, u64::from(s.ranks) * 8),
                (w.combine_flags_offset, u64::from(s.ranks) * 8),
            ];
            for pair in regions.windows(2) {
                let ((a, a_len), (b, _)) = (pair[0], pair[1]);
                assert!(
                    a + a_len <= b,
                    "{}: region at {a} overlaps the next at {b}",
                    s.name
                );
            }
            for (offset, _) in regions {
                assert_eq!(offset % 256, 0, "{}: offset {offset}", s.name);
            }
            let (last, last_len) = regions[regions.len() - 1];
            assert!(last + last_len <= w.half_bytes);
            assert_eq!(w.half_bytes % 4096, 0);
            assert_eq!(w.payload_bytes % 16, 0, "rows copy as 16-byte vectors");
            assert_eq!(w.half(1), w.half_bytes);
            assert_eq!(w.half(2), 0);
        }
    }

    #[test]
    fn fp8_rows_stage_codes_then_scales() {
        let w = Window::of(&spec("dispatch_dtype: fp8_e4m3\n"));
        assert_eq!((w.payload_bytes, w.scale_count), (7168, 56));
        assert_eq!(w.staged_scales_offset, 7168);
        assert_eq!(w.staged_bytes, 7168 + 224);
        assert_eq!(Window::of(&spec("")).staged_bytes, 0);
    }
}
