//! Comparing low-latency results with the reference: shared by the tests and `epc run`.

use ep_codegen::{Dtype, Spec};

use crate::ll::RankDispatch;
use crate::reference::ll::{RankInput, combine, expected_dispatch};
use crate::reference::values::from_f32;

/// The value an expert returns for channel `c` of (source rank, token, global expert): any
/// deterministic function serves, as long as the check and the reference agree.
pub fn expert_value(s: usize, t: usize, e: usize, c: usize, dtype: Dtype) -> u16 {
    let v = ((s * 31 + t * 7 + e * 3 + c) % 29) as f32 * 0.125 - 1.75;
    from_f32(v, dtype)
}

/// Checks every rank's dispatch against the reference: row counts, contiguous source ranges at
/// `recv_range`, and every row's payload (and FP8 scales) bit for bit, after sorting by source.
pub fn check_dispatch(
    spec: &Spec,
    inputs: &[RankInput],
    got: &[RankDispatch],
) -> Result<(), String> {
    let ranks: Vec<usize> = (0..spec.ranks() as usize).collect();
    check_dispatch_of(spec, inputs, &ranks, got)
}

/// Like [`check_dispatch`] for some ranks only (`got[i]` is rank `ranks[i]`'s), as a process
/// that drives only its own ranks sees them; `inputs` holds every rank's.
pub fn check_dispatch_of(
    spec: &Spec,
    inputs: &[RankInput],
    ranks: &[usize],
    got: &[RankDispatch],
) -> Result<(), String> {
    let (r, m) = (spec.ranks() as usize, spec.max_tokens_per_rank() as usize);
    let payload = spec.hidden() as usize * spec.dispatch_dtype().size() as usize;
    let sc = spec.fp8().map_or(0, |f| (spec.hidden() / f.block) as usize);
    if got.len() != ranks.len() || inputs.len() != r {
        return Err(format!(
            "{} results for {} ranks, {} inputs for {r}",
            got.len(),
            ranks.len(),
            inputs.len()
        ));
    }
    let want = expected_dispatch(spec, inputs);
    for (g, &d) in got.iter().zip(ranks) {
        for (le, expect) in want[d].iter().enumerate() {
            let here = format!("rank {d} local expert {le}");
            let count = g.recv_count[le] as usize;
            if count != expect.len() {
                return Err(format!("{here}: {count} rows, expected {}", expect.len()));
            }
            let base = le * r * m;
            for s in 0..r {
                let at = (le * r + s) * 2;
                let (begin, n) = (g.recv_range[at] as usize, g.recv_range[at + 1] as usize);
                let from_s = expect.iter().filter(|row| row.src_rank == s).count();
                if n != from_s {
                    return Err(format!(
                        "{here}: recv_range of source {s} has {n} rows, expected {from_s}"
                    ));
                }
                if let Some(i) =
                    (begin..begin + n).find(|&i| g.recv_src[base + i] as usize / m != s)
                {
                    return Err(format!(
                        "{here}: row {i} inside source {s}'s range comes from elsewhere"
                    ));
                }
            }
            let mut rows: Vec<usize> = (0..count).collect();
            rows.sort_by_key(|&i| g.recv_src[base + i]);
            for (i, row) in rows.into_iter().zip(expect) {
                let src = g.recv_src[base + i] as usize;
                if (src / m, src % m) != (row.src_rank, row.token) {
                    return Err(format!(
                        "{here}: row from ({}, {}), expected ({}, {})",
                        src / m,
                        src % m,
                        row.src_rank,
                        row.token
                    ));
                }
                if g.recv_x[(base + i) * payload..][..payload] != row.payload[..] {
                    return Err(format!(
                        "{here}: payload of ({}, {}) differs",
                        row.src_rank, row.token
                    ));
                }
                if sc > 0 {
                    let scales = &g.recv_scales[(base + i) * sc..][..sc];
                    if !scales
                        .iter()
                        .zip(&row.scales)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                    {
                        return Err(format!(
                            "{here}: scales of ({}, {}): {scales:?}, expected {:?}",
                            row.src_rank, row.token, row.scales
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Expert outputs `y` for every rank in the received layout, from [`expert_value`].
pub fn expert_outputs(spec: &Spec, got: &[RankDispatch]) -> Vec<Vec<u16>> {
    let ranks: Vec<usize> = (0..got.len()).collect();
    expert_outputs_of(spec, &ranks, got)
}

/// Like [`expert_outputs`] for some ranks only (`got[i]` is rank `ranks[i]`'s).
pub fn expert_outputs_of(spec: &Spec, ranks: &[usize], got: &[RankDispatch]) -> Vec<Vec<u16>> {
    let ep_codegen::Dims {
        ranks: r,
        local: l,
        tokens: m,
        hidden: h,
        ..
    } = spec.dims();
    got.iter()
        .zip(ranks)
        .map(|(g, &d)| {
            let mut y = vec![0u16; l * r * m * h];
            for le in 0..l {
                for i in 0..g.recv_count[le].max(0) as usize {
                    let row = le * r * m + i;
                    let src = g.recv_src[row] as usize;
                    for c in 0..h {
                        y[row * h + c] =
                            expert_value(src / m, src % m, d * l + le, c, spec.combine_dtype());
                    }
                }
            }
            y
        })
        .collect()
}

/// Checks every rank's combined output against the reference, bit for bit.
pub fn check_combine(spec: &Spec, inputs: &[RankInput], out: &[Vec<u16>]) -> Result<(), String> {
    let ranks: Vec<usize> = (0..inputs.len()).collect();
    check_combine_of(spec, inputs, &ranks, out)
}

/// Like [`check_combine`] for some ranks only (`out[i]` is rank `ranks[i]`'s).
pub fn check_combine_of(
    spec: &Spec,
    inputs: &[RankInput],
    ranks: &[usize],
    out: &[Vec<u16>],
) -> Result<(), String> {
    let (h, k) = (spec.hidden() as usize, spec.top_k() as usize);
    if out.len() != ranks.len() {
        return Err(format!("{} outputs for {} ranks", out.len(), ranks.len()));
    }
    for (out, &s) in out.iter().zip(ranks) {
        let input = inputs
            .get(s)
            .ok_or_else(|| format!("no input of rank {s}"))?;
        let rows: Vec<Vec<Vec<u16>>> = (0..input.routing.num_tokens)
            .map(|t| {
                (0..k)
                    .map(|slot| {
                        let e = input.routing.expert(t, slot).max(0) as usize;
                        (0..h)
                            .map(|c| expert_value(s, t, e, c, spec.combine_dtype()))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let want = combine(spec, &input.routing, |t, slot| &rows[t][slot]);
        if *out != want {
            let first = out.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "combine of rank {s} differs first at token {} channel {}: {:#06x}, expected {:#06x}",
                first / h,
                first % h,
                out.get(first).copied().unwrap_or(0),
                want.get(first).copied().unwrap_or(0)
            ));
        }
    }
    Ok(())
}
