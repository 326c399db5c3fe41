//! The routing-layout kernel: per-rank and per-expert token counts and the token-to-rank map.

use std::collections::BTreeMap;

use super::{KernelPlan, LaunchShape, Param};
use crate::spec::{IndexDtype, Spec};

/// Warps per block when `tuning.warps_per_block` is `auto`: one token per thread, and 256 threads
/// keep the per-block shared histograms few while filling the SMs from a few thousand tokens.
pub const DEFAULT_WARPS: u32 = 8;

/// Plans the layout kernel of a spec.
pub fn plan(spec: &Spec) -> KernelPlan {
    let threads = 32 * spec.tuning.warps_per_block.unwrap_or(DEFAULT_WARPS);
    let index_ctype = super::index_ctype(spec);
    let index_type = match spec.index_dtype {
        IndexDtype::I32 => "int32",
        IndexDtype::I64 => "int64",
    };
    let constants = BTreeMap::from([
        ("experts", i64::from(spec.experts)),
        ("ranks", i64::from(spec.ranks)),
        ("top_k", i64::from(spec.top_k)),
        ("local_experts", i64::from(spec.local_experts())),
        ("threads", i64::from(threads)),
    ]);
    let strings = BTreeMap::from([
        ("index_ctype", index_ctype.to_owned()),
        ("index_type", index_type.to_owned()),
    ]);
    KernelPlan {
        name: "layout",
        title: format!(
            "Routing layout for E={} experts, R={} ranks, top-{}.",
            spec.experts, spec.ranks, spec.top_k
        ),
        template: "layout.cu",
        entries: vec![("entry", "epc_layout".to_owned())],
        constants,
        strings,
        flags: BTreeMap::new(),
        launch: LaunchShape {
            block_threads: threads,
            tokens_per_block: threads,
            shared_mem_bytes: 4 * (spec.ranks + spec.experts),
            cooperative: false,
        },
        params: vec![
            Param {
                entry: "epc_layout".into(),
                name: "topk_idx",
                ctype: format!("const {index_ctype}*"),
                shape: "[T, K]".into(),
            },
            Param {
                entry: "epc_layout".into(),
                name: "num_tokens",
                ctype: "int".into(),
                shape: "scalar T <= M".into(),
            },
            Param {
                entry: "epc_layout".into(),
                name: "counters",
                ctype: "int*".into(),
                shape: "[R + E + 2], zeroed by the caller".into(),
            },
            Param {
                entry: "epc_layout".into(),
                name: "is_token_in_rank",
                ctype: "bool*".into(),
                shape: "[T, R]".into(),
            },
        ],
    }
}
