//! Reference of the routing-layout kernel.

use crate::routing::Routing;

/// The routing layout (DESIGN.md "HT layout").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per rank: tokens with at least one slot on it (a token counts once per rank).
    pub num_tokens_per_rank: Vec<i32>,
    /// Per expert: (token, slot) pairs routed to it.
    pub num_tokens_per_expert: Vec<i32>,
    /// Row-major `[T, R]`: 1 when token t has a slot on rank r.
    pub is_token_in_rank: Vec<u8>,
}

/// The first slot whose id is outside `[-1, E)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSlot {
    /// Token.
    pub token: usize,
    /// Slot.
    pub slot: usize,
    /// Id found.
    pub value: i64,
    /// Number of bad slots.
    pub count: usize,
}

/// Computes the layout of `routing` for E experts over R ranks; bad ids are skipped and the
/// first is reported.
pub fn layout(routing: &Routing, experts: usize, ranks: usize) -> (Layout, Option<BadSlot>) {
    let local = experts / ranks;
    let mut out = Layout {
        num_tokens_per_rank: vec![0; ranks],
        num_tokens_per_expert: vec![0; experts],
        is_token_in_rank: vec![0; routing.num_tokens * ranks],
    };
    let mut bad: Option<BadSlot> = None;
    for t in 0..routing.num_tokens {
        for k in 0..routing.top_k {
            let e = routing.expert(t, k);
            if e == -1 {
                continue;
            }
            if e < -1 || e >= experts as i64 {
                match &mut bad {
                    Some(b) => b.count += 1,
                    None => {
                        bad = Some(BadSlot {
                            token: t,
                            slot: k,
                            value: e,
                            count: 1,
                        })
                    }
                }
                continue;
            }
            let e = e as usize;
            out.num_tokens_per_expert[e] += 1;
            let cell = &mut out.is_token_in_rank[t * ranks + e / local];
            if *cell == 0 {
                *cell = 1;
                out.num_tokens_per_rank[e / local] += 1;
            }
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(rows: &[&[i64]]) -> Routing {
        let k = rows.first().map_or(0, |r| r.len());
        Routing {
            num_tokens: rows.len(),
            top_k: k,
            topk_idx: rows.iter().flat_map(|r| r.iter().copied()).collect(),
            topk_weights: vec![1.0; rows.len() * k],
        }
    }

    #[test]
    fn counts_tokens_once_per_rank_and_slots_per_expert() {
        // E = 8 over R = 4: experts 2r and 2r+1 live on rank r.
        let r = routing(&[&[0, 1, 5], &[-1, 7, 6], &[-1, -1, -1]]);
        let (l, bad) = layout(&r, 8, 4);
        assert_eq!(bad, None);
        assert_eq!(l.num_tokens_per_rank, [1, 0, 1, 1]);
        assert_eq!(l.num_tokens_per_expert, [1, 1, 0, 0, 0, 1, 1, 1]);
        assert_eq!(l.is_token_in_rank, [1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn reports_the_first_bad_slot_and_skips_all() {
        let r = routing(&[&[0, 9], &[-2, 3]]);
        let (l, bad) = layout(&r, 8, 4);
        assert_eq!(
            bad,
            Some(BadSlot {
                token: 0,
                slot: 1,
                value: 9,
                count: 2
            })
        );
        assert_eq!(l.num_tokens_per_expert.iter().sum::<i32>(), 2);
    }

    #[test]
    fn per_rank_counts_are_row_sums_of_the_map() {
        let r = crate::routing::generate(crate::routing::Pattern::Hot, 300, 8, 64, 8, 11);
        let (l, _) = layout(&r, 64, 8);
        for rank in 0..8 {
            let column: i32 = (0..300)
                .map(|t| i32::from(l.is_token_in_rank[t * 8 + rank]))
                .sum();
            assert_eq!(column, l.num_tokens_per_rank[rank]);
        }
        let slots = r.topk_idx.iter().filter(|&&e| e >= 0).count() as i32;
        assert_eq!(l.num_tokens_per_expert.iter().sum::<i32>(), slots);
    }
}
