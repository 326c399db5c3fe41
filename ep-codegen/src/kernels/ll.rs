//! Low-latency dispatch and combine: the symmetric window layout and the two kernel families.
//!
//! Each rank owns one window, split in two halves used by alternate calls (epoch parity), so two
//! calls can be in flight. A half holds, in order:
//! - the dispatch receive area `[L][R][M]` of messages (payload, FP8 scales, then 16 bytes of
//!   metadata: source token and slot);
//! - dispatch flags `[L][R]` (u64: epoch << 32 | row count), one per (local expert, source rank);
//! - the combine receive area `[K][M][H]` of 16-bit rows, indexed by (slot, token);
//! - combine flags `[R]` (u64: epoch << 32 | 1), one per sending rank.

use std::collections::BTreeMap;

use super::{KernelPlan, LaunchShape, Param};
use crate::spec::{Dtype, IndexDtype, Spec};

/// Warps per block when `tuning.warps_per_block` is `auto`.
pub const DEFAULT_WARPS: u32 = 16;
/// Bytes of message metadata (source token, slot, padding to 16).
pub const META_BYTES: u64 = 16;

const fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Byte offsets of everything in one rank's low-latency window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Bytes of one row's payload (H x dispatch dtype size).
    pub payload_bytes: u64,
    /// FP8 block scales per row (H / 128), 0 without FP8.
    pub scale_count: u64,
    /// Offset of the scales inside a message.
    pub scale_offset: u64,
    /// Offset of the metadata inside a message.
    pub meta_offset: u64,
    /// Bytes of one message.
    pub msg_bytes: u64,
    /// Offset of the dispatch flags inside a half.
    pub dispatch_flags_offset: u64,
    /// Offset of the combine receive area inside a half.
    pub combine_recv_offset: u64,
    /// Offset of the combine flags inside a half.
    pub combine_flags_offset: u64,
    /// Bytes of one half.
    pub half_bytes: u64,
}

impl Window {
    /// The layout for a spec.
    pub fn of(spec: &Spec) -> Window {
        let (h, k, r, m, l) = (
            u64::from(spec.hidden),
            u64::from(spec.top_k),
            u64::from(spec.ranks),
            u64::from(spec.max_tokens_per_rank),
            u64::from(spec.local_experts()),
        );
        let payload_bytes = h * u64::from(spec.dispatch_dtype.size());
        let scale_count = spec.fp8.map_or(0, |f| h / u64::from(f.block));
        let scale_offset = align(payload_bytes, 16);
        let meta_offset = scale_offset + align(scale_count * 4, 16);
        let msg_bytes = meta_offset + META_BYTES;
        let dispatch_flags_offset = align(l * r * m * msg_bytes, 256);
        let combine_recv_offset = align(dispatch_flags_offset + l * r * 8, 256);
        let combine_flags_offset = align(
            combine_recv_offset + k * m * h * u64::from(spec.combine_dtype.size()),
            256,
        );
        let half_bytes = align(combine_flags_offset + r * 8, 4096);
        Window {
            payload_bytes,
            scale_count,
            scale_offset,
            meta_offset,
            msg_bytes,
            dispatch_flags_offset,
            combine_recv_offset,
            combine_flags_offset,
            half_bytes,
        }
    }

    /// Bytes of the whole window (two halves).
    pub fn bytes(&self) -> u64 {
        2 * self.half_bytes
    }
}

/// Ints of per-rank workspace: send counters `[E]`, two done counters, four error words.
pub fn workspace_ints(spec: &Spec) -> u32 {
    spec.experts + 2 + 4
}

/// Index of the error words inside a rank's workspace.
pub fn errors_offset(spec: &Spec) -> u32 {
    spec.experts + 2
}

/// Error codes the kernels write into `errors[0]` (the first error of a rank wins).
pub mod error_code {
    /// A dispatch flag did not arrive in time; detail = source rank.
    pub const DISPATCH_TIMEOUT: i32 = 1;
    /// A combine flag did not arrive in time; detail = sending rank.
    pub const COMBINE_TIMEOUT: i32 = 2;
    /// An expert id outside [-1, E); detail = token * K + slot.
    pub const BAD_EXPERT: i32 = 3;
    /// A row count above M arrived (a corrupted window); detail = source rank.
    pub const BAD_COUNT: i32 = 4;
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
        ("scale_offset", as_i64(w.scale_offset)),
        ("meta_offset", as_i64(w.meta_offset)),
        ("msg_bytes", as_i64(w.msg_bytes)),
        ("half_bytes", as_i64(w.half_bytes)),
        ("dispatch_flags_offset", as_i64(w.dispatch_flags_offset)),
        ("combine_recv_offset", as_i64(w.combine_recv_offset)),
        ("combine_flags_offset", as_i64(w.combine_flags_offset)),
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

fn param(name: &'static str, ctype: &str, shape: &str) -> Param {
    Param {
        name,
        ctype: ctype.into(),
        shape: shape.into(),
    }
}

/// The dispatch kernels (send, then receive).
pub fn dispatch_plan(spec: &Spec) -> KernelPlan {
    let (constants, strings, flags, threads) = common(spec);
    let mut params = vec![
        param(
            "x",
            "const unsigned short*",
            "[G, M, H] (G = ranks in the launch)",
        ),
        param("topk_idx", "const index_t*", "[G, M, K]"),
        param("num_tokens", "const int*", "[G]"),
        param("workspace", "int*", "[G, E + 6]"),
        param("peers", "char* const*", "[R] window bases"),
        param("rank_base", "int", "scalar: rank of grid.y = 0"),
        param("epoch", "unsigned", "scalar: call number, from 1"),
    ];
    params.extend([
        param("timeout_ns", "unsigned long long", "scalar (receive)"),
        param("recv_x", "unsigned char*", "[G, L, R*M, payload]"),
    ]);
    if spec.fp8.is_some() {
        params.push(param("recv_scales", "float*", "[G, L, R*M, H/128]"));
    }
    params.extend([
        param("recv_count", "int*", "[G, L], zeroed by the caller"),
        param("recv_src", "int*", "[G, L, R*M]: s * M + t"),
        param("recv_range", "int*", "[G, L, R, 2]: (offset, count)"),
        param("recv_slot", "int*", "[G, L, R*M]: k"),
    ]);
    KernelPlan {
        name: "ll_dispatch",
        title: format!(
            "Low-latency dispatch: H={} {} -> {}, E={} over R={} ranks, top-{}, M={}.",
            spec.hidden,
            spec.dtype.as_str(),
            spec.dispatch_dtype.as_str(),
            spec.experts,
            spec.ranks,
            spec.top_k,
            spec.max_tokens_per_rank
        ),
        template: "ll_dispatch.cu",
        entries: vec![
            ("entry_send", "epc_ll_dispatch_send".into()),
            ("entry_recv", "epc_ll_dispatch_recv".into()),
        ],
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

/// The combine kernels (send, then receive).
pub fn combine_plan(spec: &Spec) -> KernelPlan {
    let (constants, strings, flags, threads) = common(spec);
    let params = vec![
        param("y", "const unsigned short*", "[G, L, R*M, H]"),
        param("recv_count", "const int*", "[G, L] (from dispatch)"),
        param("recv_src", "const int*", "[G, L, R*M] (from dispatch)"),
        param("recv_slot", "const int*", "[G, L, R*M] (from dispatch)"),
        param("workspace", "int*", "[G, E + 6]"),
        param("peers", "char* const*", "[R] window bases"),
        param("rank_base", "int", "scalar"),
        param("epoch", "unsigned", "scalar"),
        param("topk_idx", "const index_t*", "[G, M, K] (receive)"),
        param("topk_weights", "const float*", "[G, M, K] (receive)"),
        param("num_tokens", "const int*", "[G] (receive)"),
        param("out", "unsigned short*", "[G, M, H] (receive)"),
        param("timeout_ns", "unsigned long long", "scalar (receive)"),
    ];
    KernelPlan {
        name: "ll_combine",
        title: format!(
            "Low-latency combine: H={} {}, E={} over R={} ranks, top-{}, M={}.",
            spec.hidden,
            spec.combine_dtype.as_str(),
            spec.experts,
            spec.ranks,
            spec.top_k,
            spec.max_tokens_per_rank
        ),
        template: "ll_combine.cu",
        entries: vec![
            ("entry_send", "epc_ll_combine_send".into()),
            ("entry_recv", "epc_ll_combine_recv".into()),
        ],
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
