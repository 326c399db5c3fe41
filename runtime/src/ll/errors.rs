//! Reading the error words the LL kernels record on the device (the asynchronous error of the
//! device API), and turning them into [`Error`]s.

use cudarc::driver::CudaSlice;
use ep_codegen::Spec;
use ep_codegen::kernels::ll::{ERROR_WORDS, ERRORS_OFFSET, error_code, workspace_ints};

use crate::error::CudaContextExt;
use crate::{Error, Gpu};

/// Reads every local rank's error words (the GPU is idle on them: the caller synchronized),
/// clears those that hold an error, and returns the lowest rank's error. `ranks[i]` is the
/// global rank of workspace `i`.
pub(crate) fn read_errors(
    gpu: &Gpu,
    spec: &Spec,
    workspace: &mut CudaSlice<i32>,
    ranks: &[usize],
) -> Result<(), Error> {
    let stream = gpu.stream();
    let stride = workspace_ints(spec) as usize;
    let at = ERRORS_OFFSET as usize;
    let n = ERROR_WORDS as usize;
    let mut first = None;
    for (i, &rank) in ranks.iter().enumerate() {
        let words = i * stride + at..i * stride + at + n;
        let mut e = [0i32; ERROR_WORDS as usize];
        stream
            .memcpy_dtoh(&workspace.slice(words.clone()), &mut e)
            .cuda("reading the error words")?;
        if e[0] == 0 {
            continue;
        }
        stream
            .memset_zeros(&mut workspace.slice_mut(words))
            .cuda("clearing the error words")?;
        if first.is_none() {
            first = Some(decode(spec, rank, &e));
        }
    }
    stream.synchronize().cuda("clearing the error words")?;
    first.map_or(Ok(()), Err)
}

/// The error that rank `rank`'s words describe.
fn decode(spec: &Spec, rank: usize, e: &[i32; ERROR_WORDS as usize]) -> Error {
    let k = spec.top_k() as usize;
    let detail = e[1].max(0) as usize;
    match e[0] {
        error_code::BAD_EXPERT => {
            let flat = (i32::MAX - e[3]).max(0) as usize;
            let value = (i64::from(e[5]) << 32) | i64::from(e[4] as u32);
            Error::BadExpertId {
                token: flat / k,
                slot: flat % k,
                value,
                experts: spec.experts(),
                count: e[2].max(0) as usize,
            }
            .on_rank(rank)
        }
        error_code::DISPATCH_TIMEOUT => Error::Timeout {
            rank,
            phase: "dispatch receive",
            peer: detail,
        },
        error_code::COMBINE_TIMEOUT => Error::Timeout {
            rank,
            phase: "combine receive",
            peer: detail,
        },
        error_code::OVERFLOW => Error::Input(format!(
            "rank {rank}: the receive rows of expert {detail} overflowed (a call on the same \
             window half was sent before the previous one was received)"
        )),
        _ => Error::Timeout {
            rank,
            phase: "dispatch send (a row reserved by another block of the rank never came)",
            peer: rank,
        },
    }
}
