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
    let d = spec.dims();
    if got.len() != want.len() {
        return Err(format!(
            "{} ranks received, {} expected",
            got.len(),
            want.len()
        ));
    }
    for (rank, (g, w)) in got.iter().zip(want).enumerate() {
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
    let d = spec.dims();
    // Where each (source rank, token) landed on each rank.
    let rows: Vec<HashMap<i32, usize>> = got
        .iter()
        .map(|g| {
            g.recv_src
                .iter()
                .enumerate()
                .map(|(i, &v)| (v, i))
                .collect()
        })
        .collect();
    for (rank, input) in inputs.iter().enumerate() {
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
        if out.get(rank) != Some(&want) {
            return Err(format!("combine on rank {rank} differs from the reference"));
        }
    }
    Ok(())
}
