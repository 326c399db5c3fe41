//! The knobs each kernel family exposes to `epc tune`, declared beside its plan: the `tuning`
//! field each one sets, the values worth trying on a GPU of a given size, and the variants
//! (every combination, the defaults always first) that a spec's pinned fields leave.
//!
//! Low latency: `warps_per_block` (block size of send and receive) and `sms` (the SMs a launch's
//! ranks share), tuned per token-count bucket ([`token_buckets`]: a decode step of 4 tokens and
//! one of 128 want different grids). High throughput: `sms` (the SMs the ranks' data kernels
//! spread over; its block size is fixed by its kernels), tuned at the spec's token count.
//! Variants that break a static limit (more than 1024 threads, more SMs than the GPU has) are
//! pruned here; those that cannot be co-resident or fail to compile are the tuner's to score.

use sha2::{Digest, Sha256};

use crate::spec::{Mode, Spec, Tuning};

/// One knob: the `tuning` field it sets and the values tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knob {
    /// The `tuning` field (`warps_per_block`).
    pub name: &'static str,
    /// Values tried, ascending; the analytic default is `auto`, tried besides.
    pub values: Vec<u32>,
}

/// The knobs of `spec`'s kernels on a GPU of `gpu_sms` SMs. A knob the spec pins (not `auto`)
/// is left out: the tuner never overrides the spec.
pub fn knobs(spec: &Spec, gpu_sms: u32) -> Vec<Knob> {
    let t = spec.tuning();
    let mut out = Vec::new();
    if spec.mode() == Mode::LowLatency && t.warps_per_block.is_none() {
        out.push(Knob {
            name: "warps_per_block",
            values: vec![4, 8, 16, 32],
        });
    }
    if t.sms.is_none() && gpu_sms > 0 {
        // A quarter, half, three quarters and all of the GPU.
        let mut values: Vec<u32> = [4, 2, 1]
            .iter()
            .map(|&d| (gpu_sms / d).max(1))
            .chain([gpu_sms * 3 / 4])
            .collect();
        values.sort_unstable();
        values.dedup();
        out.push(Knob {
            name: "sms",
            values,
        });
    }
    out
}

/// Upper ends of the token-count buckets a low-latency spec is tuned for, ascending: 1-16,
/// 17-64 and 65-M, cut at `max_tokens_per_rank` (M). A call of T tokens per rank runs the
/// winner of the first bucket whose end is at least T. High throughput: one bucket, M.
pub fn token_buckets(spec: &Spec) -> Vec<u32> {
    let m = spec.max_tokens_per_rank();
    let mut ends: Vec<u32> = match spec.mode() {
        Mode::LowLatency => [16, 64].into_iter().filter(|&e| e < m).collect(),
        Mode::HighThroughput => Vec::new(),
    };
    ends.push(m);
    ends
}

/// The tuning a knob assignment gives (the spec's own fields kept).
fn with_knob(t: Tuning, name: &str, value: u32) -> Tuning {
    match name {
        "warps_per_block" => Tuning {
            warps_per_block: Some(value),
            ..t
        },
        "sms" => Tuning {
            sms: Some(value),
            ..t
        },
        _ => t,
    }
}

/// Every variant of `knobs` for `spec`: the spec's own tuning (the defaults) first, then each
/// combination of values, without those over a static limit.
pub fn variants(spec: &Spec, knobs: &[Knob]) -> Vec<Tuning> {
    let base = spec.tuning();
    let mut out = vec![base];
    let mut combos = vec![base];
    for knob in knobs {
        combos = combos
            .iter()
            .flat_map(|&t| knob.values.iter().map(move |&v| with_knob(t, knob.name, v)))
            .collect();
    }
    for t in combos {
        let threads_ok = t.warps_per_block.is_none_or(|w| w * 32 <= 1024);
        if threads_ok && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// A digest of a candidate set (the knobs and their values), part of a tuning database key:
/// a result chosen among other candidates is not reused.
pub fn candidates_digest(knobs: &[Knob]) -> String {
    let mut h = Sha256::new();
    for k in knobs {
        h.update(k.name.as_bytes());
        for v in &k.values {
            h.update(b":");
            h.update(v.to_le_bytes());
        }
        h.update(b";");
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Spec {
        Spec::from_yaml(
            &format!(
                "name: t\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\nranks: 8\n\
                 max_tokens_per_rank: 128\n{extra}"
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn low_latency_declares_block_size_and_sms() {
        let k = knobs(&spec(""), 132);
        assert_eq!(
            k[0],
            Knob {
                name: "warps_per_block",
                values: vec![4, 8, 16, 32]
            }
        );
        assert_eq!(
            k[1],
            Knob {
                name: "sms",
                values: vec![33, 66, 99, 132]
            }
        );
        let v = variants(&spec(""), &k);
        // The defaults first, then 4 x 4 combinations.
        assert_eq!(v[0], Tuning::default());
        assert_eq!(v.len(), 17);
        assert!(v.iter().all(|t| t.warps_per_block.is_none_or(|w| w <= 32)));
    }

    #[test]
    fn pinned_knobs_are_not_tuned_and_high_throughput_tunes_its_sms() {
        let pinned = spec("tuning:\n  warps_per_block: 8\n");
        let k = knobs(&pinned, 132);
        assert_eq!(k.iter().map(|k| k.name).collect::<Vec<_>>(), ["sms"]);
        assert!(
            variants(&pinned, &k)
                .iter()
                .all(|t| t.warps_per_block == Some(8))
        );
        let ht = Spec::from_yaml(
            "name: h\nmode: high_throughput\nhidden: 2048\nexperts: 64\ntop_k: 4\nranks: 8\n\
             max_tokens_per_rank: 128\nmax_recv_tokens_per_rank: 1024\n",
            None,
        )
        .unwrap();
        let k = knobs(&ht, 132);
        assert_eq!(k.iter().map(|k| k.name).collect::<Vec<_>>(), ["sms"]);
        assert_eq!(variants(&ht, &k).len(), 5);
        let pinned = Spec::from_yaml(
            "name: h\nmode: high_throughput\nhidden: 2048\nexperts: 64\ntop_k: 4\nranks: 8\n\
             max_tokens_per_rank: 128\nmax_recv_tokens_per_rank: 1024\ntuning:\n  sms: 66\n",
            None,
        )
        .unwrap();
        assert!(knobs(&pinned, 132).is_empty());
        assert_eq!(variants(&pinned, &[]), vec![pinned.tuning()]);
    }

    #[test]
    fn low_latency_tunes_three_token_buckets_and_high_throughput_one() {
        assert_eq!(token_buckets(&spec("")), [16, 64, 128]);
        let with_m = |m: u32| {
            Spec::from_yaml(
                &format!(
                    "name: t\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\n\
                     ranks: 8\nmax_tokens_per_rank: {m}\n"
                ),
                None,
            )
            .unwrap()
        };
        assert_eq!(token_buckets(&with_m(32)), [16, 32]);
        assert_eq!(token_buckets(&with_m(16)), [16]);
        assert_eq!(token_buckets(&with_m(3)), [3]);
    }

    #[test]
    fn the_candidate_digest_follows_the_set() {
        let a = knobs(&spec(""), 132);
        let b = knobs(&spec(""), 114);
        assert_eq!(
            candidates_digest(&a),
            candidates_digest(&knobs(&spec(""), 132))
        );
        assert_ne!(candidates_digest(&a), candidates_digest(&b));
        assert_eq!(candidates_digest(&a).len(), 16);
    }
}
