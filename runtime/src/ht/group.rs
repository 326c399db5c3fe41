//! [`HtGroup`]: high-throughput dispatch and combine (either layout, 16-bit or FP8 payloads) of one spec
//! on the ranks a process drives on one GPU (R virtual ranks, or one NCCL rank), driven from
//! host vectors: the helper behind the GPU tests, `epc run`, `epc bench` and the main job. Each
//! call runs the layout kernel per rank, notify, then the dispatch kernels; combine takes what
//! each rank returns for its rows.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use ep_codegen::kernels::ht::{
    DATA_THREADS, DISPATCH_BLOCKS, HT_ARGS_BYTES, HtWindow, data_path_built, destinations,
};
use ep_codegen::kernels::ll::MAX_LAUNCH_RANKS;
use ep_codegen::{IndexDtype, KernelSource, Layout, Spec};

use super::notify::{HtNotify, NotifyResult};
use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::launch::{Grid, launch};
use crate::ll::Stream;
use crate::reference::ll::RankInput;
use crate::transport::NcclComm;
use crate::{Error, Gpu, Jit, LayoutKernel, raw_copy};

/// One rank's entry of dispatch's and combine's `LaunchArgs` (`partials/ht_constants.hbs`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct HtArgs {
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

/// One rank's device buffers, sized for `max_tokens_per_rank` tokens.
struct RankBuffers {
    x: CudaSlice<u16>,
    topk_idx: DeviceIndex,
    topk_weights: CudaSlice<f32>,
    is_token_in_rank: CudaSlice<bool>,
    positions: CudaSlice<i32>,
    out: CudaSlice<u16>,
    tokens: usize,
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
    /// Notify (send and receive).
    pub notify: f64,
    /// Dispatch (send and receive).
    pub dispatch: f64,
    /// Combine (send and receive).
    pub combine: f64,
}

/// High-throughput dispatch and combine of one spec on the ranks this process drives on one
/// GPU: all R as virtual ranks, or one NCCL rank.
pub struct HtGroup {
    notify: HtNotify,
    spec: Spec,
    layout: LayoutKernel,
    dispatch: [CudaFunction; 2],
    combine: [CudaFunction; 2],
    window: HtWindow,
    ranks: Vec<RankBuffers>,
    received: Vec<NotifyResult>,
}

impl HtGroup {
    /// All R ranks of `spec` on `gpu`, with the spec's kernels compiled by `jit`.
    pub fn virtual_ranks(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<HtGroup, Error> {
        check_built(spec)?;
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
        check_built(spec)?;
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
        let pair = |name: &str| -> Result<[CudaFunction; 2], Error> {
            <[CudaFunction; 2]>::try_from(jit.load(gpu, find(name)?)?.functions)
                .map_err(|_| Error::Input(format!("{name} must have a send and a receive entry")))
        };
        let dispatch = pair("ht_dispatch")?;
        let combine = pair("ht_combine")?;
        let d = spec.dims();
        let stream = gpu.stream();
        let ranks = notify
            .ranks()
            .iter()
            .map(|_| -> Result<RankBuffers, Error> {
                Ok(RankBuffers {
                    x: stream
                        .alloc_zeros::<u16>((d.tokens * d.hidden).max(1))
                        .cuda("allocating x")?,
                    topk_idx: DeviceIndex::upload(
                        stream,
                        spec.index_dtype(),
                        &vec![-1; (d.tokens * d.top_k).max(1)],
                    )?,
                    topk_weights: stream
                        .alloc_zeros::<f32>((d.tokens * d.top_k).max(1))
                        .cuda("allocating topk_weights")?,
                    is_token_in_rank: stream
                        .alloc_zeros::<bool>((d.tokens * d.ranks).max(1))
                        .cuda("allocating is_token_in_rank")?,
                    positions: stream
                        .alloc_zeros::<i32>((d.tokens * destinations(spec) as usize).max(1))
                        .cuda("allocating positions")?,
                    out: stream
                        .alloc_zeros::<u16>((d.tokens * d.hidden).max(1))
                        .cuda("allocating out")?,
                    tokens: 0,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HtGroup {
            notify,
            spec: spec.clone(),
            layout,
            dispatch,
            combine,
            window: HtWindow::of(spec),
            ranks,
            received: Vec::new(),
        })
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

    /// Dispatches the local ranks' tokens (`inputs[i]` of the i-th of [`HtGroup::ranks`], at
    /// most `max_tokens_per_rank` each) and reads back what each received.
    pub fn dispatch(&mut self, inputs: &[RankInput]) -> Result<Vec<HtReceived>, Error> {
        self.start_dispatch(inputs)?;
        self.finish_dispatch()
    }

    /// Uploads the inputs and launches notify and dispatch without waiting for them: a process
    /// driving several GPUs starts every GPU's dispatch before it finishes any.
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
        self.received.clear();
        let gpu = self.notify.gpu().clone();
        let stream = gpu.stream().clone();
        let mut layouts = Vec::with_capacity(ranks.len());
        for ((input, buffers), rank) in inputs.iter().zip(&mut self.ranks).zip(ranks) {
            let t = input.routing.num_tokens;
            if t > d.tokens || input.x.len() != t * d.hidden || input.routing.top_k != d.top_k {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens of x [{}] and top-{} (at most {} tokens of {} values, top-{})",
                    input.x.len(),
                    input.routing.top_k,
                    d.tokens,
                    d.hidden,
                    d.top_k
                )));
            }
            let layout = self.layout.run(&gpu, &input.routing)?;
            if t > 0 {
                stream
                    .memcpy_htod(&input.x, &mut buffers.x.slice_mut(..t * d.hidden))
                    .cuda("uploading x")?;
                buffers.topk_idx.write(&stream, &input.routing.topk_idx)?;
                stream
                    .memcpy_htod(
                        &input.routing.topk_weights,
                        &mut buffers.topk_weights.slice_mut(..t * d.top_k),
                    )
                    .cuda("uploading topk_weights")?;
                let in_rank: Vec<bool> = layout.is_token_in_rank.iter().map(|&b| b != 0).collect();
                stream
                    .memcpy_htod(
                        &in_rank,
                        &mut buffers.is_token_in_rank.slice_mut(..t * d.ranks),
                    )
                    .cuda("uploading is_token_in_rank")?;
            }
            buffers.tokens = t;
            layouts.push(layout);
        }
        self.notify.start(&layouts)?;
        self.launch(&self.dispatch, DISPATCH_BLOCKS, self.dispatch_recv_blocks())
    }

    /// Waits for the dispatch [`HtGroup::start_dispatch`] launched and reads back what each local
    /// rank received.
    pub fn finish_dispatch(&mut self) -> Result<Vec<HtReceived>, Error> {
        let d = self.spec.dims();
        self.received = self.notify.finish("dispatch")?;
        let gpu = self.notify.gpu().clone();
        let mut out = Vec::with_capacity(self.received.len());
        for (i, notify) in self.received.iter().enumerate() {
            let rows = self.rows_received(notify);
            let w = &self.window;
            let base = self.notify.window_base(i);
            let read = |offset: u64, bytes: usize| -> Result<Vec<u8>, Error> {
                let mut v = vec![0u8; bytes];
                // SAFETY: the region lies inside local rank i's window (HtWindow's offsets
                // and sizes for at most max_recv_tokens_per_rank rows, which notify checked),
                // which this group holds.
                unsafe { raw_copy::read(&gpu, base + offset, &mut v) }?;
                Ok(v)
            };
            let k = d.top_k;
            let x = read(w.recv_x_offset, rows * w.payload_bytes as usize)?;
            let scales = read(w.recv_scales_offset, rows * w.scale_count as usize * 4)?;
            let idx_size = self.spec.index_dtype().size() as usize;
            let idx = read(w.recv_topk_idx_offset, rows * k * idx_size)?;
            let weights = read(w.recv_topk_w_offset, rows * k * 4)?;
            let src = read(w.recv_src_offset, rows * 4)?;
            out.push(HtReceived {
                recv_x: x,
                recv_scales: scales
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
                    .collect(),
                recv_topk_idx: match self.spec.index_dtype() {
                    IndexDtype::I64 => idx
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                    IndexDtype::I32 => idx
                        .chunks_exact(4)
                        .map(|b| i64::from(i32::from_le_bytes(b.try_into().unwrap_or([0; 4]))))
                        .collect(),
                },
                recv_topk_w: weights
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
                    .collect(),
                recv_src: src
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
                    .collect(),
                notify: notify.clone(),
            });
        }
        Ok(out)
    }

    /// Combines after [`HtGroup::dispatch`]: `y[i]` is what the i-th local rank returns for
    /// each of its rows (`rows x H` values); gives each local rank's `out [T, H]`.
    pub fn combine(&mut self, y: &[Vec<u16>]) -> Result<Vec<Vec<u16>>, Error> {
        self.start_combine(y)?;
        self.finish_combine()
    }

    /// Writes `y` and launches combine without waiting for it (see
    /// [`HtGroup::start_dispatch`]).
    pub fn start_combine(&mut self, y: &[Vec<u16>]) -> Result<(), Error> {
        let d = self.spec.dims();
        if y.len() != self.ranks.len() || self.received.len() != self.ranks.len() {
            return Err(Error::Input(
                "combine needs a finished dispatch first, and y for every local rank".into(),
            ));
        }
        for (i, rows) in y.iter().enumerate() {
            let received = self.rows_received(&self.received[i]);
            let expected = received * d.hidden;
            if rows.len() != expected {
                return Err(Error::Input(format!(
                    "rank {}: y holds {} values, its {received} rows need {expected}",
                    self.notify.ranks()[i],
                    rows.len(),
                )));
            }
            let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
            // SAFETY: the y region of local rank i's window holds max_recv_tokens_per_rank rows
            // of H values, at least the received rows checked above; no kernel runs on it now
            // (the dispatch was finished).
            unsafe {
                raw_copy::write(
                    self.notify.gpu(),
                    self.notify.window_base(i) + self.window.y_offset,
                    &bytes,
                )?;
            }
        }
        self.launch(&self.combine, 1, self.combine_blocks())
    }

    /// Waits for the combine [`HtGroup::start_combine`] launched and reads each local rank's
    /// `out [T, H]`.
    pub fn finish_combine(&mut self) -> Result<Vec<Vec<u16>>, Error> {
        let d = self.spec.dims();
        let stream = self.notify.gpu().stream().clone();
        stream.synchronize().cuda("waiting for combine")?;
        self.notify.take_status("combine receive")?;
        self.ranks
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
        let gpu = self.notify.gpu().clone();
        let phases = |group: &Self| -> Result<(), Error> {
            group.notify.launch_phases()?;
            group.launch(
                &group.dispatch,
                DISPATCH_BLOCKS,
                group.dispatch_recv_blocks(),
            )?;
            group.launch(&group.combine, 1, group.combine_blocks())
        };
        for _ in 0..warmup {
            phases(self)?;
        }
        let iters = iters.max(1);
        let events = (0..4)
            .map(|_| crate::timing::timing_event(&gpu))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sums = [0f64; 3];
        for _ in 0..iters {
            crate::timing::record(&gpu, &events[0])?;
            self.notify.launch_phases()?;
            crate::timing::record(&gpu, &events[1])?;
            self.launch(&self.dispatch, DISPATCH_BLOCKS, self.dispatch_recv_blocks())?;
            crate::timing::record(&gpu, &events[2])?;
            self.launch(&self.combine, 1, self.combine_blocks())?;
            crate::timing::record(&gpu, &events[3])?;
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum += crate::timing::elapsed_us(&events[i], &events[i + 1])?;
            }
        }
        self.notify.take_status("a timed call")?;
        let n = iters as f64;
        Ok(HtTimes {
            notify: sums[0] / n,
            dispatch: sums[1] / n,
            combine: sums[2] / n,
        })
    }

    /// Rows of a rank's receive buffer in use after a dispatch: flat, the rows received;
    /// expert-major, the padded groups (`group_offset[L]`); at most the buffer's rows.
    fn rows_received(&self, notify: &NotifyResult) -> usize {
        let rows = match self.spec.high_throughput().map(|h| h.layout) {
            Some(Layout::ExpertMajor) => notify.group_offset.last().copied().unwrap_or(0),
            _ => notify.recv_rows,
        };
        (rows.max(0) as usize).min(self.window.rows as usize)
    }

    /// Blocks per rank of the dispatch receive: one waits for the senders; in expert-major
    /// layout as many as combine's zero the groups' padding rows meanwhile.
    fn dispatch_recv_blocks(&self) -> u32 {
        match self.spec.high_throughput().map(|h| h.layout) {
            Some(Layout::ExpertMajor) => self.combine_blocks(),
            _ => 1,
        }
    }

    /// Blocks per rank of the combine receive (see [`COMBINE_BLOCKS`]).
    fn combine_blocks(&self) -> u32 {
        let local = self.ranks.len().max(1) as u32;
        (2 * self.notify.gpu().sms() / local).clamp(COMBINE_BLOCKS, COMBINE_BLOCKS_MAX)
    }

    /// The send of `pair` for every rank (`send_blocks` per rank), then its receive
    /// (`recv_blocks` per rank), in chunks of at most [`MAX_LAUNCH_RANKS`] ranks.
    fn launch(
        &self,
        pair: &[CudaFunction; 2],
        send_blocks: u32,
        recv_blocks: u32,
    ) -> Result<(), Error> {
        let gpu = self.notify.gpu();
        let stream = gpu.stream();
        let ptr = |s: &CudaSlice<u16>| {
            let (p, _sync) = s.device_ptr(stream);
            p
        };
        let args: Vec<HtArgs> = self
            .ranks
            .iter()
            .enumerate()
            .map(|(i, b)| -> Result<HtArgs, Error> {
                let state = self.notify.rank_state(i);
                let weights = {
                    let (p, _sync) = b.topk_weights.device_ptr(stream);
                    p
                };
                let in_rank = {
                    let (p, _sync) = b.is_token_in_rank.device_ptr(stream);
                    p
                };
                let positions = {
                    let (p, _sync) = b.positions.device_ptr(stream);
                    p
                };
                Ok(HtArgs {
                    x: ptr(&b.x),
                    topk_idx: b.topk_idx.view(stream, &[b.topk_idx.len()])?.ptr(),
                    topk_weights: weights,
                    is_token_in_rank: in_rank,
                    notify_out: state.out,
                    positions,
                    out: ptr(&b.out),
                    epoch: state.epoch,
                    status: state.status,
                    peers: state.peers,
                    rank: state.rank as i32,
                    tokens: b.tokens as i32,
                })
            })
            .collect::<Result<_, _>>()?;
        gpu.context()
            .bind_to_thread()
            .cuda("making the GPU's context current")?;
        let timeout_ns = self.notify.timeout_ns();
        for (f, blocks) in pair.iter().zip([send_blocks, recv_blocks]) {
            let grid = Grid {
                blocks,
                threads: DATA_THREADS,
                cooperative: false,
            };
            for chunk in args.chunks(MAX_LAUNCH_RANKS as usize) {
                // SAFETY: `f` is an ht_dispatch or ht_combine entry of this spec (LaunchArgs of
                // HtArgs, launch_ranks entries); every address points into buffers this group
                // owns, sized for max_tokens_per_rank tokens and the spec's window, alive until
                // the stream is synchronized by the reads that follow.
                unsafe { launch(f, grid, chunk, timeout_ns, Stream::from(&**stream))? };
            }
        }
        Ok(())
    }
}

fn check_built(spec: &Spec) -> Result<(), Error> {
    if !data_path_built(spec) {
        return Err(Error::Input(format!(
            "spec `{}` is not a high-throughput spec",
            spec.name()
        )));
    }
    Ok(())
}
