//! Comparing high-throughput results with the reference: shared by the tests and `epc run`.

use std::collections::HashMap;

use ep_codegen::Spec;

use crate::ht::FlatReceived;
use crate::reference::ht::{FlatReceive, combine_flat};
use crate::reference::ll::RankInput;

/// Checks every rank's flat dispatch against the reference's `want`: the row count, the slots
/// per local expert, and each row's source, payload, local expert ids and weights, bit for bit
/// and in order.
pub fn check_flat_dispatch(
    spec: &Spec,
    got: &[FlatReceived],
    want: &[FlatReceive],
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} ranks received, {} expected",
            got.len(),
            want.len()
        ));
    }
    let all: Vec<usize> = (0..got.len()).collect();
    check_flat_dispatch_of(spec, want, &all, got)
}

/// [`check_flat_dispatch`] for the ranks `mine` a process drives (`got[i]` is rank `mine[i]`'s),
/// against the reference of every rank (`want`).
pub fn check_flat_dispatch_of(
    spec: &Spec,
    want: &[FlatReceive],
    mine: &[usize],
    got: &[FlatReceived],
) -> Result<(), String> {
    let d = spec.dims();
    if got.len() != mine.len() || mine.iter().any(|&r| r >= want.len()) {
        return Err(format!(
            "{} results for ranks {mine:?} of {}",
            got.len(),
            want.len()
        ));
    }
    for (&rank, g) in mine.iter().zip(got) {
        let w = &want[rank];
        if g.recv_src.len() != w.rows.len() {
            return Err(format!(
                "rank {rank}: {} rows received, {} expected",
                g.recv_src.len(),
                w.rows.len()
            ));
        }
        let per_expert: Vec<i32> = w.tokens_per_expert.iter().map(|&n| n as i32).collect();
        if g.notify.recv_tokens_per_expert != per_expert {
            return Err(format!(
                "rank {rank}: slots per local expert {:?}, expected {per_expert:?}",
                g.notify.recv_tokens_per_expert
            ));
        }
        let k = d.top_k;
        for (i, row) in w.rows.iter().enumerate() {
            let src = (row.src_rank * d.tokens + row.token) as i32;
            let differs = if g.recv_src[i] != src {
                Some("source")
            } else if !g.recv_x[i * d.hidden..(i + 1) * d.hidden]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .eq(row.payload.iter().copied())
            {
                Some("payload")
            } else if g.recv_topk_idx[i * k..(i + 1) * k] != row.topk_idx[..] {
                Some("local expert ids")
            } else if g.recv_topk_w[i * k..(i + 1) * k] != row.topk_w[..] {
                Some("weights")
            } else {
                None
            };
            if let Some(what) = differs {
                return Err(format!(
                    "rank {rank} row {i} (source rank {}, token {}): the {what} differ",
                    row.src_rank, row.token
                ));
            }
        }
    }
    Ok(())
}

/// Checks every rank's flat combine `out` against the reference, where `y[d]` is what rank d
/// returned for its rows (`got[d]` says which token each row holds).
pub fn check_flat_combine(
    spec: &Spec,
    inputs: &[RankInput],
    got: &[FlatReceived],
    y: &[Vec<u16>],
    out: &[Vec<u16>],
) -> Result<(), String> {
    let sources: Vec<&[i32]> = got.iter().map(|g| &g.recv_src[..]).collect();
    let all: Vec<usize> = (0..inputs.len()).collect();
    check_flat_combine_of(spec, inputs, &sources, y, &all, out)
}

/// [`check_flat_combine`] for the ranks `mine` a process drives (`out[i]` is rank `mine[i]`'s),
/// given every rank's inputs, row sources (`recv_src`) and returned rows `y`.
pub fn check_flat_combine_of(
    spec: &Spec,
    inputs: &[RankInput],
    sources: &[&[i32]],
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
    // Where each (source rank, token) landed on each rank.
    let rows: Vec<HashMap<i32, usize>> = sources
        .iter()
        .map(|s| s.iter().enumerate().map(|(i, &v)| (v, i)).collect())
        .collect();
    for (&rank, got_out) in mine.iter().zip(out) {
        let input = &inputs[rank];
        let missing = std::cell::Cell::new(None);
        let want = combine_flat(spec, &input.routing, |dst, t| {
            match rows[dst].get(&((rank * d.tokens + t) as i32)) {
                Some(&row) => &y[dst][row * d.hidden..(row + 1) * d.hidden],
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
        if *got_out != want {
            return Err(format!("combine on rank {rank} differs from the reference"));
        }
    }
    Ok(())
}
