//! Comparing high-throughput results with the reference: shared by the tests, `epc run` and the
//! main job. [`Expected`] is the reference's receive of every rank in the spec's layout;
//! [`check_dispatch_of`] compares what ranks received with it row by row, and
//! [`check_combine_of`] compares combined outputs with the reference's combine of the rows the
//! ranks returned.

use std::collections::HashMap;

use ep_codegen::{Layout, Spec};

use crate::ht::HtReceived;
use crate::reference::ht::{
    ExpertMajorReceive, FlatReceive, Overflow, combine, dispatch_expert_major, dispatch_flat,
};
use crate::reference::ll::RankInput;

/// What every rank must receive, in the spec's layout.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// One row per (source rank, token) on each rank it reaches.
    Flat(Vec<FlatReceive>),
    /// One row per (source rank, token, slot), grouped by local expert and padded.
    ExpertMajor(Vec<ExpertMajorReceive>),
}

impl Expected {
    /// The reference's dispatch of `inputs` (every rank's) in `spec`'s layout, or the first rank
    /// whose buffer overflows.
    pub fn of(spec: &Spec, inputs: &[RankInput]) -> Result<Expected, Overflow> {
        match spec.high_throughput().map(|h| h.layout) {
            Some(Layout::ExpertMajor) => {
                dispatch_expert_major(spec, inputs).map(Expected::ExpertMajor)
            }
            _ => dispatch_flat(spec, inputs).map(Expected::Flat),
        }
    }

    /// Ranks.
    pub fn ranks(&self) -> usize {
        match self {
            Expected::Flat(w) => w.len(),
            Expected::ExpertMajor(w) => w.len(),
        }
    }

    /// Rows in use on `rank` (padding rows included).
    pub fn rows(&self, rank: usize) -> usize {
        match self {
            Expected::Flat(w) => w[rank].rows.len(),
            Expected::ExpertMajor(w) => w[rank].offsets.last().copied().unwrap_or(0),
        }
    }

    /// Where each (source rank, token, slot) landed on `rank`: the row of each slot of a token
    /// whose expert is there (expert-major), or of the token once, with slot 0 (flat).
    fn placement(&self, rank: usize) -> HashMap<(usize, usize, usize), usize> {
        match self {
            Expected::Flat(w) => w[rank]
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| ((r.src_rank, r.token, 0), i))
                .collect(),
            Expected::ExpertMajor(w) => {
                let w = &w[rank];
                w.groups
                    .iter()
                    .zip(&w.offsets)
                    .flat_map(|(g, &first)| {
                        g.iter()
                            .enumerate()
                            .map(move |(i, r)| ((r.src_rank, r.token, r.slot), first + i))
                    })
                    .collect()
            }
        }
    }
}

/// One expected row in buffer order: source, payload, scales, and the token's slots as local
/// ids on the receiver with their weights (`None` for padding rows).
struct Row<'a> {
    src: Option<(usize, usize)>,
    payload: &'a [u8],
    scales: &'a [f32],
    topk_idx: Vec<i64>,
    topk_w: Vec<f32>,
}

/// Every row `rank` must hold, in buffer order.
fn expected_rows<'a>(
    spec: &Spec,
    want: &'a Expected,
    inputs: &[RankInput],
    rank: usize,
) -> Vec<Row<'a>> {
    let d = spec.dims();
    match want {
        Expected::Flat(w) => w[rank]
            .rows
            .iter()
            .map(|r| Row {
                src: Some((r.src_rank, r.token)),
                payload: &r.payload,
                scales: &r.scales,
                topk_idx: r.topk_idx.clone(),
                topk_w: r.topk_w.clone(),
            })
            .collect(),
        Expected::ExpertMajor(w) => {
            let w = &w[rank];
            let mut rows = Vec::new();
            for (l, g) in w.groups.iter().enumerate() {
                for r in g {
                    let routing = &inputs[r.src_rank].routing;
                    let (topk_idx, topk_w): (Vec<i64>, Vec<f32>) = (0..d.top_k)
                        .map(|k| {
                            let e = routing.expert(r.token, k);
                            if e >= 0 && (e as usize) / d.local == rank && (e as usize) < d.experts
                            {
                                (
                                    (e as usize % d.local) as i64,
                                    routing.topk_weights[r.token * d.top_k + k],
                                )
                            } else {
                                (-1, 0.0)
                            }
                        })
                        .unzip();
                    rows.push(Row {
                        src: Some((r.src_rank, r.token)),
                        payload: &r.payload,
                        scales: &r.scales,
                        topk_idx,
                        topk_w,
                    });
                }
                for _ in g.len()..w.offsets[l + 1] - w.offsets[l] {
                    rows.push(Row {
                        src: None,
                        payload: &[],
                        scales: &[],
                        topk_idx: vec![-1; d.top_k],
                        topk_w: vec![0.0; d.top_k],
                    });
                }
            }
            rows
        }
    }
}

/// Checks every rank's dispatch against the reference's `want`: the row count, the slots per
/// local expert, and each row's source, payload, scales, local expert ids and weights, bit for
/// bit and in order (padding rows zero, with source `-1`).
pub fn check_dispatch(
    spec: &Spec,
    inputs: &[RankInput],
    want: &Expected,
    got: &[HtReceived],
) -> Result<(), String> {
    if got.len() != want.ranks() {
        return Err(format!(
            "{} ranks received, {} expected",
            got.len(),
            want.ranks()
        ));
    }
    let all: Vec<usize> = (0..got.len()).collect();
    check_dispatch_of(spec, inputs, want, &all, got)
}

/// [`check_dispatch`] for the ranks `mine` a process drives (`got[i]` is rank `mine[i]`'s),
/// given every rank's inputs and the reference of every rank (`want`).
pub fn check_dispatch_of(
    spec: &Spec,
    inputs: &[RankInput],
    want: &Expected,
    mine: &[usize],
    got: &[HtReceived],
) -> Result<(), String> {
    let d = spec.dims();
    if got.len() != mine.len() || mine.iter().any(|&r| r >= want.ranks()) {
        return Err(format!(
            "{} results for ranks {mine:?} of {}",
            got.len(),
            want.ranks()
        ));
    }
    let payload = d.hidden * spec.dispatch_dtype().size() as usize;
    let scales = spec.fp8().map_or(0, |f| d.hidden / f.block as usize);
    let zeros = vec![0u8; payload];
    let zero_scales = vec![0f32; scales];
    for (&rank, g) in mine.iter().zip(got) {
        let rows = expected_rows(spec, want, inputs, rank);
        if g.recv_src.len() != rows.len() {
            return Err(format!(
                "rank {rank}: {} rows received, {} expected",
                g.recv_src.len(),
                rows.len()
            ));
        }
        let per_expert: Vec<i32> = match want {
            Expected::Flat(w) => w[rank]
                .tokens_per_expert
                .iter()
                .map(|&n| n as i32)
                .collect(),
            Expected::ExpertMajor(w) => w[rank].groups.iter().map(|g| g.len() as i32).collect(),
        };
        if g.notify.recv_tokens_per_expert != per_expert {
            return Err(format!(
                "rank {rank}: slots per local expert {:?}, expected {per_expert:?}",
                g.notify.recv_tokens_per_expert
            ));
        }
        if let Expected::ExpertMajor(w) = want {
            let offsets: Vec<i32> = w[rank].offsets.iter().map(|&o| o as i32).collect();
            if g.notify.group_offset != offsets {
                return Err(format!(
                    "rank {rank}: group offsets {:?}, expected {offsets:?}",
                    g.notify.group_offset
                ));
            }
        }
        let k = d.top_k;
        for (i, row) in rows.iter().enumerate() {
            let src = row.src.map_or(-1, |(s, t)| (s * d.tokens + t) as i32);
            let (want_payload, want_scales) = match row.src {
                Some(_) => (row.payload, row.scales),
                None => (&zeros[..], &zero_scales[..]),
            };
            let differs = if g.recv_src[i] != src {
                Some("source")
            } else if g.recv_x[i * payload..(i + 1) * payload] != *want_payload {
                Some("payload")
            } else if g.recv_scales[i * scales..(i + 1) * scales]
                .iter()
                .map(|v| v.to_bits())
                .ne(want_scales.iter().map(|v| v.to_bits()))
            {
                Some("scales")
            } else if g.recv_topk_idx[i * k..(i + 1) * k] != row.topk_idx[..] {
                Some("local expert ids")
            } else if g.recv_topk_w[i * k..(i + 1) * k]
                .iter()
                .map(|v| v.to_bits())
                .ne(row.topk_w.iter().map(|v| v.to_bits()))
            {
                Some("weights")
            } else {
                None
            };
            if let Some(what) = differs {
                let whose = match row.src {
                    Some((s, t)) => format!("source rank {s}, token {t}"),
                    None => "padding".to_owned(),
                };
                return Err(format!("rank {rank} row {i} ({whose}): the {what} differ"));
            }
        }
    }
    Ok(())
}

/// Checks every rank's combine `out` against the reference, where `y[d]` is what rank d
/// returned for each row of its buffer (placed as `want` says, which the dispatch check showed).
pub fn check_combine(
    spec: &Spec,
    inputs: &[RankInput],
    want: &Expected,
    y: &[Vec<u16>],
    out: &[Vec<u16>],
) -> Result<(), String> {
    let all: Vec<usize> = (0..inputs.len()).collect();
    check_combine_of(spec, inputs, want, y, &all, out)
}

/// [`check_combine`] for the ranks `mine` a process drives (`out[i]` is rank `mine[i]`'s),
/// given every rank's inputs, the reference's dispatch and every rank's returned rows `y`.
pub fn check_combine_of(
    spec: &Spec,
    inputs: &[RankInput],
    want: &Expected,
    y: &[Vec<u16>],
    mine: &[usize],
    out: &[Vec<u16>],
) -> Result<(), String> {
    let d = spec.dims();
    if out.len() != mine.len() || mine.iter().any(|&r| r >= inputs.len()) {
        return Err(format!(
            "{} outputs for ranks {mine:?} of {}",
            out.len(),
            inputs.len()
        ));
    }
    if y.len() != want.ranks() {
        return Err(format!(
            "{} ranks' rows for {} ranks",
            y.len(),
            want.ranks()
        ));
    }
    let placement: Vec<_> = (0..want.ranks()).map(|r| want.placement(r)).collect();
    let expert_major = matches!(want, Expected::ExpertMajor(_));
    for (&rank, got_out) in mine.iter().zip(out) {
        let input = &inputs[rank];
        let missing = std::cell::Cell::new(None);
        let reference = combine(spec, &input.routing, |dst, t, k| {
            let slot = if expert_major { k } else { 0 };
            let row = placement[dst].get(&(rank, t, slot)).copied();
            match row.and_then(|row| y[dst].get(row * d.hidden..(row + 1) * d.hidden)) {
                Some(values) => values,
                None => {
                    if missing.get().is_none() {
                        missing.set(Some((dst, t)));
                    }
                    &[]
                }
            }
        });
        if let Some((dst, t)) = missing.get() {
            return Err(format!(
                "rank {dst} holds no row of rank {rank}'s token {t}"
            ));
        }
        if *got_out != reference {
            let first = got_out
                .iter()
                .zip(&reference)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "combine on rank {rank} differs from the reference (first at token {}, channel {})",
                first / d.hidden,
                first % d.hidden
            ));
        }
    }
    Ok(())
}
