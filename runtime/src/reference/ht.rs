//! Reference of high-throughput dispatch and combine (DESIGN.md "Semantics").
//!
//! Dispatch, `flat` layout: receiving rank d holds one row per (s, t) with at least one expert on
//! d (deduplicated per rank, not per expert), in (s ascending, t ascending) order, with the
//! token's slots rewritten to local expert ids (`-1` for slots elsewhere) and their weights (`0`
//! where `-1`). Dispatch, `expert_major` layout: one row per (s, t, k) whose expert is on d,
//! grouped by local expert, in (s, t, k) order inside a group, each group padded with zero rows
//! to a multiple of `expert_alignment`. Payloads are encoded as in low-latency mode (the
//! activation bits, or FP8 codes and block scales, [`super::ll::encode_row`]).
//!
//! Combine, `flat`: the ranks that received (s, t) each return one row, already weighted and
//! reduced over their own experts. They are summed by NVLink domain: inside a domain in rank
//! order with f32 accumulation, the domain's partial sum rounded to the activation dtype (what
//! crosses between domains), then the partials in domain order, in f32, rounded once more. With
//! one domain (G == R) this is the plain sum in rank order rounded once. Combine,
//! `expert_major`: weighted over k as low-latency combine ([`super::ll::combine`]), summed by
//! domain the same way when G < R.
//!
//! Slots whose id lies outside `[-1, E)` are skipped, as the layout kernel skips them.

use ep_codegen::{Layout, Spec};

use super::ll::{RankInput, encode_row};
use super::values::{from_f32, to_f32};
use crate::routing::Routing;

/// One row of a flat receive buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatRow {
    /// Source rank s.
    pub src_rank: usize,
    /// Source token t.
    pub token: usize,
    /// Payload bytes (H x 2 for 16-bit payloads, H for FP8).
    pub payload: Vec<u8>,
    /// FP8 block scales; empty otherwise.
    pub scales: Vec<f32>,
    /// `recv_topk_idx` `[K]`: the local expert id of each slot on this rank, else `-1`.
    pub topk_idx: Vec<i64>,
    /// `recv_topk_w` `[K]`: the slot's weight where `topk_idx >= 0`, else `0`.
    pub topk_w: Vec<f32>,
}

/// What one rank receives in `flat` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatReceive {
    /// Rows in (source rank, token) order.
    pub rows: Vec<FlatRow>,
    /// `num_recv_tokens_per_expert [L]`: rows naming each local expert.
    pub tokens_per_expert: Vec<usize>,
}

impl FlatReceive {
    /// Each row's `recv_src` (`src_rank * M + token`, M = `max_tokens_per_rank`).
    pub fn sources(&self, max_tokens_per_rank: usize) -> Vec<i32> {
        self.rows
            .iter()
            .map(|r| (r.src_rank * max_tokens_per_rank + r.token) as i32)
            .collect()
    }
}

/// One row of an expert-major receive buffer (padding rows are not listed: they are zero).
#[derive(Debug, Clone, PartialEq)]
pub struct MajorRow {
    /// Source rank s.
    pub src_rank: usize,
    /// Source token t.
    pub token: usize,
    /// The slot k that chose this expert.
    pub slot: usize,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// FP8 block scales; empty otherwise.
    pub scales: Vec<f32>,
}

/// What one rank receives in `expert_major` layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertMajorReceive {
    /// Per local expert, its rows in (source rank, token, slot) order.
    pub groups: Vec<Vec<MajorRow>>,
    /// Per local expert, the first row of its group; `offsets[L]` is the rows used, padding
    /// included. Every offset is a multiple of `expert_alignment`.
    pub offsets: Vec<usize>,
}

/// A receive buffer too small for what a rank is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// The receiving rank.
    pub rank: usize,
    /// Rows it would hold (padding included).
    pub rows: usize,
    /// `max_recv_tokens_per_rank`.
    pub capacity: usize,
}

/// The expert of slot `k` of token `t`, when it is a valid id (`None` for `-1` and bad ids).
fn valid_expert(routing: &Routing, t: usize, k: usize, experts: usize) -> Option<usize> {
    let e = routing.expert(t, k);
    (e >= 0 && (e as u64) < experts as u64).then_some(e as usize)
}

fn capacity(spec: &Spec) -> usize {
    spec.high_throughput()
        .map_or(0, |h| h.max_recv_tokens_per_rank as usize)
}

/// Every rank's flat receive, or the first rank whose buffer overflows.
pub fn dispatch_flat(spec: &Spec, inputs: &[RankInput]) -> Result<Vec<FlatReceive>, Overflow> {
    let d = spec.dims();
    let mut out: Vec<FlatReceive> = (0..d.ranks)
        .map(|_| FlatReceive {
            rows: Vec::new(),
            tokens_per_expert: vec![0; d.local],
        })
        .collect();
    for (s, input) in inputs.iter().enumerate() {
        let r = &input.routing;
        for t in 0..r.num_tokens {
            let mut encoded = None;
            for (rank, receive) in out.iter_mut().enumerate() {
                let mut topk_idx = vec![-1i64; r.top_k];
                let mut topk_w = vec![0f32; r.top_k];
                let mut here = false;
                for k in 0..r.top_k {
                    if let Some(e) = valid_expert(r, t, k, d.experts)
                        && e / d.local == rank
                    {
                        topk_idx[k] = (e % d.local) as i64;
                        topk_w[k] = r.topk_weights[t * r.top_k + k];
                        receive.tokens_per_expert[e % d.local] += 1;
                        here = true;
                    }
                }
                if here {
                    let (payload, scales) = encoded
                        .get_or_insert_with(|| {
                            encode_row(spec, &input.x[t * d.hidden..(t + 1) * d.hidden])
                        })
                        .clone();
                    receive.rows.push(FlatRow {
                        src_rank: s,
                        token: t,
                        payload,
                        scales,
                        topk_idx,
                        topk_w,
                    });
                }
            }
        }
    }
    let cap = capacity(spec);
    match out.iter().enumerate().find(|(_, r)| r.rows.len() > cap) {
        Some((rank, r)) => Err(Overflow {
            rank,
            rows: r.rows.len(),
            capacity: cap,
        }),
        None => Ok(out),
    }
}

/// Every rank's expert-major receive, or the first rank whose buffer overflows.
pub fn dispatch_expert_major(
    spec: &Spec,
    inputs: &[RankInput],
) -> Result<Vec<ExpertMajorReceive>, Overflow> {
    let d = spec.dims();
    let align = spec
        .high_throughput()
        .map_or(1, |h| h.expert_alignment.max(1) as usize);
    let mut groups: Vec<Vec<Vec<MajorRow>>> = vec![vec![Vec::new(); d.local]; d.ranks];
    for (s, input) in inputs.iter().enumerate() {
        let r = &input.routing;
        for t in 0..r.num_tokens {
            let mut encoded = None;
            for k in 0..r.top_k {
                let Some(e) = valid_expert(r, t, k, d.experts) else {
                    continue;
                };
                let (payload, scales) = encoded
                    .get_or_insert_with(|| {
                        encode_row(spec, &input.x[t * d.hidden..(t + 1) * d.hidden])
                    })
                    .clone();
                groups[e / d.local][e % d.local].push(MajorRow {
                    src_rank: s,
                    token: t,
                    slot: k,
                    payload,
                    scales,
                });
            }
        }
    }
    let cap = capacity(spec);
    let mut out = Vec::with_capacity(d.ranks);
    for (rank, groups) in groups.into_iter().enumerate() {
        let mut offsets = Vec::with_capacity(d.local + 1);
        let mut next = 0;
        for g in &groups {
            offsets.push(next);
            next += g.len().div_ceil(align) * align;
        }
        offsets.push(next);
        if next > cap {
            return Err(Overflow {
                rank,
                rows: next,
                capacity: cap,
            });
        }
        out.push(ExpertMajorReceive { groups, offsets });
    }
    Ok(out)
}

/// The ranks that receive token `t` of `routing` (each once, ascending).
pub fn receivers(spec: &Spec, routing: &Routing, t: usize) -> Vec<usize> {
    let d = spec.dims();
    let mut ranks: Vec<usize> = (0..routing.top_k)
        .filter_map(|k| valid_expert(routing, t, k, d.experts).map(|e| e / d.local))
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    ranks
}

/// Flat combine of one source rank: `y(d, t)` is the row rank d returns for token t (asked
/// only of the ranks that received it). Summed by NVLink domain, see the module docs.
pub fn combine_flat<'a>(
    spec: &Spec,
    routing: &Routing,
    y: impl Fn(usize, usize) -> &'a [u16],
) -> Vec<u16> {
    let hidden = spec.hidden() as usize;
    let domain = spec.nvlink_domain().max(1) as usize;
    let dtype = spec.combine_dtype();
    let mut out = vec![0u16; routing.num_tokens * hidden];
    let mut total = vec![0f32; hidden];
    let mut partial = vec![0f32; hidden];
    for t in 0..routing.num_tokens {
        total.fill(0.0);
        let ranks = receivers(spec, routing, t);
        for in_domain in ranks.chunk_by(|a, b| a / domain == b / domain) {
            partial.fill(0.0);
            for &d in in_domain {
                for (p, &v) in partial.iter_mut().zip(y(d, t)) {
                    *p += to_f32(v, dtype);
                }
            }
            for (acc, &p) in total.iter_mut().zip(&partial) {
                *acc += to_f32(from_f32(p, dtype), dtype);
            }
        }
        for (o, &a) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(&total) {
            *o = from_f32(a, dtype);
        }
    }
    out
}

/// Combine of one source rank in the spec's layout: flat as [`combine_flat`] (`y(d, t, k)` is
/// then asked with `k = 0`), expert-major weighted over k as low-latency combine
/// ([`super::ll::combine`]: f32 fused multiply-adds in k order), where `y(d, t, k)` is the row
/// of slot k on the rank `d` that holds its expert, asked only of valid slots. Expert-major
/// with several NVLink domains sums by domain as flat does: each domain's slots (in k order)
/// into a partial rounded to the activation dtype, the partials in domain order; with one
/// domain that is the plain chain rounded once.
pub fn combine<'a>(
    spec: &Spec,
    routing: &Routing,
    y: impl Fn(usize, usize, usize) -> &'a [u16],
) -> Vec<u16> {
    let d = spec.dims();
    match spec.high_throughput().map(|h| h.layout) {
        Some(Layout::ExpertMajor) => {
            let dtype = spec.combine_dtype();
            let domain = spec.nvlink_domain().max(1) as usize;
            let mut out = vec![0u16; routing.num_tokens * d.hidden];
            let (mut total, mut partial) = (vec![0f32; d.hidden], vec![0f32; d.hidden]);
            for t in 0..routing.num_tokens {
                total.fill(0.0);
                for dd in 0..d.ranks.div_ceil(domain) {
                    partial.fill(0.0);
                    let mut any = false;
                    for k in 0..routing.top_k {
                        let Some(e) = valid_expert(routing, t, k, d.experts) else {
                            continue;
                        };
                        if e / d.local / domain != dd {
                            continue;
                        }
                        any = true;
                        let w = routing.topk_weights[t * routing.top_k + k];
                        for (a, &v) in partial.iter_mut().zip(y(e / d.local, t, k)) {
                            *a = w.mul_add(to_f32(v, dtype), *a);
                        }
                    }
                    if any {
                        for (acc, &p) in total.iter_mut().zip(&partial) {
                            *acc += to_f32(from_f32(p, dtype), dtype);
                        }
                    }
                }
                for (o, &a) in out[t * d.hidden..(t + 1) * d.hidden].iter_mut().zip(&total) {
                    *o = from_f32(a, dtype);
                }
            }
            out
        }
        _ => combine_flat(spec, routing, |d, t| y(d, t, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ll::random_activations;
    use crate::routing::{Pattern, generate};
    use ep_codegen::Dtype;

    fn spec(extra: &str) -> Spec {
        let yaml = format!(
            "name: t\nmode: high_throughput\nhidden: 256\nexperts: 16\ntop_k: 4\nranks: 4\n\
             max_tokens_per_rank: 64\n{extra}"
        );
        Spec::from_yaml(&yaml, None).unwrap()
    }

    fn inputs(s: &Spec, pattern: Pattern, tokens: usize) -> Vec<RankInput> {
        (0..s.ranks() as u64)
            .map(|r| RankInput {
                routing: generate(pattern, tokens, 4, 16, 4, r + 7),
                x: random_activations(s, tokens, r),
            })
            .collect()
    }

    fn routing(rows: &[&[i64]]) -> Routing {
        Routing {
            num_tokens: rows.len(),
            top_k: rows[0].len(),
            topk_idx: rows.iter().flat_map(|r| r.iter().copied()).collect(),
            topk_weights: (0..rows.len() * rows[0].len())
                .map(|i| i as f32 + 0.5)
                .collect(),
        }
    }

    #[test]
    fn flat_rows_are_deduplicated_per_rank_in_source_token_order() {
        let s = spec("max_recv_tokens_per_rank: 256\n");
        let mut ins = inputs(&s, Pattern::Uniform, 3);
        // Rank 0's token 0 picks experts 0, 1 (rank 0), 5 (rank 1) and a -1.
        ins[0].routing.topk_idx[..4].copy_from_slice(&[1, -1, 5, 0]);
        let got = dispatch_flat(&s, &ins).unwrap();
        let first = &got[0].rows[0];
        assert_eq!((first.src_rank, first.token), (0, 0));
        assert_eq!(first.topk_idx, [1, -1, -1, 0]);
        let w = &ins[0].routing.topk_weights;
        assert_eq!(first.topk_w, [w[0], 0.0, 0.0, w[3]]);
        assert_eq!(got[1].rows[0].topk_idx, [-1, -1, 1, -1]);
        for r in &got {
            let order: Vec<(usize, usize)> = r.rows.iter().map(|w| (w.src_rank, w.token)).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(order, sorted, "ordered by (s, t), each once");
            let named: usize = r
                .rows
                .iter()
                .map(|w| w.topk_idx.iter().filter(|&&l| l >= 0).count())
                .sum();
            assert_eq!(named, r.tokens_per_expert.iter().sum::<usize>());
        }
    }

    #[test]
    fn expert_major_groups_are_padded_and_ordered() {
        let s = spec("max_recv_tokens_per_rank: 1024\nlayout: expert_major\nexpert_alignment: 8\n");
        let ins = inputs(&s, Pattern::Hot, 40);
        let got = dispatch_expert_major(&s, &ins).unwrap();
        let mut rows = 0;
        for r in &got {
            for (l, g) in r.groups.iter().enumerate() {
                assert_eq!(r.offsets[l] % 8, 0);
                assert!(r.offsets[l + 1] - r.offsets[l] >= g.len());
                assert!(r.offsets[l + 1] - r.offsets[l] < g.len() + 8);
                let keys: Vec<_> = g.iter().map(|w| (w.src_rank, w.token, w.slot)).collect();
                assert!(keys.windows(2).all(|p| p[0] < p[1]));
                rows += g.len();
            }
        }
        let selections: usize = ins
            .iter()
            .map(|i| i.routing.topk_idx.iter().filter(|&&e| e >= 0).count())
            .sum();
        assert_eq!(rows, selections);
    }

    #[test]
    fn overflow_names_the_rank() {
        let s = spec("max_recv_tokens_per_rank: 8\n");
        let ins = inputs(&s, Pattern::Uniform, 64);
        let e = dispatch_flat(&s, &ins).unwrap_err();
        assert_eq!(e.capacity, 8);
        assert_eq!(e.rank, 0);
        assert!(e.rows > 8);
    }

    #[test]
    fn bad_ids_are_skipped() {
        let s = spec("max_recv_tokens_per_rank: 256\n");
        let mut ins = inputs(&s, Pattern::Uniform, 2);
        ins[2].routing.topk_idx[..4].copy_from_slice(&[99, -7, 3, -1]);
        let got = dispatch_flat(&s, &ins).unwrap();
        let row = got[0]
            .rows
            .iter()
            .find(|w| (w.src_rank, w.token) == (2, 0))
            .unwrap();
        assert_eq!(row.topk_idx, [-1, -1, 3, -1]);
        assert!(
            got[1..]
                .iter()
                .all(|r| !r.rows.iter().any(|w| (w.src_rank, w.token) == (2, 0)))
        );
    }

    #[test]
    fn flat_combine_sums_in_rank_order_within_one_domain() {
        let s = spec("max_recv_tokens_per_rank: 256\n");
        // Experts 0, 4, 8 and 12 live on ranks 0..3.
        let r = routing(&[&[12, 0, 8, -1]]);
        let rows: Vec<Vec<u16>> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .map(|v| vec![from_f32(*v + 1.0 / 512.0, Dtype::Bf16); 256])
            .collect();
        let out = combine_flat(&s, &r, |d, _| &rows[d]);
        let mut acc = 0f32;
        for d in [0, 2, 3] {
            acc += to_f32(rows[d][0], Dtype::Bf16);
        }
        assert_eq!(out[0], from_f32(acc, Dtype::Bf16));
    }

    #[test]
    fn flat_combine_rounds_each_domains_partial() {
        // R = 4 in domains of 2: {0, 1} and {2, 3}.
        let s = spec("max_recv_tokens_per_rank: 256\nnvlink_domain: 2\n");
        let r = routing(&[&[0, 4, 8, 12]]);
        let v = [1.0f32, 3.0 / 256.0, 3.0 / 256.0, 3.0 / 256.0];
        let rows: Vec<Vec<u16>> = v
            .iter()
            .map(|x| vec![from_f32(*x, Dtype::Bf16); 256])
            .collect();
        let out = combine_flat(&s, &r, |d, _| &rows[d]);
        // Domain partials 1 + 3/256 (rounded to 1 + 2/128) and 6/256, then summed: 1.0390625.
        assert_eq!(to_f32(out[0], Dtype::Bf16), 1.0390625);
        // In one domain the four rows are summed in f32 first: 1 + 9/256 rounds to 1.03125.
        let one_domain = spec("max_recv_tokens_per_rank: 256\n");
        let flat = combine_flat(&one_domain, &r, |d, _| &rows[d]);
        assert_eq!(to_f32(flat[0], Dtype::Bf16), 1.03125);
    }

    #[test]
    fn expert_major_combine_is_the_weighted_sum_over_slots() {
        let s = spec("max_recv_tokens_per_rank: 1024\nlayout: expert_major\nexpert_alignment: 4\n");
        let r = routing(&[&[3, -1, 9, 14]]);
        let rows: Vec<Vec<u16>> = (0..4)
            .map(|k| vec![from_f32(k as f32 + 1.0, Dtype::Bf16); 256])
            .collect();
        let out = combine(&s, &r, |_, _, k| &rows[k]);
        let w = &r.topk_weights;
        let mut acc = 0f32;
        for k in [0, 2, 3] {
            acc = w[k].mul_add(k as f32 + 1.0, acc);
        }
        assert_eq!(out[0], from_f32(acc, Dtype::Bf16));
    }
}
