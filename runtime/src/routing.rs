//! Routings (`topk_idx`, `topk_weights`) and a reproducible generator of test and bench routings.

/// The routing of one rank: `topk_idx [T, K]` (`-1` = no expert) and `topk_weights [T, K]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Tokens T.
    pub num_tokens: usize,
    /// Slots per token K.
    pub top_k: usize,
    /// Row-major `[T, K]` expert ids.
    pub topk_idx: Vec<i64>,
    /// Row-major `[T, K]` weights.
    pub topk_weights: Vec<f32>,
}

impl Routing {
    /// The id in slot `k` of token `t`.
    pub fn expert(&self, t: usize, k: usize) -> i64 {
        self.topk_idx[t * self.top_k + k]
    }
}

/// Shapes of routing that tests and benchmarks cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Each token picks K distinct experts uniformly.
    Uniform,
    /// Most picks go to a handful of hot experts (load imbalance).
    Hot,
    /// Experts on every other rank are never picked (those ranks receive nothing).
    EmptyRanks,
    /// Uniform, with a quarter of the slots set to -1.
    Sparse,
    /// Every slot is -1.
    AllEmpty,
}

impl Pattern {
    /// Every pattern.
    pub const ALL: [Pattern; 5] = [
        Pattern::Uniform,
        Pattern::Hot,
        Pattern::EmptyRanks,
        Pattern::Sparse,
        Pattern::AllEmpty,
    ];
}

/// SplitMix64: tiny, fast, and the same stream on every platform and release, so a seed names
/// one routing forever.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Generates a router-like routing: each token picks up to K distinct experts (the top K of
/// random scores, as a gate does), shaped by `pattern`.
pub fn generate(
    pattern: Pattern,
    num_tokens: usize,
    top_k: usize,
    experts: usize,
    ranks: usize,
    seed: u64,
) -> Routing {
    let mut rng =
        SplitMix64::new(seed ^ 0x5eed_0000_0000_0000 ^ (pattern as u64).wrapping_mul(0x1000_0001));
    let local = (experts / ranks.max(1)).max(1);
    let hot: Vec<usize> = (0..experts.min(4))
        .map(|_| rng.below(experts as u64) as usize)
        .collect();
    let allowed: Vec<usize> = (0..experts)
        .filter(|&e| pattern != Pattern::EmptyRanks || (e / local).is_multiple_of(2))
        .collect();
    let mut topk_idx = Vec::with_capacity(num_tokens * top_k);
    let mut topk_weights = Vec::with_capacity(num_tokens * top_k);
    let mut scores: Vec<(f64, usize)> = Vec::with_capacity(allowed.len());
    for _ in 0..num_tokens {
        scores.clear();
        for &e in &allowed {
            let mut s = rng.next_f64();
            if pattern == Pattern::Hot && hot.contains(&e) {
                s += 0.9;
            }
            scores.push((s, e));
        }
        let take = top_k.min(scores.len());
        if take > 0 {
            scores.select_nth_unstable_by(take - 1, |a, b| b.0.total_cmp(&a.0));
        }
        let mut row: Vec<i64> = scores[..take].iter().map(|&(_, e)| e as i64).collect();
        row.resize(top_k, -1);
        for slot in row.iter_mut() {
            let drop = match pattern {
                Pattern::Sparse => rng.below(4) == 0,
                Pattern::AllEmpty => true,
                _ => false,
            };
            if drop {
                *slot = -1;
            }
        }
        for &e in &row {
            topk_idx.push(e);
            topk_weights.push(if e < 0 { 0.0 } else { rng.next_f64() as f32 });
        }
    }
    Routing {
        num_tokens,
        top_k,
        topk_idx,
        topk_weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_routing_and_patterns_hold() {
        let a = generate(Pattern::Uniform, 50, 8, 64, 8, 7);
        assert_eq!(a, generate(Pattern::Uniform, 50, 8, 64, 8, 7));
        assert_ne!(a, generate(Pattern::Uniform, 50, 8, 64, 8, 8));
        for t in 0..50 {
            let mut row: Vec<i64> = (0..8).map(|k| a.expert(t, k)).collect();
            row.sort();
            row.dedup();
            assert_eq!(row.len(), 8, "distinct experts per token");
        }
        let empty = generate(Pattern::EmptyRanks, 100, 8, 64, 8, 1);
        assert!(empty.topk_idx.iter().all(|&e| e < 0 || (e / 8) % 2 == 0));
        assert!(
            generate(Pattern::AllEmpty, 10, 4, 16, 4, 1)
                .topk_idx
                .iter()
                .all(|&e| e == -1)
        );
        let sparse = generate(Pattern::Sparse, 200, 8, 64, 8, 3);
        let holes = sparse.topk_idx.iter().filter(|&&e| e == -1).count();
        assert!(holes > 200 && holes < 800, "{holes}");
        // K larger than the allowed experts leaves -1 slots.
        let narrow = generate(Pattern::EmptyRanks, 4, 4, 4, 4, 1);
        assert!(narrow.topk_idx.iter().filter(|&&e| e == -1).count() >= 8);
    }
}
