//! Reference of low-latency dispatch and combine (DESIGN.md "Semantics").
//!
//! Dispatch: receiving rank d holds, for each local expert l, one row per (s, t, k) with
//! `topk_idx_s[t, k] == d * L + l`: the token's activations encoded for the wire (the
//! activation bits, or FP8 codes and block scales, see [`super::fp8`]). Order is free; tests sort.
//! Combine: `out_s[t] = round(sum over k in order with idx >= 0 of fma(w[t,k], y(s,t,k), acc))`,
//! f32 accumulation with a fused multiply-add per term, one rounding to the activation dtype.

use ep_codegen::{Dtype, Spec};

use super::fp8;
use super::values::{from_f32, to_f32};
use crate::routing::Routing;

/// One rank's inputs.
#[derive(Debug, Clone)]
pub struct RankInput {
    /// The routing (`topk_idx`, `topk_weights`), T tokens.
    pub routing: Routing,
    /// Activations `[T, H]` as 16-bit patterns.
    pub x: Vec<u16>,
}

/// One received row as dispatch must deliver it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    /// Source rank s.
    pub src_rank: usize,
    /// Source token t.
    pub token: usize,
    /// Slot k of the token that selected this expert.
    pub slot: usize,
    /// Payload bytes (H x 2 for 16-bit payloads, H for FP8).
    pub payload: Vec<u8>,
    /// FP8 block scales (`scale_inv`, H / 128 of them); empty otherwise.
    pub scales: Vec<f32>,
}

/// A row of activations encoded as dispatch sends it.
pub fn encode_row(spec: &Spec, x_row: &[u16]) -> (Vec<u8>, Vec<f32>) {
    match spec.fp8() {
        Some(f) if spec.dispatch_dtype() == Dtype::Fp8E4m3 => {
            let mut payload = Vec::with_capacity(x_row.len());
            let mut scales = Vec::with_capacity(x_row.len() / f.block as usize);
            for block in x_row.chunks(f.block as usize) {
                let values: Vec<f32> = block.iter().map(|&b| to_f32(b, spec.dtype())).collect();
                let (codes, scale_inv) = fp8::quantize_block(&values, f.scale);
                payload.extend(codes);
                scales.push(scale_inv);
            }
            (payload, scales)
        }
        _ => (
            x_row.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Vec::new(),
        ),
    }
}

/// Every rank's expected receive set: `[d][l]`, rows sorted by (source rank, token, slot).
pub fn expected_dispatch(spec: &Spec, inputs: &[RankInput]) -> Vec<Vec<Vec<ExpectedRow>>> {
    let ep_codegen::Dims {
        ranks,
        local,
        hidden,
        ..
    } = spec.dims();
    let mut out = vec![vec![Vec::new(); local]; ranks];
    for (s, input) in inputs.iter().enumerate() {
        let r = &input.routing;
        for t in 0..r.num_tokens {
            let mut encoded = None;
            for k in 0..r.top_k {
                let e = r.expert(t, k);
                if e < 0 {
                    continue;
                }
                let (payload, scales) = encoded
                    .get_or_insert_with(|| encode_row(spec, &input.x[t * hidden..(t + 1) * hidden]))
                    .clone();
                let e = e as usize;
                out[e / local][e % local].push(ExpectedRow {
                    src_rank: s,
                    token: t,
                    slot: k,
                    payload,
                    scales,
                });
            }
        }
    }
    out
}

/// The combined output `[T, H]` of one source rank; `y(t, k)` is the row the expert of slot k
/// returned for token t (only asked for slots with an expert).
pub fn combine<'a>(
    spec: &Spec,
    routing: &Routing,
    y: impl Fn(usize, usize) -> &'a [u16],
) -> Vec<u16> {
    let hidden = spec.hidden() as usize;
    let mut out = vec![0u16; routing.num_tokens * hidden];
    let mut acc = vec![0f32; hidden];
    for t in 0..routing.num_tokens {
        acc.fill(0.0);
        for k in 0..routing.top_k {
            if routing.expert(t, k) < 0 {
                continue;
            }
            let w = routing.topk_weights[t * routing.top_k + k];
            for (a, &v) in acc.iter_mut().zip(y(t, k)) {
                *a = w.mul_add(to_f32(v, spec.combine_dtype()), *a);
            }
        }
        for (o, a) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(&acc) {
            *o = from_f32(*a, spec.combine_dtype());
        }
    }
    out
}

/// Random activations `[T, H]` in the spec's dtype: normal-ish values with a few large outliers,
/// so FP8 scales vary between blocks.
pub fn random_activations(spec: &Spec, tokens: usize, seed: u64) -> Vec<u16> {
    let mut rng = crate::routing::SplitMix64::new(seed ^ 0xac71_0000);
    (0..tokens * spec.hidden() as usize)
        .map(|_| {
            let u = rng.next_f64() as f32 - 0.5;
            let big = if rng.below(64) == 0 { 40.0 } else { 1.0 };
            from_f32(u * 4.0 * big, spec.dtype())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Pattern, generate};

    fn spec(extra: &str) -> Spec {
        let yaml = format!(
            "name: t\nmode: low_latency\nhidden: 256\nexperts: 16\ntop_k: 4\nranks: 4\nmax_tokens_per_rank: 32\n{extra}"
        );
        Spec::from_yaml(&yaml, None).unwrap()
    }

    #[test]
    fn every_selection_arrives_once_at_its_expert() {
        let s = spec("");
        let inputs: Vec<RankInput> = (0..4)
            .map(|r| RankInput {
                routing: generate(Pattern::Sparse, 20, 4, 16, 4, r),
                x: random_activations(&s, 20, r),
            })
            .collect();
        let got = expected_dispatch(&s, &inputs);
        let total: usize = got.iter().flatten().map(Vec::len).sum();
        let selections: usize = inputs
            .iter()
            .map(|i| i.routing.topk_idx.iter().filter(|&&e| e >= 0).count())
            .sum();
        assert_eq!(total, selections);
        let row = &got[1][2][0];
        let x = &inputs[row.src_rank].x[row.token * 256..(row.token + 1) * 256];
        assert_eq!(row.payload.len(), 512);
        assert_eq!(u16::from_le_bytes([row.payload[0], row.payload[1]]), x[0]);
        assert_eq!(
            inputs[row.src_rank].routing.expert(row.token, row.slot),
            4 + 2
        );
    }

    #[test]
    fn fp8_rows_carry_codes_and_scales() {
        let s = spec("dispatch_dtype: fp8_e4m3\nfp8: {scale: ue8m0}\n");
        let x = random_activations(&s, 1, 3);
        let (payload, scales) = encode_row(&s, &x);
        assert_eq!((payload.len(), scales.len()), (256, 2));
        for (i, &code) in payload.iter().enumerate() {
            let back = fp8::e4m3_to_f32(code) * scales[i / 128];
            let orig = to_f32(x[i], s.dtype());
            assert!(
                (back - orig).abs() <= orig.abs() / 8.0 + scales[i / 128],
                "{i}: {orig} vs {back}"
            );
        }
    }

    #[test]
    fn combine_weights_in_k_order() {
        let s = spec("");
        let mut routing = generate(Pattern::Uniform, 2, 4, 16, 4, 1);
        routing.topk_idx[1] = -1;
        let rows: Vec<Vec<u16>> = (0..4)
            .map(|k| vec![from_f32(k as f32 + 1.0, Dtype::Bf16); 256])
            .collect();
        let out = combine(&s, &routing, |_, k| &rows[k]);
        let w = &routing.topk_weights;
        let mut acc = 0f32;
        for k in [0, 2, 3] {
            acc = w[k].mul_add(k as f32 + 1.0, acc);
        }
        assert_eq!(out[0], from_f32(acc, Dtype::Bf16));
        assert_eq!(out.len(), 2 * 256);
    }
}
