//! What one phase moves, counted every way `epc bench` reports (DESIGN.md "Benchmarks" and "How
//! the anchors count bytes"), from one rank's routing and receive counts.

use ep_codegen::Spec;

use ep_runtime::routing::Routing;

/// One phase's bytes on one rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Unique payload bytes moved: each row once (the first yardstick copies as many).
    pub unique: u64,
    /// HBM bytes the phase minimally reads and writes on one GPU (the same-traffic copy moves
    /// as many, in the same mix).
    pub traffic: u64,
    /// Of those, the bytes written.
    pub written: u64,
    /// NCCL EP's `ep_bench` count (LL only): valid selections x hidden x 2.
    pub nccl_ep: Option<u64>,
    /// DeepEP's count: `test_low_latency` for LL, `test_intranode` for HT.
    pub deepep: u64,
}

impl Counts {
    /// Adds another rank's counts (virtual ranks share one GPU).
    pub fn add(self, o: Counts) -> Counts {
        Counts {
            unique: self.unique + o.unique,
            traffic: self.traffic + o.traffic,
            written: self.written + o.written,
            nccl_ep: self.nccl_ep.zip(o.nccl_ep).map(|(a, b)| a + b),
            deepep: self.deepep + o.deepep,
        }
    }
}

/// Bytes of one dispatched row: the payload in the dispatch dtype, with its FP8 scales.
pub fn sent_row_bytes(spec: &Spec) -> u64 {
    let h = u64::from(spec.hidden());
    let scales = spec.fp8().map_or(0, |f| h / u64::from(f.block) * 4);
    h * u64::from(spec.dispatch_dtype().size()) + scales
}

/// Bytes of one row returned to combine (the combine dtype).
pub fn returned_row_bytes(spec: &Spec) -> u64 {
    u64::from(spec.hidden()) * u64::from(spec.combine_dtype().size())
}

/// Tokens of `routing` with at least one valid slot (the tokens a dispatch must read).
fn tokens_sent(routing: &Routing) -> u64 {
    (0..routing.num_tokens)
        .filter(|&t| (0..routing.top_k).any(|k| routing.expert(t, k) >= 0))
        .count() as u64
}

fn selections(routing: &Routing) -> u64 {
    routing.topk_idx.iter().filter(|&&e| e >= 0).count() as u64
}

/// LL dispatch of one rank's `routing`: one row per valid selection, in the dispatch dtype with
/// its scales; the source tokens are read once (their K copies come from L2).
pub fn ll_dispatch(spec: &Spec, routing: &Routing) -> Counts {
    let h = u64::from(spec.hidden());
    let s = selections(routing);
    let row = sent_row_bytes(spec);
    Counts {
        unique: s * row,
        traffic: tokens_sent(routing) * h * u64::from(spec.dtype().size()) + s * row,
        written: s * row,
        nccl_ep: Some(s * h * 2),
        // DeepEP charges every dispatched row at FP8 size with its scales and 16 bytes of
        // metadata.
        deepep: s * (h + h / 128 * 4 + 16),
    }
}

/// LL combine of one rank's `routing`: every received row read once, each output written once.
pub fn ll_combine(spec: &Spec, routing: &Routing) -> Counts {
    let h = u64::from(spec.hidden());
    let s = selections(routing);
    let row = returned_row_bytes(spec);
    Counts {
        unique: s * row,
        traffic: s * row + routing.num_tokens as u64 * h * u64::from(spec.dtype().size()),
        written: routing.num_tokens as u64 * h * u64::from(spec.dtype().size()),
        nccl_ep: Some(s * h * 2),
        deepep: s * h * 2,
    }
}

/// HT dispatch on one rank that sends `routing`'s tokens and fills `recv_rows` rows (expert-major:
/// padding rows included, which the dispatch zeroes): each source token read once, each row
/// written in the dispatch dtype with its scales, slots, weights and source.
pub fn ht_dispatch(spec: &Spec, routing: &Routing, recv_rows: u64) -> Counts {
    let h = u64::from(spec.hidden());
    let k = u64::from(spec.top_k());
    let act = u64::from(spec.dtype().size());
    let row = sent_row_bytes(spec);
    let meta = k * (u64::from(spec.index_dtype().size()) + 4) + 4;
    Counts {
        unique: recv_rows * row,
        traffic: tokens_sent(routing) * h * act + recv_rows * (row + meta),
        written: recv_rows * (row + meta),
        nccl_ep: None,
        // DeepEP's test_intranode charges BF16 rows, FP8 ones at (1 + 4 / 128) / 2 of that.
        deepep: recv_rows * (h * 2).min(row),
    }
}

/// HT combine on one rank that returns `recv_rows` rows (without padding) and gets `routing`'s
/// tokens back: every returned row read once, each output written once.
pub fn ht_combine(spec: &Spec, routing: &Routing, recv_rows: u64) -> Counts {
    let h = u64::from(spec.hidden());
    let act = u64::from(spec.dtype().size());
    Counts {
        unique: recv_rows * h * act,
        traffic: recv_rows * h * act + routing.num_tokens as u64 * h * act,
        written: routing.num_tokens as u64 * h * act,
        nccl_ep: None,
        deepep: recv_rows * h * 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_extra: &str, mode: &str) -> Spec {
        let yaml = format!(
            "name: b\nmode: {mode}\nhidden: 1024\nexperts: 16\ntop_k: 2\nranks: 2\n\
             max_tokens_per_rank: 8\n{yaml_extra}"
        );
        Spec::from_yaml(&yaml, None).unwrap()
    }

    fn routing() -> Routing {
        // Token 0: experts 1 and 9; token 1: expert 3 and a dropped slot; token 2: nothing.
        Routing {
            num_tokens: 3,
            top_k: 2,
            topk_idx: vec![1, 9, 3, -1, -1, -1],
            topk_weights: vec![0.5; 6],
        }
    }

    #[test]
    fn ll_counts_follow_each_rule() {
        let bf16 = spec("", "low_latency");
        let d = ll_dispatch(&bf16, &routing());
        assert_eq!(d.unique, 3 * 2048);
        assert_eq!(
            d.traffic,
            2 * 2048 + 3 * 2048,
            "two tokens read, three rows written"
        );
        assert_eq!(d.nccl_ep, Some(3 * 2048));
        assert_eq!(d.deepep, 3 * (1024 + 32 + 16));
        let fp8 = spec("dispatch_dtype: fp8_e4m3\n", "low_latency");
        let d = ll_dispatch(&fp8, &routing());
        assert_eq!(d.unique, 3 * (1024 + 1024 / 128 * 4));
        assert_eq!(
            d.nccl_ep,
            Some(3 * 2048),
            "NCCL EP counts bf16 whatever is sent"
        );
        let c = ll_combine(&bf16, &routing());
        assert_eq!(c.unique, 3 * 2048);
        assert_eq!(
            c.traffic,
            3 * 2048 + 3 * 2048,
            "every output written, even token 2's"
        );
    }

    #[test]
    fn ht_counts_follow_each_rule() {
        let ht = spec("max_recv_tokens_per_rank: 16\n", "high_throughput");
        let d = ht_dispatch(&ht, &routing(), 5);
        assert_eq!(d.unique, 5 * 2048);
        assert_eq!(d.traffic, 2 * 2048 + 5 * (2048 + 2 * (8 + 4) + 4));
        assert_eq!(
            d.written,
            5 * (2048 + 2 * (8 + 4) + 4),
            "the rows, not the sources"
        );
        assert_eq!(d.nccl_ep, None);
        assert_eq!(d.deepep, 5 * 2048);
        let fp8 = spec(
            "max_recv_tokens_per_rank: 16\ndispatch_dtype: fp8_e4m3\n",
            "high_throughput",
        );
        let d = ht_dispatch(&fp8, &routing(), 5);
        assert_eq!(d.unique, 5 * (1024 + 32));
        assert_eq!(d.traffic, 2 * 2048 + 5 * (1024 + 32 + 2 * (8 + 4) + 4));
        assert_eq!(d.deepep, 5 * 1024 * 2 * (128 + 4) / 128 / 2);
        let c = ht_combine(&ht, &routing(), 5);
        assert_eq!(c.traffic, 5 * 2048 + 3 * 2048);
        assert_eq!(c.written, 3 * 2048, "each output once");
        assert_eq!(c.add(c).unique, 2 * 5 * 2048);
    }
}
