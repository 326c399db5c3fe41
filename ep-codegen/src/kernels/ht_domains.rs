//! The hierarchical high-throughput path (G < R ranks per NVLink domain): where its staging
//! regions sit in a rank's window, after the flat window's regions.
//!
//! Dispatch: a token crosses to each other domain it reaches once, to the peer with the sender's
//! local index there (the proxy), as a staged record in the proxy's window: the payload (and FP8
//! scales), the token's expert ids and weights, its source, and its rows on that domain's ranks
//! (flat: one per rank of the domain; expert-major: one per slot), all computed by the sender
//! from notify's offsets. The proxy's forward kernel writes each record's rows straight into
//! its domain's receive buffers, so every rank's buffer is exactly the flat semantics'.
//! Combine: each proxy reduces, for the tokens it forwarded, its domain's rows into one partial
//! (rounded to the activation dtype: what crosses between domains) and writes it into the
//! source rank's window; the source adds the partials of the domains in order to its own
//! domain's. On virtual ranks these regions stand in for the RDMA buffers of a multi-node run.

use crate::spec::{Layout, Spec};

use super::ht::MAX_DISPATCH_BLOCKS;

/// Byte offsets of the staging regions, relative to the window's base (see [`DomainStaging::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainStaging {
    /// Domains D = R / G.
    pub domains: u64,
    /// Rows of a token a record lists: G (flat, one per rank of the domain) or K (expert-major,
    /// one per slot).
    pub record_rows: u64,
    /// `stage_meta [D][M][2 + record_rows]` (`i32`): the call's epoch, the source `s * M + t`,
    /// then the rows (`-1` for none). Slot `[ds][t]` holds token t of the sender of domain ds.
    pub meta_offset: u64,
    /// `stage_idx [D][M][K]` (the index dtype): the token's expert ids.
    pub idx_offset: u64,
    /// `stage_w [D][M][K]` (`f32`).
    pub w_offset: u64,
    /// `stage_x [D][M][payload]`.
    pub x_offset: u64,
    /// `stage_scales [D][M][H / 128]` (`f32`, FP8 only).
    pub scales_offset: u64,
    /// `partial [D][M][H]` (the combine dtype): slot `[dd][t]` holds domain dd's partial sum of
    /// this rank's token t.
    pub partial_offset: u64,
    /// `stage_flags [D][MAX_DISPATCH_BLOCKS]`: the sender of domain ds staged its chunk.
    pub stage_flags_offset: u64,
    /// `forward_flags [G][MAX_DISPATCH_BLOCKS]`: the proxy of local index g forwarded its part.
    pub forward_flags_offset: u64,
    /// `partial_flags [D][MAX_DISPATCH_BLOCKS]`: the proxy in domain dd wrote its partials.
    pub partial_flags_offset: u64,
    /// First byte after the regions.
    pub end: u64,
}

impl DomainStaging {
    /// The regions for a spec, from byte `base` of the window; `None` with one domain (G == R).
    pub fn of(spec: &Spec, base: u64) -> Option<DomainStaging> {
        if spec.nvlink_domain >= spec.ranks || spec.high_throughput.is_none() {
            return None;
        }
        let align = |v: u64, to: u64| v.div_ceil(to) * to;
        let (h, k, m) = (
            u64::from(spec.hidden),
            u64::from(spec.top_k),
            u64::from(spec.max_tokens_per_rank),
        );
        let domains = u64::from(spec.ranks / spec.nvlink_domain.max(1));
        let record_rows = match spec.high_throughput.map(|h| h.layout) {
            Some(Layout::ExpertMajor) => k,
            _ => u64::from(spec.nvlink_domain),
        };
        let slots = domains * m;
        let payload = h * u64::from(spec.dispatch_dtype.size());
        let scales = spec.fp8.map_or(0, |f| h / u64::from(f.block));
        let flags = u64::from(MAX_DISPATCH_BLOCKS) * 8;
        let meta_offset = align(base, 256);
        let idx_offset = align(meta_offset + slots * (2 + record_rows) * 4, 256);
        let w_offset = align(
            idx_offset + slots * k * u64::from(spec.index_dtype.size()),
            256,
        );
        let x_offset = align(w_offset + slots * k * 4, 256);
        let scales_offset = align(x_offset + slots * payload, 256);
        let partial_offset = align(scales_offset + slots * scales * 4, 256);
        let stage_flags_offset = align(
            partial_offset + slots * h * u64::from(spec.combine_dtype.size()),
            256,
        );
        let forward_flags_offset = align(stage_flags_offset + domains * flags, 256);
        let partial_flags_offset = align(
            forward_flags_offset + u64::from(spec.nvlink_domain) * flags,
            256,
        );
        Some(DomainStaging {
            domains,
            record_rows,
            meta_offset,
            idx_offset,
            w_offset,
            x_offset,
            scales_offset,
            partial_offset,
            stage_flags_offset,
            forward_flags_offset,
            partial_flags_offset,
            end: partial_flags_offset + domains * flags,
        })
    }

    /// The template constants of the regions.
    pub fn constants(&self) -> [(&'static str, i64); 11] {
        let c = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        [
            ("domains", c(self.domains)),
            ("record_rows", c(self.record_rows)),
            ("stage_meta_offset", c(self.meta_offset)),
            ("stage_idx_offset", c(self.idx_offset)),
            ("stage_w_offset", c(self.w_offset)),
            ("stage_x_offset", c(self.x_offset)),
            ("stage_scales_offset", c(self.scales_offset)),
            ("partial_offset", c(self.partial_offset)),
            ("stage_flags_offset", c(self.stage_flags_offset)),
            ("forward_flags_offset", c(self.forward_flags_offset)),
            ("partial_flags_offset", c(self.partial_flags_offset)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        Spec::from_yaml(
            &format!(
                "name: n\nmode: high_throughput\nhidden: 1024\nexperts: 64\ntop_k: 8\nranks: 16\n\
                 max_tokens_per_rank: 256\n{extra}"
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn one_domain_needs_no_staging() {
        let s = spec("nvlink_domain: 16\nmax_recv_tokens_per_rank: 4096\n");
        assert_eq!(DomainStaging::of(&s, 0), None);
    }

    #[test]
    fn regions_follow_one_another_without_overlap() {
        let s = spec("nvlink_domain: 8\nmax_recv_tokens_per_rank: 4096\n");
        let d = DomainStaging::of(&s, 1000).unwrap();
        assert_eq!((d.domains, d.record_rows), (2, 8));
        let slots = 2 * 256;
        let regions = [
            (d.meta_offset, slots * (2 + 8) * 4),
            (d.idx_offset, slots * 8 * 8),
            (d.w_offset, slots * 8 * 4),
            (d.x_offset, slots * 1024 * 2),
            (d.scales_offset, 0),
            (d.partial_offset, slots * 1024 * 2),
            (d.stage_flags_offset, 2 * 1024 * 8),
            (d.forward_flags_offset, 8 * 1024 * 8),
            (d.partial_flags_offset, 2 * 1024 * 8),
        ];
        assert!(d.meta_offset >= 1000);
        for w in regions.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?}");
            assert_eq!(w[1].0 % 256, 0);
        }
        assert_eq!(d.end, d.partial_flags_offset + 2 * 1024 * 8);
        let major = spec(
            "nvlink_domain: 4\nmax_recv_tokens_per_rank: 4096\nlayout: expert_major\n\
             expert_alignment: 8\n",
        );
        let d = DomainStaging::of(&major, 0).unwrap();
        assert_eq!((d.domains, d.record_rows), (4, 8));
    }
}
