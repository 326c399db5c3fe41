//! [`HtGroup`]: high-throughput dispatch and combine of one spec on the ranks a process drives on
//! one GPU (R virtual ranks, or one NCCL rank), on device tensors the caller owns and the
//! caller's stream. A call is four launches sequences, none of which waits for the host:
//! - [`HtGroup::dispatch_send`]: per rank, the layout kernel (counts per rank and expert), notify
//!   (every rank learns where its rows go and what it receives), then the dispatch send (each row
//!   written straight into its final place in the receiver's window);
//! - [`HtGroup::dispatch_recv`]: waits for every sender; then [`HtGroup::received`]'s views hold
//!   the rows, their slots, weights and sources, and the per-expert counts and offsets;
//! - the caller's experts write `y` in place (the view's rows), then [`HtGroup::combine_send`];
//! - [`HtGroup::combine_recv`]: pulls each token's rows and reduces them into the caller's `out`.
//!
//! Errors the kernels find (a bad expert id, a buffer overflow, a peer that never signals) are
//! recorded on the device and reported by [`HtGroup::check`], the one call that waits for the
//! host. Every launch is CUDA-graph capturable; a replay takes new routings of the same token
//! counts. The host-vector helper built on this API is in `host.rs`.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use ep_codegen::kernels::ht::{
    DATA_THREADS, HT_ARGS_BYTES, HtWindow, MAX_DISPATCH_BLOCKS, NotifyOutputs, destinations,
    hierarchical,
};
use ep_codegen::kernels::ll::MAX_LAUNCH_RANKS;
use ep_codegen::{KernelSource, Layout, Spec};

use super::host::HostBuffers;
use super::notify::{HtNotify, NotifyResult};
use crate::error::CudaContextExt;
use crate::launch::{Grid, launch};
use crate::ll::{Elem, Stream, Tensor};
use crate::transport::NcclComm;
use crate::{Error, Gpu, Jit, LayoutKernel};

/// One rank's entry of dispatch's and combine's `LaunchArgs` (`partials/ht_constants.hbs`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(super) struct HtArgs {
    x: CUdeviceptr,
    topk_idx: CUdeviceptr,
    topk_weights: CUdeviceptr,
    is_token_in_rank: CUdeviceptr,
    notify_out: CUdeviceptr,
    positions: CUdeviceptr,
    out: CUdeviceptr,
    epoch: CUdeviceptr,
    status: CUdeviceptr,
    peers: CUdeviceptr,
    rank: i32,
    tokens: i32,
}

const _: () = assert!(std::mem::size_of::<HtArgs>() == HT_ARGS_BYTES);

/// Blocks per rank of the combine receive: at least this many, and enough for two blocks per
/// SM over the ranks a GPU runs (one NCCL rank pulls its rows with the whole GPU).
const COMBINE_BLOCKS: u32 = 64;
const COMBINE_BLOCKS_MAX: u32 = 1024;

/// The SMs the data kernels of a GPU's ranks spread over: `tuning.sms`, at most the GPU's, else
/// all of them.
fn sms_of(spec: &Spec, gpu: &Gpu) -> u32 {
    spec.tuning().sms.map_or(gpu.sms(), |s| s.min(gpu.sms()))
}

/// One rank's inputs of a dispatch: `x [T, H]` (the activation dtype), `topk_idx [T, K]` (the
/// spec's index dtype, `-1` = no expert) and `topk_weights [T, K]` (f32), with
/// `T <= max_tokens_per_rank` chosen per rank.
#[derive(Debug, Clone, Copy)]
pub struct HtDispatchInput {
    /// `[T, H]` activations.
    pub x: Tensor,
    /// `[T, K]` expert ids.
    pub topk_idx: Tensor,
    /// `[T, K]` f32 weights.
    pub topk_weights: Tensor,
}

/// One rank's tensors of a combine: the call's `topk_idx` and `topk_weights` (the expert-major
/// combine weighs each slot's row with them) and the output `out [T, H]` (the activation dtype),
/// T as in the call's dispatch.
#[derive(Debug, Clone, Copy)]
pub struct HtCombineInput {
    /// `[T, K]` expert ids, as dispatched.
    pub topk_idx: Tensor,
    /// `[T, K]` f32 weights.
    pub topk_weights: Tensor,
    /// `[T, H]`, written by the combine.
    pub out: Tensor,
}

/// What one rank received: views into its window (and notify's outputs), valid on the stream
/// once [`HtGroup::dispatch_recv`] has run, until the next dispatch. Every view is sized for the
/// whole buffer (`C = max_recv_tokens_per_rank` rows); the rows in use are the first
/// `recv_rows` (flat) or `group_offset[L]` (expert-major, padding rows zero with source `-1`),
/// which stay on the device unless the caller reads them.
#[derive(Debug, Clone, Copy)]
pub struct HtReceivedViews {
    /// `[C, H]` payload in the dispatch dtype (FP8: e4m3 codes).
    pub recv_x: Tensor,
    /// `[C, H / 128]` f32 FP8 block scales (None without FP8).
    pub recv_scales: Option<Tensor>,
    /// `[C, K]` the row's token's slots as local expert ids, `-1` for slots elsewhere.
    pub recv_topk_idx: Tensor,
    /// `[C, K]` f32: their weights, `0` where `-1`.
    pub recv_topk_w: Tensor,
    /// `[C]` i32: `s * M + t` of each row.
    pub recv_src: Tensor,
    /// `[C, H]` in the activation dtype: what this rank returns for each row, written in place
    /// by the caller's experts before [`HtGroup::combine_send`] (flat: the row's experts already
    /// weighted and summed; expert-major: the expert's output for that slot).
    pub y: Tensor,
    /// `[1]` i32: rows received (flat layout).
    pub recv_rows: Tensor,
    /// `[L]` i32: slots naming each local expert (`num_recv_tokens_per_expert`).
    pub num_recv_tokens_per_expert: Tensor,
    /// `[L + 1]` i32: the first row of each local expert's group (expert-major), the last entry
    /// the rows in use.
    pub group_offset: Tensor,
}

/// Device state of one local rank beside notify's: the layout's `is_token_in_rank [M, R]` and
/// each token's row on each destination, `positions [M, D]` (D = R flat, K expert-major).
struct RankMaps {
    is_token_in_rank: CudaSlice<bool>,
    positions: CudaSlice<i32>,
}

/// High-throughput dispatch and combine of one spec on the ranks this process drives on one
/// GPU: all R as virtual ranks, or one NCCL rank.
pub struct HtGroup {
    pub(super) notify: HtNotify,
    pub(super) spec: Spec,
    layout: LayoutKernel,
    /// Send, (hierarchical: forward,) receive.
    dispatch: Vec<CudaFunction>,
    /// Send, (hierarchical: reduce,) receive.
    combine: Vec<CudaFunction>,
    pub(super) window: HtWindow,
    maps: Vec<RankMaps>,
    /// Tokens of each local rank's last dispatch (combine's tensors must match).
    tokens: Vec<usize>,
    /// Whether a dispatch was sent (combine and the views need one).
    sent: bool,
    /// Blocks per rank of the dispatch send.
    send_blocks: u32,
    /// The host-vector helper's buffers, allocated on its first use.
    pub(super) host: Option<HostBuffers>,
    /// What notify gave each local rank in the helper's last dispatch.
    pub(super) received: Vec<NotifyResult>,
}

impl HtGroup {
    /// All R ranks of `spec` on `gpu`, with the spec's kernels compiled by `jit`.
    pub fn virtual_ranks(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<HtGroup, Error> {
        let notify = HtNotify::virtual_ranks(gpu, jit, spec, kernels)?;
        HtGroup::build(gpu, jit, spec, kernels, notify)
    }

    /// The groups of the NCCL ranks this process drives, one member `(gpu, communicator)` per
    /// GPU (see [`crate::LlGroup::nccl`]). Collective: every rank of the communicators calls
    /// this at the same time, with the same spec.
    pub fn nccl(
        members: &[(&Gpu, &NcclComm)],
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<Vec<HtGroup>, Error> {
        let notifies = HtNotify::nccl(members, jit, spec, kernels)?;
        members
            .iter()
            .zip(notifies)
            .map(|((gpu, _), notify)| HtGroup::build(gpu, jit, spec, kernels, notify))
            .collect()
    }

    fn build(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
        notify: HtNotify,
    ) -> Result<HtGroup, Error> {
        let find = |name: &str| {
            kernels
                .iter()
                .find(|k| k.name == name && k.spec_hash == spec.hash())
                .ok_or_else(|| {
                    Error::Input(format!("no {name} kernel rendered for {}", spec.name()))
                })
        };
        let (layout, _) = LayoutKernel::load(gpu, jit, spec, find("layout")?)?;
        // Send and receive, with the hierarchical path's middle entry between them.
        let entries = if hierarchical(spec) { 3 } else { 2 };
        let load = |name: &str| -> Result<Vec<CudaFunction>, Error> {
            let functions = jit.load(gpu, find(name)?)?.functions;
            if functions.len() != entries {
                return Err(Error::Input(format!(
                    "{name} of `{}` has {} entries; {entries} expected",
                    spec.name(),
                    functions.len()
                )));
            }
            Ok(functions)
        };
        let dispatch = load("ht_dispatch")?;
        let combine = load("ht_combine")?;
        let d = spec.dims();
        let stream = gpu.stream();
        let maps = notify
            .ranks()
            .iter()
            .map(|_| -> Result<RankMaps, Error> {
                Ok(RankMaps {
                    is_token_in_rank: stream
                        .alloc_zeros::<bool>((d.tokens * d.ranks).max(1))
                        .cuda("allocating is_token_in_rank")?,
                    positions: stream
                        .alloc_zeros::<i32>((d.tokens * destinations(spec) as usize).max(1))
                        .cuda("allocating positions")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local = maps.len();
        // As many send blocks as fit at once on the SMs the spec allows (tuning.sms, default
        // the whole GPU), shared by the ranks the GPU runs.
        let resident = dispatch[0]
            .occupancy_max_active_blocks_per_multiprocessor(DATA_THREADS, 0, None)
            .cuda("asking the dispatch send's occupancy")?
            .max(1);
        let send_blocks =
            (resident * sms_of(spec, gpu) / local.max(1) as u32).clamp(1, MAX_DISPATCH_BLOCKS);
        Ok(HtGroup {
            notify,
            spec: spec.clone(),
            layout,
            dispatch,
            combine,
            window: HtWindow::of(spec),
            maps,
            tokens: vec![0; local],
            sent: false,
            send_blocks,
            host: None,
            received: Vec::new(),
        })
    }

    /// Changes how long every wait of the group's kernels lasts before it gives up and records
    /// a timeout (which [`HtGroup::check`] reports).
    pub fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.notify.set_timeout(timeout);
    }

    /// The ranks this group drives, in the order of every per-rank argument and result.
    pub fn ranks(&self) -> Vec<usize> {
        self.notify.ranks()
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        self.notify.gpu()
    }

    /// Starts a call: per local rank, the layout of its routing, notify, and the rows written
    /// into the receivers' windows. `inputs[i]` belongs to `ranks()[i]`. Ids outside `[-1, E)`
    /// are skipped (nothing is sent for them) and reported by [`HtGroup::check`], as is a
    /// receive buffer too small (the rows past it are not written).
    pub fn dispatch_send(
        &mut self,
        inputs: &[HtDispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        self.expect_ranks(inputs.len(), "dispatch inputs")?;
        let d = self.spec.dims();
        let act = Elem::of(self.spec.dtype());
        let ranks = self.ranks();
        for (input, &rank) in inputs.iter().zip(&ranks) {
            let t = input.x.shape().first().copied().unwrap_or(0);
            if t > d.tokens {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens exceed max_tokens_per_rank = {}",
                    d.tokens
                )));
            }
            input.x.expect(rank, "x", &[t, d.hidden], act)?;
            self.expect_routing(rank, t, &input.topk_idx, &input.topk_weights)?;
        }
        self.bind()?;
        self.launch_layouts(inputs, stream)?;
        let ids: Vec<CUdeviceptr> = inputs.iter().map(|i| i.topk_idx.ptr()).collect();
        self.notify.launch_phases(stream, &ids)?;
        self.dispatch_send_data(inputs, stream)
    }

    /// The routing layout of one rank's `topk_idx [T, K]` into the caller's tensors, on `stream`
    /// with no host synchronization (DeepEP's `get_dispatch_layout`): `counters [R + E + 2]` i32
    /// gets the tokens per rank `[0, R)`, the slots per expert `[R, R + E)`, the number of slots
    /// whose id is outside `[-1, E)` and, at `R + E + 1`, `2^31 - 1 - (t * K + k)` of the first
    /// such slot (0 when none); `is_token_in_rank [T, R]` (bool) whether token t goes to rank r.
    /// T <= max_tokens_per_rank. Bad ids are skipped, never written out of bounds.
    pub fn layout(
        &self,
        topk_idx: Tensor,
        counters: Tensor,
        is_token_in_rank: Tensor,
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        let d = self.spec.dims();
        let rank = self.ranks().first().copied().unwrap_or(0);
        let t = topk_idx.shape().first().copied().unwrap_or(0);
        if t > d.tokens {
            return Err(Error::Input(format!(
                "layout: {t} tokens exceed max_tokens_per_rank = {}",
                d.tokens
            )));
        }
        topk_idx.expect(
            rank,
            "topk_idx",
            &[t, d.top_k],
            Elem::of_index(self.spec.index_dtype()),
        )?;
        counters.expect(rank, "counters", &[d.ranks + d.experts + 2], Elem::I32)?;
        is_token_in_rank.expect(rank, "is_token_in_rank", &[t, d.ranks], Elem::Bool)?;
        self.bind()?;
        // SAFETY: the three tensors were checked against the shapes and types the kernel
        // indexes (T x K ids, R + E + 2 ints, T x R bytes); the caller keeps them alive until the
        // launch completes (`Tensor`'s contract), and `bind` made the GPU's context current.
        unsafe {
            self.layout.launch_raw(
                stream,
                topk_idx.ptr(),
                t,
                counters.ptr(),
                is_token_in_rank.ptr(),
            )
        }
    }

    /// The layout kernel of every local rank, into notify's counters.
    pub(super) fn launch_layouts(
        &self,
        inputs: &[HtDispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        for (i, input) in inputs.iter().enumerate() {
            let in_rank = {
                let (p, _sync) = self.maps[i]
                    .is_token_in_rank
                    .device_ptr(self.gpu().stream());
                p
            };
            // SAFETY: topk_idx holds T x K ids of the index type (checked above), the counters
            // are notify's R + E + 2 ints of local rank i, is_token_in_rank holds M x R >= T x R
            // bytes; all stay alive while the group does (the caller keeps its tensors alive
            // until the launches complete, `Tensor`'s contract).
            unsafe {
                self.layout.launch_raw(
                    stream,
                    input.topk_idx.ptr(),
                    input.topk_idx.shape()[0],
                    self.notify.counters_ptr(i),
                    in_rank,
                )?;
            }
        }
        Ok(())
    }

    /// The dispatch send of every local rank (after notify).
    pub(super) fn dispatch_send_data(
        &mut self,
        inputs: &[HtDispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        for (t, input) in self.tokens.iter_mut().zip(inputs) {
            *t = input.x.shape()[0];
        }
        let args = self.send_args(inputs);
        self.launch_one(&self.dispatch[0], self.send_blocks, &args, stream)?;
        self.sent = true;
        Ok(())
    }

    /// The send's arguments: the caller's tensors over the group's part.
    fn send_args(&self, inputs: &[HtDispatchInput]) -> Vec<HtArgs> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| HtArgs {
                x: input.x.ptr(),
                topk_idx: input.topk_idx.ptr(),
                topk_weights: input.topk_weights.ptr(),
                tokens: input.x.shape()[0] as i32,
                ..self.rank_args(i)
            })
            .collect()
    }

    /// Launches the dispatch's row copies alone (`fanout`: the spec's `ht_fanout` entry, see
    /// [`ep_codegen::kernels::ht::fanout_plan`]) on the send's blocks, with the inputs of the
    /// last dispatch (same tokens, same routing): every row is rewritten with its value.
    pub(super) fn launch_fanout(
        &self,
        fanout: &CudaFunction,
        inputs: &[HtDispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        self.require_sent("the fan-out copy")?;
        self.bind()?;
        self.launch_one(fanout, self.send_blocks, &self.send_args(inputs), stream)
    }

    /// Completes a dispatch: (hierarchical: each proxy forwards the rows staged for its domain,
    /// then) waits for every sender's rows (and, expert-major, zeroes the groups' padding rows).
    /// [`HtGroup::received`]'s views are then valid on `stream`.
    pub fn dispatch_recv(&self, stream: Stream<'_>) -> Result<(), Error> {
        self.require_sent("dispatch_recv")?;
        self.bind()?;
        let args: Vec<HtArgs> = (0..self.maps.len()).map(|i| self.rank_args(i)).collect();
        if let [_, forward, _] = &self.dispatch[..] {
            self.launch_one(forward, self.send_blocks, &args, stream)?;
        }
        let recv = self
            .dispatch
            .last()
            .ok_or_else(|| Error::Input("no dispatch receive".into()))?;
        self.launch_one(recv, self.dispatch_recv_blocks(), &args, stream)
    }

    /// The views of what local rank `i` (of [`HtGroup::ranks`]) received.
    pub fn received(&self, i: usize) -> Result<HtReceivedViews, Error> {
        if i >= self.maps.len() {
            return Err(Error::Input(format!(
                "local rank {i} of a group of {}",
                self.maps.len()
            )));
        }
        let d = self.spec.dims();
        let w = &self.window;
        let c = w.rows as usize;
        let base = self.notify.window_base(i);
        let out = self.notify.rank_state(i).out;
        let o = NotifyOutputs::of(&self.spec);
        let int = |index: u32| out + u64::from(index) * 4;
        Ok(HtReceivedViews {
            recv_x: Tensor::view(
                base + w.recv_x_offset,
                &[c, d.hidden],
                Elem::of(self.spec.dispatch_dtype()),
            ),
            recv_scales: (w.scale_count > 0).then(|| {
                Tensor::view(
                    base + w.recv_scales_offset,
                    &[c, w.scale_count as usize],
                    Elem::F32,
                )
            }),
            recv_topk_idx: Tensor::view(
                base + w.recv_topk_idx_offset,
                &[c, d.top_k],
                Elem::of_index(self.spec.index_dtype()),
            ),
            recv_topk_w: Tensor::view(base + w.recv_topk_w_offset, &[c, d.top_k], Elem::F32),
            recv_src: Tensor::view(base + w.recv_src_offset, &[c], Elem::I32),
            y: Tensor::view(
                base + w.y_offset,
                &[c, d.hidden],
                Elem::of(self.spec.combine_dtype()),
            ),
            recv_rows: Tensor::view(int(o.recv_rows), &[1], Elem::I32),
            num_recv_tokens_per_expert: Tensor::view(
                int(o.recv_tokens_per_expert),
                &[d.local],
                Elem::I32,
            ),
            group_offset: Tensor::view(int(o.group_offset), &[d.local + 1], Elem::I32),
        })
    }

    /// Announces that this group's experts have written `y` (on `stream`).
    pub fn combine_send(&self, stream: Stream<'_>) -> Result<(), Error> {
        self.require_sent("combine_send")?;
        self.bind()?;
        let args: Vec<HtArgs> = (0..self.maps.len()).map(|i| self.rank_args(i)).collect();
        self.launch_one(&self.combine[0], 1, &args, stream)
    }

    /// Pulls the rows returned for each local rank's tokens and reduces them into `out`
    /// (DESIGN.md "Semantics": flat, summed by domain in rank order; expert-major, weighted over
    /// the slots in k order; f32 sums, each domain's partial rounded; hierarchical: each proxy
    /// first reduces its domain's rows of the tokens it forwarded). `inputs[i]` belongs to
    /// `ranks()[i]`.
    pub fn combine_recv(&self, inputs: &[HtCombineInput], stream: Stream<'_>) -> Result<(), Error> {
        self.require_sent("combine_recv")?;
        self.expect_ranks(inputs.len(), "combine inputs")?;
        let d = self.spec.dims();
        let act = Elem::of(self.spec.dtype());
        for ((input, &rank), &t) in inputs.iter().zip(&self.ranks()).zip(&self.tokens) {
            self.expect_routing(rank, t, &input.topk_idx, &input.topk_weights)?;
            input.out.expect(rank, "out", &[t, d.hidden], act)?;
        }
        self.bind()?;
        let args: Vec<HtArgs> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| HtArgs {
                topk_idx: input.topk_idx.ptr(),
                topk_weights: input.topk_weights.ptr(),
                out: input.out.ptr(),
                ..self.rank_args(i)
            })
            .collect();
        if let [_, reduce, _] = &self.combine[..] {
            self.launch_one(reduce, self.combine_blocks(), &args, stream)?;
        }
        let recv = self
            .combine
            .last()
            .ok_or_else(|| Error::Input("no combine receive".into()))?;
        self.launch_one(recv, self.combine_blocks(), &args, stream)
    }

    /// Waits for `stream`, then reports the first error the kernels recorded (the lowest local
    /// rank's: a bad expert id, a receive buffer too small, a peer that never signalled) and
    /// clears it, so the next call starts clean. The one place that waits for the host; call it
    /// when a result is wanted, not per step.
    pub fn check(&mut self, stream: Stream<'_>, phase: &'static str) -> Result<(), Error> {
        self.sync(stream)?;
        self.notify.take_status(phase)
    }

    /// Waits for `stream` and reads what notify gave each local rank in the last dispatch (the
    /// counts and offsets, on the host); the hot path never needs this.
    pub fn counts(&self, stream: Stream<'_>) -> Result<Vec<NotifyResult>, Error> {
        self.sync(stream)?;
        self.notify.read_outputs()
    }

    /// Rows of a rank's receive buffer in use after a dispatch: flat, the rows received;
    /// expert-major, the padded groups (`group_offset[L]`); at most the buffer's rows.
    pub fn rows_in_use(&self, notify: &NotifyResult) -> usize {
        let rows = match self.spec.high_throughput().map(|h| h.layout) {
            Some(Layout::ExpertMajor) => notify.group_offset.last().copied().unwrap_or(0),
            _ => notify.recv_rows,
        };
        (rows.max(0) as usize).min(self.window.rows as usize)
    }

    fn sync(&self, stream: Stream<'_>) -> Result<(), Error> {
        self.bind()?;
        // SAFETY: the stream belongs to this GPU's context (`Stream::from_raw`'s contract).
        unsafe { cudarc::driver::result::stream::synchronize(stream.raw()) }
            .cuda("waiting for the stream")
    }

    fn bind(&self) -> Result<(), Error> {
        self.gpu()
            .context()
            .bind_to_thread()
            .cuda("making the GPU's context current")
    }

    fn expect_ranks(&self, n: usize, what: &str) -> Result<(), Error> {
        if n != self.maps.len() {
            return Err(Error::Input(format!(
                "{what}: {n} given for the {} ranks {:?} this group drives",
                self.maps.len(),
                self.ranks()
            )));
        }
        Ok(())
    }

    /// Checks rank `rank`'s `topk_idx [T, K]` (the index dtype) and `topk_weights [T, K]` (f32).
    fn expect_routing(
        &self,
        rank: usize,
        t: usize,
        topk_idx: &Tensor,
        topk_weights: &Tensor,
    ) -> Result<(), Error> {
        let k = self.spec.top_k() as usize;
        topk_idx.expect(
            rank,
            "topk_idx",
            &[t, k],
            Elem::of_index(self.spec.index_dtype()),
        )?;
        topk_weights.expect(rank, "topk_weights", &[t, k], Elem::F32)
    }

    fn require_sent(&self, what: &str) -> Result<(), Error> {
        if !self.sent {
            return Err(Error::Input(format!("{what} needs a dispatch_send first")));
        }
        Ok(())
    }

    /// The group's part of local rank `i`'s arguments (no caller tensors; T of its last
    /// dispatch).
    pub(super) fn rank_args(&self, i: usize) -> HtArgs {
        let stream = self.gpu().stream();
        let state = self.notify.rank_state(i);
        let (in_rank, _s1) = self.maps[i].is_token_in_rank.device_ptr(stream);
        let (positions, _s2) = self.maps[i].positions.device_ptr(stream);
        HtArgs {
            is_token_in_rank: in_rank,
            notify_out: state.out,
            positions,
            epoch: state.epoch,
            status: state.status,
            peers: state.peers,
            rank: state.rank as i32,
            tokens: self.tokens[i] as i32,
            ..HtArgs::default()
        }
    }

    /// Blocks per rank of the dispatch receive: one waits for the senders; in expert-major
    /// layout as many as combine's zero the groups' padding rows meanwhile.
    pub(super) fn dispatch_recv_blocks(&self) -> u32 {
        match self.spec.high_throughput().map(|h| h.layout) {
            Some(Layout::ExpertMajor) => self.combine_blocks(),
            _ => 1,
        }
    }

    /// Blocks per rank of the combine receive (see [`COMBINE_BLOCKS`]; a tuned `sms` sets the
    /// SMs they spread over, with no floor).
    pub(super) fn combine_blocks(&self) -> u32 {
        let local = self.maps.len().max(1) as u32;
        let floor = if self.spec.tuning().sms.is_some() {
            1
        } else {
            COMBINE_BLOCKS
        };
        (2 * sms_of(&self.spec, self.gpu()) / local).clamp(floor, COMBINE_BLOCKS_MAX)
    }

    /// Launches `f` for every local rank (`blocks` per rank), in chunks of at most
    /// [`MAX_LAUNCH_RANKS`] ranks. The GPU's context must be current.
    pub(super) fn launch_one(
        &self,
        f: &CudaFunction,
        blocks: u32,
        args: &[HtArgs],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        let grid = Grid {
            blocks,
            threads: DATA_THREADS,
            cooperative: false,
            // The HT entries read before any wait of their own.
            dependent: false,
        };
        for chunk in args.chunks(MAX_LAUNCH_RANKS as usize) {
            // SAFETY: `f` is an ht_dispatch or ht_combine entry of this spec (LaunchArgs of
            // HtArgs, launch_ranks entries); the group's addresses point into buffers it owns,
            // sized for max_tokens_per_rank tokens and the spec's window, and the caller's
            // tensors were checked against the shapes the kernels index (`Tensor`'s contract
            // keeps them alive until the launches complete).
            unsafe { launch(f, grid, chunk, self.notify.timeout_ns(), stream)? };
        }
        Ok(())
    }
}
