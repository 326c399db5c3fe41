//! Kernel families: for each, the knobs chosen in Rust and the context its template renders from.
//!
//! Templates stay thin; every decision (threads, shapes, which kernels a spec needs) lives here.

pub mod ht;
pub mod ht_domains;
pub mod knobs;
pub mod layout;
pub mod ll;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Spec;

/// The C++ type of the spec's expert ids in the generated code (`index_t`).
pub(crate) fn index_ctype(spec: &Spec) -> &'static str {
    match spec.index_dtype {
        crate::spec::IndexDtype::I32 => "epc::i32",
        crate::spec::IndexDtype::I64 => "epc::i64",
    }
}

/// How a kernel is launched; the runtime follows it and `manifest.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchShape {
    /// Threads per block.
    pub block_threads: u32,
    /// Tokens each block covers: grid = ceil(T / tokens_per_block), at least one block; 0 when
    /// the grid does not follow T (the LL kernels: grid.y = ranks, grid.x sized by the runtime
    /// from the GPU's SMs).
    pub tokens_per_block: u32,
    /// Static shared memory per block, in bytes.
    pub shared_mem_bytes: u32,
    /// Whether all blocks must be co-resident (cooperative launch).
    pub cooperative: bool,
}

/// One kernel parameter, documented for `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Param {
    /// The entry point it belongs to.
    pub entry: String,
    /// Name in the generated source.
    pub name: &'static str,
    /// CUDA type.
    pub ctype: String,
    /// Shape in spec symbols (`[T, K]`), or `scalar`.
    pub shape: String,
}

/// What a kernel family needs from the renderer.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    /// Short family name (`layout`): names the file and the cache folder.
    pub name: &'static str,
    /// One-line title for the header comment.
    pub title: String,
    /// Template to render (`layout.cu`).
    pub template: &'static str,
    /// `extern "C"` entry points, in launch order. The template receives each name by its key.
    pub entries: Vec<(&'static str, String)>,
    /// Compile-time constants the template bakes in.
    pub constants: BTreeMap<&'static str, i64>,
    /// Template variables beyond the constants (types, names).
    pub strings: BTreeMap<&'static str, String>,
    /// Switches for `{{#if}}` blocks (always all present: the templates run in strict mode).
    pub flags: BTreeMap<&'static str, bool>,
    /// Launch shape.
    pub launch: LaunchShape,
    /// Parameters, in order.
    pub params: Vec<Param>,
}

/// The kernels a spec needs, in launch order.
pub fn plans(spec: &Spec) -> Vec<KernelPlan> {
    let mut plans = vec![layout::plan(spec)];
    match spec.mode {
        crate::Mode::LowLatency => {
            plans.push(ll::dispatch_plan(spec));
            plans.push(ll::combine_plan(spec));
        }
        crate::Mode::HighThroughput => {
            plans.push(ht::notify_plan(spec));
            plans.push(ht::dispatch_plan(spec));
            plans.push(ht::combine_plan(spec));
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_kernels_and_entries() {
        let ht = Spec::from_yaml(
            "name: ht\nmode: high_throughput\nhidden: 4096\nexperts: 64\ntop_k: 6\nranks: 8\n\
             nvlink_domain: 2\nmax_tokens_per_rank: 4096\nmax_recv_tokens_per_rank: 32768\n",
            None,
        )
        .unwrap();
        // With G < R dispatch forwards and combine reduces between send and receive.
        let entries = |name: &str| -> Vec<String> {
            plans(&ht)
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.entries.iter().map(|(_, e)| e.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            entries("ht_dispatch"),
            [
                "epc_ht_dispatch_send",
                "epc_ht_dispatch_forward",
                "epc_ht_dispatch_recv"
            ]
        );
        assert_eq!(
            entries("ht_combine"),
            [
                "epc_ht_combine_send",
                "epc_ht_combine_reduce",
                "epc_ht_combine_recv"
            ]
        );
        let ll = Spec::from_yaml(
            "name: ll\nmode: low_latency\nhidden: 4096\nexperts: 64\ntop_k: 6\nranks: 8\n\
             max_tokens_per_rank: 128\n",
            None,
        )
        .unwrap();
        assert_eq!(
            plans(&ll).iter().map(|p| p.name).collect::<Vec<_>>(),
            ["layout", "ll_dispatch", "ll_combine"]
        );
    }
}
