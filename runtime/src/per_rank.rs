//! Inputs of a call built from per-tensor lists (one tensor per local rank), as the C and Python
//! interfaces receive them: the lists must be as long as each other.

use crate::Error;
use crate::ht::{HtCombineInput, HtDispatchInput};
use crate::ll::{CombineInput, DispatchInput, Tensor};

/// The common length of named lists, or an error naming the two that differ.
fn common_len(lists: &[(&str, usize)]) -> Result<usize, Error> {
    let (first, n) = lists[0];
    for &(name, len) in &lists[1..] {
        if len != n {
            return Err(Error::Input(format!(
                "{first} has {n} tensors but {name} {len}: give one of each per local rank"
            )));
        }
    }
    Ok(n)
}

impl DispatchInput {
    /// One input per local rank from the lists of `x` and `topk_idx`.
    pub fn per_rank(x: Vec<Tensor>, topk_idx: Vec<Tensor>) -> Result<Vec<DispatchInput>, Error> {
        common_len(&[("x", x.len()), ("topk_idx", topk_idx.len())])?;
        Ok(x.into_iter()
            .zip(topk_idx)
            .map(|(x, topk_idx)| DispatchInput { x, topk_idx })
            .collect())
    }
}

impl CombineInput {
    /// One input per local rank from the lists of `topk_weights` and `out`.
    pub fn per_rank(
        topk_weights: Vec<Tensor>,
        out: Vec<Tensor>,
    ) -> Result<Vec<CombineInput>, Error> {
        common_len(&[("topk_weights", topk_weights.len()), ("out", out.len())])?;
        Ok(topk_weights
            .into_iter()
            .zip(out)
            .map(|(topk_weights, out)| CombineInput { topk_weights, out })
            .collect())
    }
}

impl HtDispatchInput {
    /// One input per local rank from the lists of `x`, `topk_idx` and `topk_weights`.
    pub fn per_rank(
        x: Vec<Tensor>,
        topk_idx: Vec<Tensor>,
        topk_weights: Vec<Tensor>,
    ) -> Result<Vec<HtDispatchInput>, Error> {
        common_len(&[
            ("x", x.len()),
            ("topk_idx", topk_idx.len()),
            ("topk_weights", topk_weights.len()),
        ])?;
        Ok(x.into_iter()
            .zip(topk_idx)
            .zip(topk_weights)
            .map(|((x, topk_idx), topk_weights)| HtDispatchInput {
                x,
                topk_idx,
                topk_weights,
            })
            .collect())
    }
}

impl HtCombineInput {
    /// One input per local rank from the lists of `topk_idx`, `topk_weights` and `out`.
    pub fn per_rank(
        topk_idx: Vec<Tensor>,
        topk_weights: Vec<Tensor>,
        out: Vec<Tensor>,
    ) -> Result<Vec<HtCombineInput>, Error> {
        common_len(&[
            ("topk_idx", topk_idx.len()),
            ("topk_weights", topk_weights.len()),
            ("out", out.len()),
        ])?;
        Ok(topk_idx
            .into_iter()
            .zip(topk_weights)
            .zip(out)
            .map(|((topk_idx, topk_weights), out)| HtCombineInput {
                topk_idx,
                topk_weights,
                out,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ll::Elem;

    fn t() -> Tensor {
        // SAFETY: an empty tensor holds no elements; its address is never read.
        unsafe { Tensor::from_raw(0, &[0, 4], Elem::F32) }.unwrap()
    }

    #[test]
    fn lists_of_different_lengths_are_named() {
        assert_eq!(
            DispatchInput::per_rank(vec![t(), t()], vec![t(), t()])
                .unwrap()
                .len(),
            2
        );
        let e = HtCombineInput::per_rank(vec![t(), t()], vec![t(), t()], vec![t()])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("topk_idx has 2 tensors but out 1"),
            "{e}"
        );
        let e = HtDispatchInput::per_rank(vec![t()], vec![t(), t()], vec![t()])
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("x has 1 tensors but topk_idx 2"),
            "{e}"
        );
        assert!(CombineInput::per_rank(vec![], vec![t()]).is_err());
    }
}
