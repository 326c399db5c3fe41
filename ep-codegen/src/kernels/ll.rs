//! Low-latency dispatch and combine: the symmetric window layout and the two kernel families.
//!
//! Each rank owns one window, split in two halves used by alternate calls (epoch parity), so two
//! calls can be in flight. Senders write straight into the receivers' halves, so the receive
//! tensors are views of the window and nothing is copied twice. A half holds, in order:
//! - `recv_x [L][R*M][payload]`, `recv_scales [L][R*M][H/128]` (FP8 only) and
//!   `recv_src [L][R*M]` (int: source `s * M + t`): dispatch's outputs;
//! - `y [L][R*M][H]`: the experts' outputs, which combine reads from the peers (pull);
//! - `counter [L]`: rows reserved so far per local expert (senders add with system atomics,
//!   the receive resets it);
//! - `range [L][R]` (int2: first row, rows) written by each sender;
//! - dispatch flags `[L][R]` (u64: epoch << 32 | rows), one per (local expert, source), raised
//!   by the source's block that owns the expert once it has reserved the rows;
//! - dispatch done counters `[L][R]` (int), across GPUs: 256-channel chunks of rows landed, one
//!   added per chunk by the source's warps (the receive waits for rows x chunks per row, then
//!   resets it). On one GPU they stay 0: the rows' readers are later launches, which see them;
//! - combine flags `[R]` (u64: epoch << 32 | 1), one per peer.
//!
//! Which half a call uses is a property of the call (its [`CallLayout`] state says so to the
//! kernels), not of its epoch, so the views a caller holds into a call's half keep their
//! addresses across CUDA-graph replays.
//!
//! Every entry point takes one parameter, `LaunchArgs` by value (`__grid_constant__`): the
//! timeout and, per rank of the launch (grid.y), a [`RANK_ARGS_BYTES`]-byte `RankArgs` with the
//! caller's tensors, the rank's workspace, window half, peer table and this call's state. A
//! launch covers at most [`launch_ranks`] ranks: one GPU's rank over NCCL, or a chunk of the
//! virtual ranks of one GPU. Every entry point waits for the kernel before it on the stream
//! before it reads memory (`dependent_launch::begin`), so the runtime may launch it as a
//! programmatic dependent launch, whose blocks start while that kernel ends.

use std::collections::BTreeMap;

use super::{KernelPlan, LaunchShape, Param};
use crate::spec::{Dtype, Spec};

/// Warps per block when `tuning.warps_per_block` is `auto`.
pub const DEFAULT_WARPS: u32 = 16;

const fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Bytes between two of the window's counters that many warps add to at once (the row
/// counters and the done counters): a 32-byte sector each, so that the atomics of one counter
/// do not queue behind another's. (On the H100 with 8 ranks, the done counters of 8 sources
/// shared a sector: Qwen3-235B's dispatch of 16 tokens took 8.7 us in a graph, now 7.6.)
pub const COUNTER_STRIDE: u64 = 32;

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
    /// `recv_src`.
    pub recv_src_offset: u64,
    /// `y`.
    pub y_offset: u64,
    /// `counter`.
    pub counter_offset: u64,
    /// `range`.
    pub range_offset: u64,
    /// Dispatch flags.
    pub dispatch_flags_offset: u64,
    /// Dispatch done counters.
    pub dispatch_done_offset: u64,
    /// Combine flags.
    pub combine_flags_offset: u64,
    /// Bytes of one half.
    pub half_bytes: u64,
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
        let recv_src_offset = align(recv_scales_offset + rows * scale_count * 4, 256);
        let y_offset = align(recv_src_offset + rows * 4, 256);
        let counter_offset = align(
            y_offset + rows * h * u64::from(spec.combine_dtype.size()),
            256,
        );
        let range_offset = align(counter_offset + l * COUNTER_STRIDE, 256);
        let dispatch_flags_offset = align(range_offset + l * r * 8, 256);
        let dispatch_done_offset = align(dispatch_flags_offset + l * r * 8, 256);
        let combine_flags_offset = align(dispatch_done_offset + l * r * COUNTER_STRIDE, 256);
        let half_bytes = align(combine_flags_offset + r * 8, 4096);
        Window {
            payload_bytes,
            scale_count,
            rows_per_expert: r * m,
            recv_x_offset,
            recv_scales_offset,
            recv_src_offset,
            y_offset,
            counter_offset,
            range_offset,
            dispatch_flags_offset,
            dispatch_done_offset,
            combine_flags_offset,
            half_bytes,
        }
    }

    /// Bytes of the whole window (two halves).
    pub fn bytes(&self) -> u64 {
        2 * self.half_bytes
    }

    /// Offset of half `half` (0 or 1).
    pub fn half(&self, half: u32) -> u64 {
        u64::from(half & 1) * self.half_bytes
    }
}

/// One call's state on one rank, outside the window (the caller never reads it): the call's
/// epoch and token count, the rows received per local expert, and where each of the rank's
/// selections landed (expert, row), which combine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLayout {
    /// `u32`: the epoch the call's send took (0 before any send).
    pub epoch_offset: u64,
    /// `i32`: the tokens the send covered.
    pub tokens_offset: u64,
    /// `recv_count [L]` (`i32`).
    pub recv_count_offset: u64,
    /// `dispatch_row [M, K]` (`int2`: global expert and row there, `-1` for none).
    pub dispatch_row_offset: u64,
    /// Bytes per rank.
    pub bytes: u64,
}

impl CallLayout {
    /// The layout for a spec.
    pub fn of(spec: &Spec) -> CallLayout {
        let (l, m, k) = (
            u64::from(spec.local_experts()),
            u64::from(spec.max_tokens_per_rank),
            u64::from(spec.top_k),
        );
        let recv_count_offset = 16;
        let dispatch_row_offset = align(recv_count_offset + 4 * l, 16);
        CallLayout {
            epoch_offset: 0,
            tokens_offset: 4,
            recv_count_offset,
            dispatch_row_offset,
            bytes: align(dispatch_row_offset + 8 * m * k, 256),
        }
    }
}

/// Bytes of one rank's entry of `LaunchArgs` (7 pointers, then rank, tokens, half, padding).
pub const RANK_ARGS_BYTES: usize = 72;

/// The most ranks one launch covers. `LaunchArgs` is passed by value: 8 + 64 x 72 = 4616 bytes
/// at most, within the 32 KiB kernel parameters of CUDA >= 12.1. Virtual ranks beyond 64 take
/// several launches per phase (sends are independent; every send precedes every receive).
pub const MAX_LAUNCH_RANKS: u32 = 64;

/// Ranks per launch for a spec: `min(R, MAX_LAUNCH_RANKS)`.
pub fn launch_ranks(spec: &Spec) -> u32 {
    spec.ranks.min(MAX_LAUNCH_RANKS)
}

/// Bytes of the `LaunchArgs` parameter: the timeout, then [`launch_ranks`] rank entries.
pub fn launch_args_bytes(spec: &Spec) -> usize {
    8 + launch_ranks(spec) as usize * RANK_ARGS_BYTES
}

/// Error words per rank (see [`error_code`] for what they hold).
pub const ERROR_WORDS: u32 = 8;

/// Ints of per-rank workspace: the last epoch, the send's done counter, [`ERROR_WORDS`] error
/// words, then each selection's row `[M * K]` (u64: epoch << 32 | row + 1, 0 for none; the
/// owner of its expert writes it, the warps that copy the token read it).
pub fn workspace_ints(spec: &Spec) -> u32 {
    2 + ERROR_WORDS + 2 * spec.max_tokens_per_rank * spec.top_k
}

/// Index of the error words inside a rank's workspace.
pub const ERRORS_OFFSET: u32 = 2;

/// Error codes the kernels write into `errors[0]` (the first error of a rank wins); `errors[1]`
/// holds its detail. Bad expert ids also keep, whatever came first: `errors[2]` how many slots
/// were bad, `errors[3]` = `i32::MAX - (first bad token * K + slot)`, and `errors[4..6]` the id
/// found there (low, high 32 bits).
pub mod error_code {
    /// A dispatch flag did not arrive in time; detail = source rank.
    pub const DISPATCH_TIMEOUT: i32 = 1;
    /// A combine flag did not arrive in time; detail = expert rank.
    pub const COMBINE_TIMEOUT: i32 = 2;
    /// An expert id outside [-1, E); detail = token * K + slot.
    pub const BAD_EXPERT: i32 = 3;
    /// A receive region overflowed (a previous call was never received); detail = expert.
    pub const OVERFLOW: i32 = 4;
    /// A selection's row, reserved by the block that owns its expert (block 0 of the rank),
    /// did not reach the warps that copy the token in time; detail = rank.
    pub const ROW_TIMEOUT: i32 = 5;
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
    let c = CallLayout::of(spec);
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
        ("recv_src_offset", as_i64(w.recv_src_offset)),
        ("y_offset", as_i64(w.y_offset)),
        ("counter_offset", as_i64(w.counter_offset)),
        ("range_offset", as_i64(w.range_offset)),
        ("dispatch_flags_offset", as_i64(w.dispatch_flags_offset)),
        ("dispatch_done_offset", as_i64(w.dispatch_done_offset)),
        ("counter_stride", as_i64(COUNTER_STRIDE / 4)),
        ("combine_flags_offset", as_i64(w.combine_flags_offset)),
        ("half_bytes", as_i64(w.half_bytes)),
        ("workspace_ints", i64::from(workspace_ints(spec))),
        ("error_words", i64::from(ERROR_WORDS)),
        ("launch_ranks", i64::from(launch_ranks(spec))),
        ("rank_args_bytes", RANK_ARGS_BYTES as i64),
        ("call_epoch_offset", as_i64(c.epoch_offset)),
        ("call_tokens_offset", as_i64(c.tokens_offset)),
        ("call_recv_count_offset", as_i64(c.recv_count_offset)),
        ("call_dispatch_row_offset", as_i64(c.dispatch_row_offset)),
    ]);
    let index_ctype = super::index_ctype(spec);
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

/// The one parameter of every LL entry point.
fn args_param(entry: &str) -> Param {
    Param {
        entry: entry.to_owned(),
        name: "args",
        ctype: "const __grid_constant__ ll::LaunchArgs".into(),
        shape: "by value: timeout_ns, then per rank of the launch (grid.y) x [T, H], topk_idx \
                [T, K], topk_weights [T, K], out [T, H], call state, workspace, peers \
                [R], rank, tokens, half, one_gpu"
            .into(),
    }
}

/// A plan of the LL family `name` (`ll_dispatch`, `ll_combine`) with three entries: send and
/// receive (two launches, for a caller that runs work between them: the hook), and both in one
/// launch (`epc_{name}`).
fn plan(spec: &Spec, name: &'static str, template: &'static str, title: String) -> KernelPlan {
    let (constants, strings, flags, threads) = common(spec);
    let send = format!("epc_{name}_send");
    let recv = format!("epc_{name}_recv");
    let fused = format!("epc_{name}");
    let params = vec![args_param(&send), args_param(&recv), args_param(&fused)];
    KernelPlan {
        name,
        title,
        template,
        entries: vec![
            ("entry_send", send),
            ("entry_recv", recv),
            ("entry_fused", fused),
        ],
        constants,
        strings,
        flags,
        launch: LaunchShape {
            block_threads: threads,
            tokens_per_block: 0,
            shared_mem_bytes: 0,
            // A block waits only for lower-numbered blocks of its rank and for other ranks'
            // flags (see the templates' headers): no co-residency needed.
            cooperative: false,
        },
        params,
    }
}

/// The dispatch kernels (send, then receive).
pub fn dispatch_plan(spec: &Spec) -> KernelPlan {
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
    plan(spec, "ll_dispatch", "ll_dispatch.cu", title)
}

/// The combine kernels (send, then receive).
pub fn combine_plan(spec: &Spec) -> KernelPlan {
    let title = format!(
        "Low-latency combine: H={} {}, E={} over R={} ranks, top-{}, M={}.",
        spec.hidden,
        spec.combine_dtype.as_str(),
        spec.experts,
        spec.ranks,
        spec.top_k,
        spec.max_tokens_per_rank
    );
    plan(spec, "ll_combine", "ll_combine.cu", title)
}

/// Empty kernels with the LL kernels' parameter and block size (`ll_empty.cu`), for
/// `epc bench`: not one of a call's kernels. A call's four launches made with them, on the same
/// grids, are the launch floor under each phase.
pub fn empty_plan(spec: &Spec) -> KernelPlan {
    let title = format!(
        "Empty kernels shaped like the low-latency ones (a benchmark's launch floor): R={} ranks.",
        spec.ranks
    );
    plan(spec, "ll_empty", "ll_empty.cu", title)
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
                (w.recv_src_offset, rows * 4),
                (w.y_offset, rows * u64::from(s.hidden) * 2),
                (
                    w.counter_offset,
                    u64::from(s.local_experts()) * COUNTER_STRIDE,
                ),
                (w.range_offset, u64::from(s.local_experts() * s.ranks) * 8),
                (
                    w.dispatch_flags_offset,
                    u64::from(s.local_experts() * s.ranks) * 8,
                ),
                (
                    w.dispatch_done_offset,
                    u64::from(s.local_experts() * s.ranks) * COUNTER_STRIDE,
                ),
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
            assert_eq!(w.half(0), 0);
            let c = CallLayout::of(&s);
            assert!(c.recv_count_offset >= c.tokens_offset + 4);
            assert!(
                c.dispatch_row_offset >= c.recv_count_offset + 4 * u64::from(s.local_experts())
            );
            assert_eq!(c.dispatch_row_offset % 8, 0, "int2 rows");
            let rows = u64::from(s.max_tokens_per_rank * s.top_k);
            assert!(c.dispatch_row_offset + 8 * rows <= c.bytes);
        }
    }

    #[test]
    fn fp8_rows_carry_one_scale_per_128_channels() {
        let w = Window::of(&spec("dispatch_dtype: fp8_e4m3\n"));
        assert_eq!((w.payload_bytes, w.scale_count), (7168, 56));
        assert_eq!(Window::of(&spec("")).scale_count, 0);
    }
}
