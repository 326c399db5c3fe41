//! The host-vector helper of [`HtGroup`]: inputs uploaded from host vectors into buffers the
//! group allocates on first use, one call through the device API on the GPU's stream, and the
//! results read back. It serves the GPU tests, `epc run`, `epc bench` and the main job; serving
//! stacks call the device API directly.

use cudarc::driver::CudaSlice;
use ep_codegen::{IndexDtype, KernelSource, Spec};

use super::group::{HtCombineInput, HtDispatchInput, HtGroup};
use super::notify::{HtNotify, NotifyResult};
use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::ll::{Elem, Stream, Tensor};
use crate::reference::ll::RankInput;
use crate::{Error, Jit, raw_copy, timing};

/// The helper's device buffers of one local rank, sized for `max_tokens_per_rank` tokens.
struct RankBuffers {
    x: CudaSlice<u16>,
    topk_idx: DeviceIndex,
    topk_weights: CudaSlice<f32>,
    out: CudaSlice<u16>,
    tokens: usize,
}

/// The helper's device buffers of every local rank.
pub(super) struct HostBuffers {
    ranks: Vec<RankBuffers>,
}

impl HostBuffers {
    fn new(group: &HtGroup) -> Result<HostBuffers, Error> {
        let d = group.spec.dims();
        let stream = group.gpu().stream();
        let ranks = group
            .ranks()
            .iter()
            .map(|_| -> Result<RankBuffers, Error> {
                Ok(RankBuffers {
                    x: stream
                        .alloc_zeros::<u16>((d.tokens * d.hidden).max(1))
                        .cuda("allocating x")?,
                    topk_idx: DeviceIndex::upload(
                        stream,
                        group.spec.index_dtype(),
                        &vec![-1; (d.tokens * d.top_k).max(1)],
                    )?,
                    topk_weights: stream
                        .alloc_zeros::<f32>((d.tokens * d.top_k).max(1))
                        .cuda("allocating topk_weights")?,
                    out: stream
                        .alloc_zeros::<u16>((d.tokens * d.hidden).max(1))
                        .cuda("allocating out")?,
                    tokens: 0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostBuffers { ranks })
    }

    /// The device API's inputs over these buffers.
    fn inputs(&self, spec: &Spec, stream: &cudarc::driver::CudaStream) -> Result<Inputs, Error> {
        let d = spec.dims();
        let act = Elem::of(spec.dtype());
        let mut dispatch = Vec::with_capacity(self.ranks.len());
        let mut combine = Vec::with_capacity(self.ranks.len());
        for b in &self.ranks {
            let t = b.tokens;
            let topk_idx = b.topk_idx.view(stream, &[t, d.top_k])?;
            let topk_weights = Tensor::of_slice(&b.topk_weights, stream, &[t, d.top_k], Elem::F32)?;
            dispatch.push(HtDispatchInput {
                x: Tensor::of_slice(&b.x, stream, &[t, d.hidden], act)?,
                topk_idx,
                topk_weights,
            });
            combine.push(HtCombineInput {
                topk_idx,
                topk_weights,
                out: Tensor::of_slice(&b.out, stream, &[t, d.hidden], act)?,
            });
        }
        Ok(Inputs { dispatch, combine })
    }
}

struct Inputs {
    dispatch: Vec<HtDispatchInput>,
    combine: Vec<HtCombineInput>,
}

/// What one rank received from a dispatch, read back: every row of the receive buffer in use
/// (flat: `recv_rows`; expert-major: `group_offset[L]`, padding rows included).
#[derive(Debug, Clone, PartialEq)]
pub struct HtReceived {
    /// `[rows, payload]`: each row's payload bytes (H 16-bit values, little-endian, or H FP8
    /// codes).
    pub recv_x: Vec<u8>,
    /// `[rows, H / 128]`: FP8 block scales (empty without FP8).
    pub recv_scales: Vec<f32>,
    /// `[rows, K]`: local expert ids, `-1` elsewhere.
    pub recv_topk_idx: Vec<i64>,
    /// `[rows, K]`.
    pub recv_topk_w: Vec<f32>,
    /// `[rows]`: `s * M + t` (`-1` for padding rows).
    pub recv_src: Vec<i32>,
    /// What notify gave this rank.
    pub notify: NotifyResult,
}

/// Mean times of one call's phases over all the group's ranks, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HtTimes {
    /// The layout kernel (counts per rank and expert), DeepEP's `get_dispatch_layout`.
    pub layout: f64,
    /// Notify (send and receive).
    pub notify: f64,
    /// Dispatch (send and receive).
    pub dispatch: f64,
    /// Combine (send and receive).
    pub combine: f64,
}

impl HtGroup {
    /// Dispatches the local ranks' tokens (`inputs[i]` of the i-th of [`HtGroup::ranks`], at
    /// most `max_tokens_per_rank` each) and reads back what each received.
    pub fn dispatch(&mut self, inputs: &[RankInput]) -> Result<Vec<HtReceived>, Error> {
        self.start_dispatch(inputs)?;
        self.finish_dispatch()
    }

    /// Uploads the inputs and launches the dispatch without waiting for it: a process driving
    /// several GPUs starts every GPU's dispatch before it finishes any.
    pub fn start_dispatch(&mut self, inputs: &[RankInput]) -> Result<(), Error> {
        let d = self.spec.dims();
        let ranks = self.ranks();
        if inputs.len() != ranks.len() {
            return Err(Error::Input(format!(
                "{} inputs for the {} ranks {ranks:?} this group drives",
                inputs.len(),
                ranks.len()
            )));
        }
        if self.host.is_none() {
            self.host = Some(HostBuffers::new(self)?);
        }
        self.received.clear();
        let stream = self.gpu().stream().clone();
        let host = self
            .host
            .as_mut()
            .ok_or_else(|| Error::Input("the helper's buffers were not allocated".into()))?;
        for ((input, b), rank) in inputs.iter().zip(&mut host.ranks).zip(&ranks) {
            let t = input.routing.num_tokens;
            if t > d.tokens
                || input.x.len() != t * d.hidden
                || input.routing.top_k != d.top_k
                || input.routing.topk_idx.len() != t * d.top_k
                || input.routing.topk_weights.len() != t * d.top_k
            {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens of x [{}] and top-{} (at most {} tokens of {} \
                     values, top-{})",
                    input.x.len(),
                    input.routing.top_k,
                    d.tokens,
                    d.hidden,
                    d.top_k
                )));
            }
            if t > 0 {
                stream
                    .memcpy_htod(&input.x, &mut b.x.slice_mut(..t * d.hidden))
                    .cuda("uploading x")?;
                b.topk_idx.write(&stream, &input.routing.topk_idx)?;
                stream
                    .memcpy_htod(
                        &input.routing.topk_weights,
                        &mut b.topk_weights.slice_mut(..t * d.top_k),
                    )
                    .cuda("uploading topk_weights")?;
            }
            b.tokens = t;
        }
        let inputs = self.host_inputs()?;
        self.dispatch_send(&inputs.dispatch, Stream::from(&*stream))?;
        self.dispatch_recv(Stream::from(&*stream))
    }

    /// Waits for the dispatch [`HtGroup::start_dispatch`] launched, reports its errors, and
    /// reads back what each local rank received.
    pub fn finish_dispatch(&mut self) -> Result<Vec<HtReceived>, Error> {
        let d = self.spec.dims();
        let stream = self.gpu().stream().clone();
        self.check(Stream::from(&*stream), "dispatch")?;
        self.received = self.counts(Stream::from(&*stream))?;
        let gpu = self.gpu().clone();
        let w = self.window;
        let mut out = Vec::with_capacity(self.received.len());
        for (i, notify) in self.received.iter().enumerate() {
            let rows = self.rows_in_use(notify);
            let base = self.notify.window_base(i);
            let read = |offset: u64, bytes: usize| -> Result<Vec<u8>, Error> {
                let mut v = vec![0u8; bytes];
                // SAFETY: the region lies inside local rank i's window (HtWindow's offsets
                // and sizes for at most max_recv_tokens_per_rank rows), which this group holds.
                unsafe { raw_copy::read(&gpu, base + offset, &mut v) }?;
                Ok(v)
            };
            let words = |bytes: Vec<u8>| -> Vec<[u8; 4]> {
                bytes
                    .chunks_exact(4)
                    .map(|b| [b[0], b[1], b[2], b[3]])
                    .collect()
            };
            let k = d.top_k;
            let idx_size = self.spec.index_dtype().size() as usize;
            let idx = read(w.recv_topk_idx_offset, rows * k * idx_size)?;
            out.push(HtReceived {
                recv_x: read(w.recv_x_offset, rows * w.payload_bytes as usize)?,
                recv_scales: words(read(
                    w.recv_scales_offset,
                    rows * w.scale_count as usize * 4,
                )?)
                .into_iter()
                .map(f32::from_le_bytes)
                .collect(),
                recv_topk_idx: match self.spec.index_dtype() {
                    IndexDtype::I64 => idx
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                    IndexDtype::I32 => words(idx)
                        .into_iter()
                        .map(|b| i64::from(i32::from_le_bytes(b)))
                        .collect(),
                },
                recv_topk_w: words(read(w.recv_topk_w_offset, rows * k * 4)?)
                    .into_iter()
                    .map(f32::from_le_bytes)
                    .collect(),
                recv_src: words(read(w.recv_src_offset, rows * 4)?)
                    .into_iter()
                    .map(i32::from_le_bytes)
                    .collect(),
                notify: notify.clone(),
            });
        }
        Ok(out)
    }

    /// Combines after [`HtGroup::dispatch`]: `y[i]` is what the i-th local rank returns for
    /// each row in use of its buffer (`rows x H` values); gives each local rank's `out [T, H]`.
    pub fn combine(&mut self, y: &[Vec<u16>]) -> Result<Vec<Vec<u16>>, Error> {
        self.start_combine(y)?;
        self.finish_combine()
    }

    /// Writes `y` and launches combine without waiting for it (see
    /// [`HtGroup::start_dispatch`]).
    pub fn start_combine(&mut self, y: &[Vec<u16>]) -> Result<(), Error> {
        let d = self.spec.dims();
        if y.len() != self.received.len() || self.received.len() != self.ranks().len() {
            return Err(Error::Input(
                "combine needs a finished dispatch first, and y for every local rank".into(),
            ));
        }
        for (i, rows) in y.iter().enumerate() {
            let received = self.rows_in_use(&self.received[i]);
            let expected = received * d.hidden;
            if rows.len() != expected {
                return Err(Error::Input(format!(
                    "rank {}: y holds {} values, its {received} rows need {expected}",
                    self.ranks()[i],
                    rows.len(),
                )));
            }
            let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
            // SAFETY: the y region of local rank i's window holds max_recv_tokens_per_rank rows
            // of H values, at least the rows checked above; no kernel runs on it now (the
            // dispatch was finished).
            unsafe {
                raw_copy::write(
                    self.gpu(),
                    self.notify.window_base(i) + self.window.y_offset,
                    &bytes,
                )?;
            }
        }
        let stream = self.gpu().stream().clone();
        let inputs = self.host_inputs()?;
        self.combine_send(Stream::from(&*stream))?;
        self.combine_recv(&inputs.combine, Stream::from(&*stream))
    }

    /// Waits for the combine [`HtGroup::start_combine`] launched and reads each local rank's
    /// `out [T, H]`.
    pub fn finish_combine(&mut self) -> Result<Vec<Vec<u16>>, Error> {
        let d = self.spec.dims();
        let stream = self.gpu().stream().clone();
        self.check(Stream::from(&*stream), "combine")?;
        let host = self
            .host
            .as_ref()
            .ok_or_else(|| Error::Input("finish_combine needs start_combine first".into()))?;
        host.ranks
            .iter()
            .map(|b| {
                if b.tokens == 0 {
                    return Ok(Vec::new());
                }
                stream
                    .clone_dtoh(&b.out.slice(..b.tokens * d.hidden))
                    .cuda("reading out")
            })
            .collect()
    }

    /// Closes groups together, as [`HtNotify::close`] does (needed over NCCL only).
    pub fn close(mut groups: Vec<HtGroup>) -> Result<(), Error> {
        let mut notifies: Vec<&mut HtNotify> = groups.iter_mut().map(|g| &mut g.notify).collect();
        HtNotify::close_all(&mut notifies)
    }

    /// Mean times of the last call's phases replayed `iters` times after `warmup` replays (the
    /// same routings and rows; the launches only, nothing read back), in microseconds. Needs a
    /// [`HtGroup::dispatch`] first.
    pub fn time_phases(&mut self, warmup: usize, iters: usize) -> Result<HtTimes, Error> {
        if self.received.is_empty() {
            return Err(Error::Input("time_phases needs a dispatch first".into()));
        }
        let gpu = self.gpu().clone();
        let stream = gpu.stream().clone();
        let s = Stream::from(&*stream);
        let inputs = self.host_inputs()?;
        let call = |group: &mut HtGroup, events: Option<&[cudarc::driver::CudaEvent]>| {
            let mark = |i: usize| match events {
                Some(e) => timing::record(&gpu, &e[i]),
                None => Ok(()),
            };
            mark(0)?;
            group.launch_layouts(&inputs.dispatch, s)?;
            mark(1)?;
            let ids: Vec<_> = inputs.dispatch.iter().map(|i| i.topk_idx.ptr()).collect();
            group.notify.launch_phases(s, &ids)?;
            mark(2)?;
            group.dispatch_send_data(&inputs.dispatch, s)?;
            group.dispatch_recv(s)?;
            mark(3)?;
            group.combine_send(s)?;
            group.combine_recv(&inputs.combine, s)?;
            mark(4)
        };
        for _ in 0..warmup {
            call(self, None)?;
        }
        let iters = iters.max(1);
        let events = (0..5)
            .map(|_| timing::timing_event(&gpu))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sums = [0f64; 4];
        for _ in 0..iters {
            call(self, Some(&events))?;
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum += timing::elapsed_us(&events[i], &events[i + 1])?;
            }
        }
        self.check(s, "a timed call")?;
        let n = iters as f64;
        Ok(HtTimes {
            layout: sums[0] / n,
            notify: sums[1] / n,
            dispatch: sums[2] / n,
            combine: sums[3] / n,
        })
    }

    /// Mean time of the last call's row copies alone, replayed `iters` times after `warmup`
    /// (`fanout`: the spec's rendered [`ep_codegen::kernels::ht::fanout_plan`]), in
    /// microseconds: each token's row read once and stored to every row the dispatch gave it,
    /// with the send's copy loop and nothing else. The floor the dispatch's bookkeeping adds to;
    /// it rewrites the received rows with the values they hold. Needs a [`HtGroup::dispatch`]
    /// first.
    pub fn time_fanout(
        &mut self,
        jit: &Jit,
        fanout: &KernelSource,
        warmup: usize,
        iters: usize,
    ) -> Result<f64, Error> {
        if self.received.is_empty() {
            return Err(Error::Input("time_fanout needs a dispatch first".into()));
        }
        if fanout.name != "ht_fanout" || fanout.spec_hash != self.spec.hash() {
            return Err(Error::Input(format!(
                "{} of spec {} is not the fan-out copy of {}",
                fanout.name,
                fanout.spec_name,
                self.spec.name()
            )));
        }
        let gpu = self.gpu().clone();
        let function = jit
            .load(&gpu, fanout)?
            .functions
            .into_iter()
            .next()
            .ok_or_else(|| Error::Input("the fan-out copy has no entry".into()))?;
        let stream = gpu.stream().clone();
        let s = Stream::from(&*stream);
        let inputs = self.host_inputs()?;
        for _ in 0..warmup {
            self.launch_fanout(&function, &inputs.dispatch, s)?;
        }
        let (start, stop) = (timing::timing_event(&gpu)?, timing::timing_event(&gpu)?);
        timing::record(&gpu, &start)?;
        for _ in 0..iters.max(1) {
            self.launch_fanout(&function, &inputs.dispatch, s)?;
        }
        timing::record(&gpu, &stop)?;
        Ok(timing::elapsed_us(&start, &stop)? / iters.max(1) as f64)
    }

    fn host_inputs(&self) -> Result<Inputs, Error> {
        let host = self
            .host
            .as_ref()
            .ok_or_else(|| Error::Input("the helper needs a dispatch first".into()))?;
        host.inputs(&self.spec, self.gpu().stream())
    }
}
