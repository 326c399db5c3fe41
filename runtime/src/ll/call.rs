//! [`LlCall`]: one call's state on every rank of a group, and the views of what it received.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, DevicePtr};

use super::group::LlGroup;
use super::tensor::{Elem, Tensor};
use crate::Error;
use crate::error::CudaContextExt;

/// One rank's inputs of a dispatch.
#[derive(Debug, Clone, Copy)]
pub struct DispatchInput {
    /// `[T, H]` activations.
    pub x: Tensor,
    /// `[T, K]` expert ids (`-1` = none).
    pub topk_idx: Tensor,
}

/// One rank's tensors of a combine.
#[derive(Debug, Clone, Copy)]
pub struct CombineInput {
    /// `[T, K]` f32 weights.
    pub topk_weights: Tensor,
    /// `[T, H]` output, written by the combine.
    pub out: Tensor,
}

/// What one rank received in a call's dispatch: views into its window half (and the call's
/// state), valid once `dispatch_recv` has run on the stream, until the half is used by another
/// call. Only rows `[0, recv_count[l])` of each local expert are meaningful.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// `[L, R*M, H]` payload in the dispatch dtype (FP8: e4m3 codes).
    pub recv_x: Tensor,
    /// `[L, R*M, H/128]` f32 FP8 scales (None without FP8).
    pub recv_scales: Option<Tensor>,
    /// `[L]` i32 rows received per local expert.
    pub recv_count: Tensor,
    /// `[L, R*M]` i32: `s * M + t` of each row.
    pub recv_src: Tensor,
    /// `[L, R, 2]` i32: (first row, rows) of each source rank.
    pub recv_range: Tensor,
    /// `[L, R*M, H]` in the activation dtype: the experts' outputs, written in place by the
    /// caller's expert kernel (same rows as `recv_x`) before `combine_send`.
    pub y: Tensor,
}

/// One call's device state on every rank of a group: the epoch its send took, the tokens it
/// covered, the rows each local expert received and where each selection landed. Made once by
/// [`LlGroup::new_call`] and reused; the call's half of the windows is fixed, so views into it
/// keep their addresses (CUDA graphs can hold them).
pub struct LlCall {
    /// Owns the state memory that `base` addresses.
    _state: CudaSlice<u8>,
    base: CUdeviceptr,
    stride: u64,
    half: u32,
    tokens: Vec<usize>,
    sent: bool,
    group: u64,
}

impl LlCall {
    pub(crate) fn new(group: &LlGroup, half: u32) -> Result<LlCall, Error> {
        let stride = group.call_layout().bytes;
        let g = group.local_ranks();
        let stream = group.gpu().stream();
        let state = stream
            .alloc_zeros::<u8>(g * stride as usize)
            .cuda("allocating a call's state")?;
        let base = {
            let (ptr, _sync) = state.device_ptr(stream);
            ptr
        };
        Ok(LlCall {
            _state: state,
            base,
            stride,
            half,
            tokens: vec![0; g],
            sent: false,
            group: group.id(),
        })
    }

    /// The window half this call uses (0 or 1).
    pub fn half(&self) -> u32 {
        self.half
    }

    /// Tokens per local rank of the last dispatch sent (as the host gave them).
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }

    /// What local rank `i` (`group.ranks()[i]`) received, as device views.
    pub fn received(&self, group: &LlGroup, i: usize) -> Result<Received, Error> {
        self.belongs_to(group)?;
        let local = group.local().get(i).ok_or_else(|| {
            Error::Input(format!(
                "local rank {i} of a group of {}",
                group.local_ranks()
            ))
        })?;
        let s = group.spec();
        let w = group.window();
        let (l, r, m, h) = (
            s.local_experts() as usize,
            s.ranks() as usize,
            s.max_tokens_per_rank() as usize,
            s.hidden() as usize,
        );
        let half = local.window + w.half(self.half);
        let payload_elem = Elem::of(s.dispatch_dtype());
        Ok(Received {
            recv_x: Tensor::view(half + w.recv_x_offset, &[l, r * m, h], payload_elem),
            recv_scales: (w.scale_count > 0).then(|| {
                Tensor::view(
                    half + w.recv_scales_offset,
                    &[l, r * m, w.scale_count as usize],
                    Elem::F32,
                )
            }),
            recv_count: Tensor::view(
                self.state_ptr(i) + group.call_layout().recv_count_offset,
                &[l],
                Elem::I32,
            ),
            recv_src: Tensor::view(half + w.recv_src_offset, &[l, r * m], Elem::I32),
            recv_range: Tensor::view(half + w.range_offset, &[l, r, 2], Elem::I32),
            y: Tensor::view(
                half + w.y_offset,
                &[l, r * m, h],
                Elem::of(s.combine_dtype()),
            ),
        })
    }

    pub(crate) fn state_ptr(&self, i: usize) -> CUdeviceptr {
        self.base + self.stride * i as u64
    }

    pub(crate) fn belongs_to(&self, group: &LlGroup) -> Result<(), Error> {
        if self.group != group.id() {
            return Err(Error::Input(
                "this call was made by another group (LlGroup::new_call)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn require_sent(&self, what: &str) -> Result<(), Error> {
        if self.sent {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "{what} before this call's dispatch_send"
            )))
        }
    }

    pub(crate) fn sent(&mut self, tokens: impl Iterator<Item = usize>) {
        for (slot, t) in self.tokens.iter_mut().zip(tokens) {
            *slot = t;
        }
        self.sent = true;
    }
}
