//! High-throughput mode: the notify kernels (the first phase of a call) and the window region
//! they exchange counts through.
//!
//! After the layout kernel has counted, on each rank s, its tokens per destination rank
//! (`num_tokens_per_rank [R]`) and its slots per expert (`num_tokens_per_expert [E]`), notify
//! gives every rank the whole `[R][R + E]` matrix of those counts: the send writes rank s's row
//! into slot s of every peer's window and raises its flag there; the receive waits for the R
//! flags of its own window and derives, on the device, everything a rank needs to place its rows
//! at their final place in the receivers' buffers and to size its own:
//! - `send_offset [R]`: the first row of rank s's tokens on each destination d,
//!   `sum over s' < s of tokens(s' -> d)` (flat layout, rows in (s, t) order);
//! - `recv_rows`: rows rank d receives (flat), checked against `max_recv_tokens_per_rank`;
//! - `recv_tokens_per_expert [L]`: slots naming each local expert (`num_recv_tokens_per_expert`);
//! - `group_offset [L + 1]`: the first row of each local expert's group in expert-major layout,
//!   groups padded to `expert_alignment` (the last entry is the rows used);
//! - `send_expert_offset [E]`: the first row of rank s's slots in each expert's group on the
//!   expert's rank (expert-major, (s, t, k) order).
//!
//! The flags carry the call's epoch (the send advances a per-rank epoch word), so no cleaning
//! pass is needed between calls. Send and receive are separate launches, like every phase that
//! waits on peers, so virtual ranks beyond one launch never wait on a later launch.

use std::collections::BTreeMap;

use super::ht_domains::DomainStaging;
use super::ll::launch_ranks;
use super::{KernelPlan, LaunchShape, Param};
use crate::spec::{Layout, Spec};

/// Bytes of one rank's entry of notify's `LaunchArgs` (6 pointers, the rank, padding).
pub const NOTIFY_ARGS_BYTES: usize = 56;

/// Threads per block of the notify kernels (one block per rank).
pub const NOTIFY_THREADS: u32 = 256;

/// Where notify's counts and flags sit in a rank's high-throughput window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyWindow {
    /// `counts [R][R + E]` (`i32`): slot s holds rank s's row.
    pub counts_offset: u64,
    /// `flags [R]` (`u64`: epoch << 32 | 1): slot s is raised by rank s.
    pub flags_offset: u64,
    /// Bytes of the region.
    pub bytes: u64,
}

impl NotifyWindow {
    /// The region for a spec.
    pub fn of(spec: &Spec) -> NotifyWindow {
        let (r, e) = (u64::from(spec.ranks), u64::from(spec.experts));
        let flags_offset = (r * (r + e) * 4).div_ceil(256) * 256;
        NotifyWindow {
            counts_offset: 0,
            flags_offset,
            bytes: (flags_offset + r * 8).div_ceil(4096) * 4096,
        }
    }
}

/// Ints of one rank's notify outputs: `send_offset [R]`, `recv_rows`,
/// `recv_tokens_per_expert [L]`, `group_offset [L + 1]`, `send_expert_offset [E]`.
pub fn notify_output_ints(spec: &Spec) -> u32 {
    spec.ranks + 1 + spec.local_experts() + spec.local_experts() + 1 + spec.experts
}

/// Index of each output inside a rank's notify outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyOutputs {
    /// `send_offset [R]`.
    pub send_offset: u32,
    /// `recv_rows`.
    pub recv_rows: u32,
    /// `recv_tokens_per_expert [L]`.
    pub recv_tokens_per_expert: u32,
    /// `group_offset [L + 1]`.
    pub group_offset: u32,
    /// `send_expert_offset [E]`.
    pub send_expert_offset: u32,
}

impl NotifyOutputs {
    /// The indices for a spec.
    pub fn of(spec: &Spec) -> NotifyOutputs {
        let (r, l) = (spec.ranks, spec.local_experts());
        NotifyOutputs {
            send_offset: 0,
            recv_rows: r,
            recv_tokens_per_expert: r + 1,
            group_offset: r + 1 + l,
            send_expert_offset: r + 2 + 2 * l,
        }
    }
}

/// Status words of a rank (`status [6]`, zeroed by the caller before the first call and after
/// reading an error), shared by notify, dispatch and combine; the first error stays:
/// `status[0]` is 0, or [`NOTIFY_TIMEOUT`] (`status[1]` = the rank whose flag never came), or
/// [`NOTIFY_OVERFLOW`] (`status[1]` = the rows that would arrive), or [`NOTIFY_BAD_EXPERT`]
/// (`status[1]` = `t * K + k` of the first slot whose id is outside `[-1, E)`, `status[2]` =
/// how many, `status[3..5]` = the id's low and high 32 bits).
pub const NOTIFY_STATUS_WORDS: u32 = 6;
/// A peer's counts did not arrive within the timeout.
pub const NOTIFY_TIMEOUT: i32 = 1;
/// More rows would arrive than `max_recv_tokens_per_rank` holds.
pub const NOTIFY_OVERFLOW: i32 = 2;
/// An expert id outside `[-1, E)` (the layout kernel counted it; nothing was sent for it).
pub const NOTIFY_BAD_EXPERT: i32 = 3;

/// The notify kernels (send, then receive).
pub fn notify_plan(spec: &Spec) -> KernelPlan {
    let ht = spec.high_throughput;
    let capacity = ht.map_or(0, |h| h.max_recv_tokens_per_rank);
    let alignment = ht.map_or(1, |h| h.expert_alignment.max(1));
    let expert_major = ht.is_some_and(|h| h.layout == Layout::ExpertMajor);
    let window = NotifyWindow::of(spec);
    let outputs = NotifyOutputs::of(spec);
    let constants = BTreeMap::from([
        ("ranks", i64::from(spec.ranks)),
        ("experts", i64::from(spec.experts)),
        ("local_experts", i64::from(spec.local_experts())),
        ("capacity", i64::from(capacity)),
        ("alignment", i64::from(alignment)),
        ("threads", i64::from(NOTIFY_THREADS)),
        ("launch_ranks", i64::from(launch_ranks(spec))),
        ("notify_args_bytes", NOTIFY_ARGS_BYTES as i64),
        ("flags_offset", window.flags_offset as i64),
        ("out_send_offset", i64::from(outputs.send_offset)),
        ("out_recv_rows", i64::from(outputs.recv_rows)),
        (
            "out_recv_tokens_per_expert",
            i64::from(outputs.recv_tokens_per_expert),
        ),
        ("out_group_offset", i64::from(outputs.group_offset)),
        (
            "out_send_expert_offset",
            i64::from(outputs.send_expert_offset),
        ),
        ("status_timeout", i64::from(NOTIFY_TIMEOUT)),
        ("status_overflow", i64::from(NOTIFY_OVERFLOW)),
        ("status_bad_expert", i64::from(NOTIFY_BAD_EXPERT)),
    ]);
    let index_ctype = super::index_ctype(spec);
    let param = |entry: &str| Param {
        entry: entry.into(),
        name: "args",
        ctype: "const __grid_constant__ ht_notify::LaunchArgs".into(),
        shape: "timeout, then per rank of the launch (grid.y): layout counters [R + E + 2], \
                outputs, status [6], epoch word, peer table, topk_idx [T, K], rank"
            .into(),
    };
    KernelPlan {
        name: "ht_notify",
        title: format!(
            "High-throughput notify: counts of E={} experts over R={} ranks, capacity {capacity} \
             rows{}.",
            spec.experts,
            spec.ranks,
            if expert_major {
                format!(", expert groups aligned to {alignment}")
            } else {
                String::new()
            }
        ),
        template: "ht_notify.cu",
        entries: vec![
            ("send_entry", "epc_ht_notify_send".to_owned()),
            ("recv_entry", "epc_ht_notify_recv".to_owned()),
        ],
        constants,
        strings: BTreeMap::from([("index_ctype", index_ctype.to_owned())]),
        flags: BTreeMap::from([("expert_major", expert_major)]),
        launch: LaunchShape {
            block_threads: NOTIFY_THREADS,
            tokens_per_block: 0,
            shared_mem_bytes: 8 * spec.experts + 16,
            cooperative: false,
        },
        params: vec![param("epc_ht_notify_send"), param("epc_ht_notify_recv")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        Spec::from_yaml(
            &format!(
                "name: n\nmode: high_throughput\nhidden: 4096\nexperts: 256\ntop_k: 8\nranks: 8\n\
                 max_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n{extra}"
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_window_holds_the_matrix_then_the_flags() {
        let w = NotifyWindow::of(&spec(""));
        assert_eq!(w.counts_offset, 0);
        assert!(w.flags_offset >= 8 * (8 + 256) * 4);
        assert_eq!(w.flags_offset % 256, 0);
        assert!(w.flags_offset + 8 * 8 <= w.bytes);
        assert_eq!(w.bytes % 4096, 0);
    }

    #[test]
    fn outputs_follow_one_another() {
        let s = spec("");
        let o = NotifyOutputs::of(&s);
        assert_eq!(o.recv_rows, 8);
        assert_eq!(o.recv_tokens_per_expert, 9);
        assert_eq!(o.group_offset, 9 + 32);
        assert_eq!(o.send_expert_offset, 9 + 32 + 33);
        assert_eq!(notify_output_ints(&s), o.send_expert_offset + 256);
    }
}

/// Most blocks per rank of the dispatch send (each covers a contiguous chunk of the rank's tokens
/// and raises its own flag in every receiver's window; the runtime launches as many as fill the
/// GPU, and each flag says how many there are).
pub const MAX_DISPATCH_BLOCKS: u32 = 1024;

/// Threads per block of the dispatch and combine kernels.
pub const DATA_THREADS: u32 = 256;

/// 256-channel chunks a warp of the dispatch send quantizes at a time (`kFp8Batch`).
pub const FP8_BATCH: u32 = 4;

/// Bytes of one rank's entry of dispatch's and combine's `LaunchArgs` (10 pointers, the rank,
/// the tokens).
pub const HT_ARGS_BYTES: usize = 88;

/// Byte offsets of a rank's high-throughput window: notify's region, then the receive buffer of
/// `max_recv_tokens_per_rank` rows (C) and the flags of dispatch and combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtWindow {
    /// Notify's counts and flags, first.
    pub notify: NotifyWindow,
    /// Bytes of one row's payload (H x dispatch dtype size).
    pub payload_bytes: u64,
    /// FP8 block scales per row (H / block), 0 without FP8.
    pub scale_count: u64,
    /// Rows C.
    pub rows: u64,
    /// `recv_x [C][payload]`.
    pub recv_x_offset: u64,
    /// `recv_scales [C][H / block]` (`f32`, FP8 only; empty otherwise).
    pub recv_scales_offset: u64,
    /// `recv_topk_idx [C][K]` (the index dtype): local expert ids, `-1` elsewhere.
    pub recv_topk_idx_offset: u64,
    /// `recv_topk_w [C][K]` (`f32`).
    pub recv_topk_w_offset: u64,
    /// `recv_src [C]` (`i32`: `s * M + t`).
    pub recv_src_offset: u64,
    /// `y [C][H]`: what the rank returns for each row, which combine pulls.
    pub y_offset: u64,
    /// Dispatch flags `[R][MAX_DISPATCH_BLOCKS]` (`u64`: epoch << 32 | the sender's blocks), one
    /// per sender block.
    pub dispatch_flags_offset: u64,
    /// Combine flags `[R]` (`u64`): rank d's `y` is ready.
    pub combine_flags_offset: u64,
    /// The hierarchical path's staging regions (G < R), after the flags.
    pub staging: Option<DomainStaging>,
    /// Bytes of the window.
    pub bytes: u64,
}

impl HtWindow {
    /// The layout for a spec.
    pub fn of(spec: &Spec) -> HtWindow {
        let align = |v: u64, to: u64| v.div_ceil(to) * to;
        let (h, k, r) = (
            u64::from(spec.hidden),
            u64::from(spec.top_k),
            u64::from(spec.ranks),
        );
        let rows = spec
            .high_throughput
            .map_or(0, |ht| u64::from(ht.max_recv_tokens_per_rank));
        let notify = NotifyWindow::of(spec);
        let payload_bytes = h * u64::from(spec.dispatch_dtype.size());
        let scale_count = spec.fp8.map_or(0, |f| h / u64::from(f.block));
        let recv_x_offset = align(notify.bytes, 256);
        let recv_scales_offset = align(recv_x_offset + rows * payload_bytes, 256);
        let recv_topk_idx_offset = align(recv_scales_offset + rows * scale_count * 4, 256);
        let recv_topk_w_offset = align(
            recv_topk_idx_offset + rows * k * u64::from(spec.index_dtype.size()),
            256,
        );
        let recv_src_offset = align(recv_topk_w_offset + rows * k * 4, 256);
        let y_offset = align(recv_src_offset + rows * 4, 256);
        let dispatch_flags_offset = align(
            y_offset + rows * h * u64::from(spec.combine_dtype.size()),
            256,
        );
        let combine_flags_offset = align(
            dispatch_flags_offset + r * u64::from(MAX_DISPATCH_BLOCKS) * 8,
            256,
        );
        let staging = DomainStaging::of(spec, combine_flags_offset + r * 8);
        HtWindow {
            notify,
            payload_bytes,
            scale_count,
            rows,
            recv_x_offset,
            recv_scales_offset,
            recv_topk_idx_offset,
            recv_topk_w_offset,
            recv_src_offset,
            y_offset,
            dispatch_flags_offset,
            combine_flags_offset,
            staging,
            bytes: align(
                staging.map_or(combine_flags_offset + r * 8, |s| s.end),
                4096,
            ),
        }
    }
}

/// Whether a spec takes the hierarchical path (G < R): dispatch has a forward kernel and combine
/// a reduce kernel between send and receive.
pub fn hierarchical(spec: &Spec) -> bool {
    DomainStaging::of(spec, 0).is_some()
}

/// Where a token's rows go, per token: one per destination rank in the flat layout (`R`), one
/// per slot in the expert-major layout (`K`). The `positions [M][destinations]` map the dispatch
/// send fills (each row's place on its destination, `-1` for none) has this width, and combine
/// reads it back.
pub fn destinations(spec: &Spec) -> u32 {
    match spec.high_throughput.map(|h| h.layout) {
        Some(Layout::ExpertMajor) => spec.top_k,
        _ => spec.ranks,
    }
}

/// A template's constants, strings and flags.
type Context = (
    BTreeMap<&'static str, i64>,
    BTreeMap<&'static str, String>,
    BTreeMap<&'static str, bool>,
);

/// Constants, strings and flags shared by the dispatch and combine templates.
fn data_context(spec: &Spec) -> Context {
    let w = HtWindow::of(spec);
    let o = NotifyOutputs::of(spec);
    let expert_major = spec
        .high_throughput
        .is_some_and(|h| h.layout == Layout::ExpertMajor);
    let index_ctype = super::index_ctype(spec);
    let constants = BTreeMap::from([
        ("hidden", i64::from(spec.hidden)),
        ("top_k", i64::from(spec.top_k)),
        ("experts", i64::from(spec.experts)),
        ("ranks", i64::from(spec.ranks)),
        ("nvlink_domain", i64::from(spec.nvlink_domain)),
        ("local_experts", i64::from(spec.local_experts())),
        ("max_tokens", i64::from(spec.max_tokens_per_rank)),
        ("capacity", w.rows as i64),
        ("threads", i64::from(DATA_THREADS)),
        ("max_send_blocks", i64::from(MAX_DISPATCH_BLOCKS)),
        ("launch_ranks", i64::from(launch_ranks(spec))),
        ("ht_args_bytes", HT_ARGS_BYTES as i64),
        ("destinations", i64::from(destinations(spec))),
        ("fp8_batch", i64::from(FP8_BATCH)),
        (
            "alignment",
            i64::from(
                spec.high_throughput
                    .map_or(1, |h| h.expert_alignment.max(1)),
            ),
        ),
        ("payload_bytes", w.payload_bytes as i64),
        ("scale_count", w.scale_count as i64),
        ("recv_x_offset", w.recv_x_offset as i64),
        ("recv_scales_offset", w.recv_scales_offset as i64),
        ("recv_topk_idx_offset", w.recv_topk_idx_offset as i64),
        ("recv_topk_w_offset", w.recv_topk_w_offset as i64),
        ("recv_src_offset", w.recv_src_offset as i64),
        ("y_offset", w.y_offset as i64),
        ("dispatch_flags_offset", w.dispatch_flags_offset as i64),
        ("combine_flags_offset", w.combine_flags_offset as i64),
        (
            "out_recv_tokens_per_expert",
            i64::from(o.recv_tokens_per_expert),
        ),
        ("out_group_offset", i64::from(o.group_offset)),
        ("out_send_expert_offset", i64::from(o.send_expert_offset)),
        ("status_timeout", i64::from(NOTIFY_TIMEOUT)),
        ("status_overflow", i64::from(NOTIFY_OVERFLOW)),
    ]);
    let mut constants = constants;
    if let Some(staging) = w.staging {
        constants.extend(staging.constants());
    }
    let strings = BTreeMap::from([("index_ctype", index_ctype.to_owned())]);
    let flags = BTreeMap::from([
        ("act_is_bf16", spec.dtype == crate::spec::Dtype::Bf16),
        ("fp8", spec.fp8.is_some()),
        (
            "ue8m0",
            spec.fp8
                .is_some_and(|f| f.scale == crate::spec::ScaleFormat::Ue8m0),
        ),
        ("expert_major", expert_major),
        ("hierarchical", w.staging.is_some()),
    ]);
    (constants, strings, flags)
}

/// A data plan: send and receive entries, and with G < R the `middle` one between them
/// (dispatch: `forward`, combine: `reduce`).
fn data_plan(
    spec: &Spec,
    name: &'static str,
    template: &'static str,
    middle: &'static str,
    title: String,
) -> KernelPlan {
    let (constants, strings, flags) = data_context(spec);
    let send = format!("epc_{name}_send");
    let recv = format!("epc_{name}_recv");
    let mut entries = vec![("send_entry", send.clone())];
    if hierarchical(spec) {
        let key = if middle == "forward" {
            "forward_entry"
        } else {
            "reduce_entry"
        };
        entries.push((key, format!("epc_{name}_{middle}")));
    }
    entries.push(("recv_entry", recv));
    let param = |entry: &str| Param {
        entry: entry.into(),
        name: "args",
        ctype: format!("const __grid_constant__ {name}::LaunchArgs"),
        shape: "timeout, then per rank of the launch (grid.y): x [T, H], topk_idx [T, K], \
                topk_weights [T, K], is_token_in_rank [T, R], notify's outputs, positions \
                [M, R] (flat) or [M, K] (expert-major), out [T, H], epoch, status [6], peer \
                table, rank, T"
            .into(),
    };
    let params = entries.iter().map(|(_, entry)| param(entry)).collect();
    KernelPlan {
        name,
        title,
        template,
        entries,
        constants,
        strings,
        flags,
        launch: LaunchShape {
            block_threads: DATA_THREADS,
            tokens_per_block: 0,
            shared_mem_bytes: 4 * spec.ranks.max(spec.experts),
            cooperative: false,
        },
        params,
    }
}

/// Ints of the send's placement table: one row of counters per key (rank, or expert in
/// expert-major layout) for the rows before a block's chunk, and one per placing warp.
const PLACEMENT_INTS: u32 = 8192;

/// Warps of a send block that place its chunk's rows (a slice each), and the keys they count
/// by: as many warps as the block has while `(warps + 1) * keys` ints fit the table.
fn placement(spec: &Spec) -> (u32, u32) {
    let keys = match spec.high_throughput.map(|h| h.layout) {
        Some(Layout::ExpertMajor) => spec.experts,
        _ => spec.ranks,
    };
    let warps = (PLACEMENT_INTS / keys.max(1))
        .saturating_sub(1)
        .clamp(1, DATA_THREADS / 32);
    (warps, keys)
}

/// The dispatch kernels (send, then receive).
pub fn dispatch_plan(spec: &Spec) -> KernelPlan {
    let title = format!(
        "High-throughput dispatch ({}): H={} {}, E={} over R={} ranks, top-{}, M={}, C={}.",
        layout_name(spec),
        spec.hidden,
        spec.dispatch_dtype.as_str(),
        spec.experts,
        spec.ranks,
        spec.top_k,
        spec.max_tokens_per_rank,
        HtWindow::of(spec).rows
    );
    let mut plan = data_plan(spec, "ht_dispatch", "ht_dispatch.cu", "forward", title);
    let (warps, keys) = placement(spec);
    plan.constants.insert("place_warps", i64::from(warps));
    plan.launch.shared_mem_bytes = 4 * (warps + 1) * keys;
    if spec.fp8.is_some() {
        // Each warp quantizes FP8_BATCH chunks of 256 channels into shared memory (codes and
        // their scales) before copying them out.
        plan.launch.shared_mem_bytes += (DATA_THREADS / 32) * (256 + 2 * 4) * FP8_BATCH;
    }
    plan
}

/// The dispatch's row copies alone (`ht_fanout.cu`), for `epc bench`: not one of a call's
/// kernels. Each token's row is read once and stored to every row the last dispatch gave it,
/// with the send's blocks and copy loop and nothing else, on the dispatch's launch arguments:
/// the floor the dispatch's bookkeeping adds to.
pub fn fanout_plan(spec: &Spec) -> KernelPlan {
    let mut plan = dispatch_plan(spec);
    plan.name = "ht_fanout";
    plan.template = "ht_fanout.cu";
    plan.title = format!(
        "The row copies of the high-throughput dispatch alone (a benchmark's floor): H={} {}, R={} ranks.",
        spec.hidden,
        spec.dispatch_dtype.as_str(),
        spec.ranks
    );
    plan.entries = vec![("fanout_entry", "epc_ht_fanout".to_owned())];
    plan.params.truncate(1);
    for p in &mut plan.params {
        p.entry = "epc_ht_fanout".to_owned();
        p.ctype = "const __grid_constant__ ht_fanout::LaunchArgs".to_owned();
    }
    plan
}

/// The combine kernels (send: `y` ready; receive: the pull).
pub fn combine_plan(spec: &Spec) -> KernelPlan {
    let title = format!(
        "High-throughput combine ({}): H={} {}, R={} ranks in domains of {}, M={}.",
        layout_name(spec),
        spec.hidden,
        spec.combine_dtype.as_str(),
        spec.ranks,
        spec.nvlink_domain,
        spec.max_tokens_per_rank
    );
    let mut plan = data_plan(spec, "ht_combine", "ht_combine.cu", "reduce", title);
    // Combine moves 16-bit rows only: no FP8 conversions in its source.
    plan.flags.insert("fp8", false);
    plan.flags.insert("ue8m0", false);
    plan
}

fn layout_name(spec: &Spec) -> &'static str {
    match spec.high_throughput.map(|h| h.layout) {
        Some(Layout::ExpertMajor) => "expert-major",
        _ => "flat",
    }
}
