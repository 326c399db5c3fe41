//! Low-latency dispatch and combine on virtual ranks.
//!
//! [`LowLatency`] owns the compiled kernels, the R windows and workspaces; an [`LlCall`] owns
//! one call's tensors (inputs, the rows its tokens landed in, outputs). A call is:
//! [`LlCall::set_inputs`], [`LowLatency::dispatch_send`], [`LowLatency::dispatch_recv`], the
//! experts' outputs ([`LowLatency::set_expert_outputs`]), [`LowLatency::combine_send`] and
//! [`LowLatency::combine_recv`]. Send and receive are separate launches (the receive may run
//! later), the windows are double-buffered so two calls can be in flight, and the call's epoch
//! lives on the device, so nothing synchronizes with the host until results are read.

mod typed;

use std::time::Duration;

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use ep_codegen::kernels::ll::{Window, error_code, errors_offset, workspace_ints};
use ep_codegen::{Mode, Renderer, Spec};

use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::reference::ll::RankInput;
use crate::timing;
use crate::transport::VirtualRanks;
use crate::{Error, Gpu, Jit};

pub use typed::{LlKernels, SpecCall};

/// How long a receive waits for a peer before reporting a timeout, unless changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one rank received in dispatch (host copies).
#[derive(Debug, Clone)]
pub struct RankDispatch {
    /// Rows per local expert `[L]`.
    pub recv_count: Vec<i32>,
    /// `[L, R*M]`: `s * M + t` of each row (rows past the count are unspecified).
    pub recv_src: Vec<i32>,
    /// `[L, R, 2]`: (first row, rows) of each source rank.
    pub recv_range: Vec<i32>,
    /// `[L, R*M, payload bytes]`.
    pub recv_x: Vec<u8>,
    /// `[L, R*M, H/128]` FP8 scales (empty without FP8).
    pub recv_scales: Vec<f32>,
}

/// A call captured as CUDA graphs (see [`LowLatency::capture`]).
pub struct LlGraphs {
    /// Dispatch send and receive.
    pub dispatch: cudarc::driver::CudaGraph,
    /// Combine send and receive.
    pub combine: cudarc::driver::CudaGraph,
}

impl LlGraphs {
    /// Replays the dispatch of a new call.
    pub fn dispatch(&self) -> Result<(), Error> {
        self.dispatch.launch().cuda("replaying the dispatch graph")
    }

    /// Replays the combine of the current call.
    pub fn combine(&self) -> Result<(), Error> {
        self.combine.launch().cuda("replaying the combine graph")
    }
}

/// Mean time of each launch of a call, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    /// Dispatch send.
    pub dispatch_send: f64,
    /// Dispatch receive.
    pub dispatch_recv: f64,
    /// Combine send.
    pub combine_send: f64,
    /// Combine receive.
    pub combine_recv: f64,
}

impl PhaseTimes {
    /// Dispatch, send and receive.
    pub fn dispatch(&self) -> f64 {
        self.dispatch_send + self.dispatch_recv
    }

    /// Combine, send and receive.
    pub fn combine(&self) -> f64 {
        self.combine_send + self.combine_recv
    }
}

/// One call's device tensors, each with a leading rank dimension.
pub struct LlCall {
    x: CudaSlice<u16>,
    topk_idx: DeviceIndex,
    topk_weights: CudaSlice<f32>,
    num_tokens: CudaSlice<i32>,
    dispatch_row: CudaSlice<i32>,
    call_epoch: CudaSlice<u32>,
    recv_count: CudaSlice<i32>,
    out: CudaSlice<u16>,
    tokens: Vec<usize>,
    host_idx: Vec<Vec<i64>>,
    /// Whether a send was issued for this call (its epoch itself lives on the device).
    sent: bool,
    spec: Spec,
}

impl LlCall {
    /// Uploads every rank's tokens, ids and weights (one [`RankInput`] per rank).
    pub fn set_inputs(&mut self, gpu: &Gpu, inputs: &[RankInput]) -> Result<(), Error> {
        let s = &self.spec;
        let ep_codegen::Dims {
            ranks: r,
            tokens: m,
            hidden: h,
            top_k: k,
            ..
        } = s.dims();
        if inputs.len() != r {
            return Err(Error::Input(format!(
                "{} rank inputs for {r} ranks",
                inputs.len()
            )));
        }
        let mut x = vec![0u16; r * m * h];
        let mut idx = vec![-1i64; r * m * k];
        let mut w = vec![0f32; r * m * k];
        for (rank, input) in inputs.iter().enumerate() {
            let t = input.routing.num_tokens;
            let shape_ok = input.routing.top_k == k
                && input.routing.topk_idx.len() == t * k
                && input.routing.topk_weights.len() == t * k
                && input.x.len() == t * h;
            if !shape_ok {
                return Err(Error::Input(format!(
                    "rank {rank}: expected x [T, {h}] and topk_idx, topk_weights [T, {k}] with \
                     T = {t}; got {} x values, {} ids, {} weights, top-k {}",
                    input.x.len(),
                    input.routing.topk_idx.len(),
                    input.routing.topk_weights.len(),
                    input.routing.top_k
                )));
            }
            if t > m {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens exceed max_tokens_per_rank = {m}"
                )));
            }
            x[rank * m * h..][..t * h].copy_from_slice(&input.x);
            idx[rank * m * k..][..t * k].copy_from_slice(&input.routing.topk_idx);
            w[rank * m * k..][..t * k].copy_from_slice(&input.routing.topk_weights);
        }
        let stream = gpu.stream();
        let tokens: Vec<i32> = inputs.iter().map(|i| i.routing.num_tokens as i32).collect();
        stream.memcpy_htod(&x, &mut self.x).cuda("uploading x")?;
        self.topk_idx.write(stream, &idx)?;
        stream
            .memcpy_htod(&w, &mut self.topk_weights)
            .cuda("uploading topk_weights")?;
        stream
            .memcpy_htod(&tokens, &mut self.num_tokens)
            .cuda("uploading num_tokens")?;
        self.tokens = inputs.iter().map(|i| i.routing.num_tokens).collect();
        self.host_idx = inputs.iter().map(|i| i.routing.topk_idx.clone()).collect();
        Ok(())
    }

    fn require_sent(&self, what: &str) -> Result<(), Error> {
        if self.sent {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "{what} before this call's dispatch_send"
            )))
        }
    }

    /// The epoch the last send gave this call, read from the device (so it is right after graph
    /// replays too).
    fn device_epoch(&self, gpu: &Gpu, what: &str) -> Result<u32, Error> {
        self.require_sent(what)?;
        let epochs = gpu
            .stream()
            .clone_dtoh(&self.call_epoch)
            .cuda("reading the call's epoch")?;
        Ok(epochs.first().copied().unwrap_or(0))
    }
}

/// Low-latency mode of one spec on R virtual ranks of one GPU.
pub struct LowLatency {
    gpu: Gpu,
    spec: Spec,
    window: Window,
    dispatch: Vec<CudaFunction>,
    combine: Vec<CudaFunction>,
    ranks: VirtualRanks,
    /// FP8 only: each rank's tokens quantized once per send, `[R, M, staged row]`.
    staging: Option<CudaSlice<u8>>,
    blocks_per_rank: u32,
    threads: u32,
    timeout_ns: u64,
}

impl LowLatency {
    /// Renders, compiles (through the cache) and loads the LL kernels of `spec`, and allocates
    /// the windows and workspaces of its R ranks on `gpu`.
    pub fn new(
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
    ) -> Result<LowLatency, Error> {
        LowLatency::from_kernels(gpu, jit, spec, renderer.render(spec)?)
    }

    /// Like [`LowLatency::new`], with kernels already rendered (as `#[ep_kernel]` embeds them).
    pub fn from_kernels(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: Vec<ep_codegen::KernelSource>,
    ) -> Result<LowLatency, Error> {
        if spec.mode != Mode::LowLatency {
            return Err(Error::Input(format!(
                "spec `{}` is not low_latency",
                spec.name
            )));
        }
        let find = |name: &str| {
            kernels
                .iter()
                .find(|k| k.name == name)
                .ok_or_else(|| Error::Input(format!("no {name} kernel rendered for {}", spec.name)))
        };
        let dispatch_src = find("ll_dispatch")?;
        let dispatch = jit.load(gpu, dispatch_src)?.functions;
        let combine = jit.load(gpu, find("ll_combine")?)?.functions;
        let threads = dispatch_src.launch.block_threads;
        let r = spec.ranks as usize;
        let window = Window::of(spec);
        // The blocks of each rank's send meet once, so the whole grid must be co-resident:
        // the SMs are split between the ranks.
        let per_sm = dispatch[0]
            .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
            .cuda("querying occupancy")?;
        // tuning.sms: the SMs all ranks' kernels may occupy together (default: the whole GPU).
        let sms = spec
            .tuning
            .sms
            .unwrap_or(gpu.sms())
            .min(gpu.sms() * per_sm.max(1));
        let blocks_per_rank = (sms / r as u32).max(1);
        if per_sm == 0 || blocks_per_rank as usize * r > (gpu.sms() * per_sm) as usize {
            return Err(Error::Input(format!(
                "{r} virtual ranks need {r} co-resident blocks of {threads} threads, more than \
                 this GPU's {} SMs x {per_sm} can hold; use fewer ranks or fewer warps per block",
                gpu.sms()
            )));
        }
        let ranks = VirtualRanks::new(
            gpu,
            r,
            usize::try_from(window.bytes()).unwrap_or(usize::MAX),
            workspace_ints(spec) as usize,
        )?;
        let staging = match window.staged_bytes {
            0 => None,
            bytes => Some(
                gpu.stream()
                    .alloc_zeros::<u8>(r * spec.max_tokens_per_rank as usize * bytes as usize)
                    .cuda("allocating the FP8 staging rows")?,
            ),
        };
        Ok(LowLatency {
            staging,
            gpu: gpu.clone(),
            spec: spec.clone(),
            window,
            dispatch,
            combine,
            ranks,
            blocks_per_rank,
            threads,
            timeout_ns: DEFAULT_TIMEOUT.as_nanos() as u64,
        })
    }

    /// Device memory that `new` and one call allocate for `spec`, in bytes.
    pub fn memory_bytes(spec: &Spec) -> u64 {
        let w = Window::of(spec);
        let (r, m, h, k) = (
            u64::from(spec.ranks),
            u64::from(spec.max_tokens_per_rank),
            u64::from(spec.hidden),
            u64::from(spec.top_k),
        );
        let call = r * m * (2 * h * 2 + k * (8 + 4 + 4));
        r * (w.bytes() + m * w.staged_bytes + 4 * u64::from(workspace_ints(spec))) + call
    }

    /// Allocates the tensors of one call (two calls may be in flight at once).
    pub fn new_call(&self) -> Result<LlCall, Error> {
        let s = &self.spec;
        let ep_codegen::Dims {
            ranks: r,
            local: l,
            tokens: m,
            hidden: h,
            top_k: k,
            ..
        } = s.dims();
        let stream = self.gpu.stream();
        Ok(LlCall {
            x: stream.alloc_zeros::<u16>(r * m * h).cuda("allocating x")?,
            topk_idx: DeviceIndex::upload(stream, s.index_dtype, &vec![-1; r * m * k])?,
            topk_weights: stream
                .alloc_zeros::<f32>(r * m * k)
                .cuda("allocating topk_weights")?,
            num_tokens: stream.alloc_zeros::<i32>(r).cuda("allocating num_tokens")?,
            dispatch_row: stream
                .alloc_zeros::<i32>(r * m * k)
                .cuda("allocating dispatch_row")?,
            call_epoch: stream.alloc_zeros::<u32>(r).cuda("allocating call_epoch")?,
            recv_count: stream
                .alloc_zeros::<i32>(r * l)
                .cuda("allocating recv_count")?,
            out: stream
                .alloc_zeros::<u16>(r * m * h)
                .cuda("allocating out")?,
            tokens: vec![0; r],
            host_idx: vec![Vec::new(); r],
            sent: false,
            spec: s.clone(),
        })
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// How long receives wait for peers before reporting a timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The window layout.
    pub fn window(&self) -> &Window {
        &self.window
    }

    fn grid(&self, blocks: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks, self.spec.ranks, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Starts a call: every rank writes its selections into the experts' windows.
    pub fn dispatch_send(&mut self, call: &mut LlCall) -> Result<(), Error> {
        let (cfg, rank_base, timeout) = (self.grid(self.blocks_per_rank), 0i32, self.timeout_ns);
        let stream = self.gpu.stream().clone();
        let mut launch = stream.launch_builder(&self.dispatch[0]);
        launch.arg(&call.x);
        call.topk_idx.push(&mut launch);
        launch
            .arg(&call.num_tokens)
            .arg(&mut call.dispatch_row)
            .arg(&mut call.call_epoch)
            .arg(self.ranks.workspace());
        if let Some(staging) = &self.staging {
            launch.arg(staging);
        }
        launch.arg(self.ranks.peers()).arg(&rank_base).arg(&timeout);
        // SAFETY: the arguments follow the send kernel's signature; the call's tensors have the
        // [R, ...] shapes the kernel indexes (allocated in `new_call` from the same spec), the
        // windows in the peer table live as long as `self.ranks`, and the grid is co-resident
        // (checked in `new`), which the blocks' one meeting needs.
        unsafe { launch.launch_cooperative(cfg) }.cuda("launching dispatch send")?;
        call.sent = true;
        Ok(())
    }

    /// Completes the call's dispatch: waits for every rank's rows and takes the row counts.
    pub fn dispatch_recv(&mut self, call: &mut LlCall) -> Result<(), Error> {
        call.require_sent("dispatch_recv")?;
        let (cfg, rank_base, timeout) = (self.grid(1), 0i32, self.timeout_ns);
        let stream = self.gpu.stream().clone();
        let mut launch = stream.launch_builder(&self.dispatch[1]);
        launch
            .arg(&call.call_epoch)
            .arg(&mut call.recv_count)
            .arg(self.ranks.workspace())
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&timeout);
        // SAFETY: arguments follow the receive kernel's signature and the shapes of `new_call`.
        unsafe { launch.launch(cfg) }.cuda("launching dispatch receive")?;
        Ok(())
    }

    /// Writes the experts' outputs of a call into the windows: per rank `[L, R*M, H]` in the
    /// received layout (what an expert kernel would write in place).
    pub fn set_expert_outputs(&mut self, call: &LlCall, y: &[Vec<u16>]) -> Result<(), Error> {
        let epoch = call.device_epoch(&self.gpu, "set_expert_outputs")?;
        let s = &self.spec;
        let per_rank = (s.local_experts() * s.ranks * s.max_tokens_per_rank * s.hidden) as usize;
        if y.len() != s.ranks as usize || y.iter().any(|v| v.len() != per_rank) {
            return Err(Error::Input(format!(
                "expert outputs: expected {} ranks of [L, R*M, H] = {per_rank} values",
                s.ranks
            )));
        }
        let at = (self.window.half(epoch) + self.window.y_offset) as usize;
        let stream = self.gpu.stream().clone();
        let counts = stream
            .clone_dtoh(&call.recv_count)
            .cuda("reading recv_count")?;
        let (l, per_expert, row_bytes) = (
            s.local_experts() as usize,
            self.window.rows_per_expert as usize,
            s.hidden as usize * 2,
        );
        for (rank, values) in y.iter().enumerate() {
            // Only the received rows: the rest of y is never read.
            for le in 0..l {
                let n = (counts[rank * l + le].max(0) as usize).min(per_expert);
                if n == 0 {
                    continue;
                }
                let first = le * per_expert;
                let bytes: Vec<u8> = values[first * row_bytes / 2..][..n * row_bytes / 2]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                let start = at + first * row_bytes;
                let mut view = self
                    .ranks
                    .window_mut(rank)
                    .slice_mut(start..start + bytes.len());
                stream
                    .memcpy_htod(&bytes, &mut view)
                    .cuda("uploading expert outputs")?;
            }
        }
        Ok(())
    }

    /// Announces that every rank's expert outputs of the call are complete.
    pub fn combine_send(&mut self, call: &LlCall) -> Result<(), Error> {
        call.require_sent("combine_send")?;
        let (cfg, rank_base) = (self.grid(1), 0i32);
        let stream = self.gpu.stream();
        let mut launch = stream.launch_builder(&self.combine[0]);
        launch
            .arg(&call.call_epoch)
            .arg(self.ranks.peers())
            .arg(&rank_base);
        // SAFETY: arguments follow the combine send kernel's signature.
        unsafe { launch.launch(cfg) }.cuda("launching combine send")?;
        Ok(())
    }

    /// Pulls and reduces the experts' rows into each rank's `out [T, H]`.
    pub fn combine_recv(&mut self, call: &mut LlCall) -> Result<(), Error> {
        call.require_sent("combine_recv")?;
        let (cfg, rank_base, timeout) = (self.grid(self.blocks_per_rank), 0i32, self.timeout_ns);
        let stream = self.gpu.stream().clone();
        let mut launch = stream.launch_builder(&self.combine[1]);
        call.topk_idx.push(&mut launch);
        launch
            .arg(&call.topk_weights)
            .arg(&call.num_tokens)
            .arg(&call.dispatch_row)
            .arg(&call.call_epoch)
            .arg(&mut call.out)
            .arg(self.ranks.workspace())
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&timeout);
        // SAFETY: arguments follow the combine receive kernel's signature and the shapes of
        // `new_call`; the rows it reads are inside the windows (dispatch_row < R*M).
        unsafe { launch.launch(cfg) }.cuda("launching combine receive")?;
        Ok(())
    }

    /// Captures a call's launches into two CUDA graphs on the GPU's stream: dispatch (send and
    /// receive) and combine (send and receive). Replays need no host work: new inputs written
    /// with [`LlCall::set_inputs`] are picked up, and each dispatch replay starts a new call.
    pub fn capture(&mut self, call: &mut LlCall) -> Result<LlGraphs, Error> {
        let stream = self.gpu.stream().clone();
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let flags = cudarc::driver::sys::CUgraphInstantiate_flags(0);
        let mut graph =
            |what: &str, f: &mut dyn FnMut(&mut Self, &mut LlCall) -> Result<(), Error>| {
                stream
                    .begin_capture(mode)
                    .cuda("beginning a graph capture")?;
                let captured = f(self, call);
                let graph = stream.end_capture(flags).cuda("ending a graph capture")?;
                captured?;
                graph.ok_or_else(|| {
                    Error::Input(format!("capturing the {what} produced an empty graph"))
                })
            };
        let dispatch = graph("dispatch", &mut |ll, call| {
            ll.dispatch_send(call)?;
            ll.dispatch_recv(call)
        })?;
        let combine = graph("combine", &mut |ll, call| {
            ll.combine_send(call)?;
            ll.combine_recv(call)
        })?;
        Ok(LlGraphs { dispatch, combine })
    }

    /// Times whole calls on the current inputs of `call`: `warmup` calls, then `iters` calls
    /// with an event between each of the four launches. Returns the mean of each launch in
    /// microseconds; checks for errors.
    pub fn time_phases(
        &mut self,
        call: &mut LlCall,
        warmup: usize,
        iters: usize,
    ) -> Result<PhaseTimes, Error> {
        for _ in 0..warmup {
            self.dispatch_send(call)?;
            self.dispatch_recv(call)?;
            self.combine_send(call)?;
            self.combine_recv(call)?;
        }
        let iters = iters.max(1);
        let mut events = Vec::with_capacity(5 * iters);
        for _ in 0..5 * iters {
            events.push(timing::timing_event(&self.gpu)?);
        }
        for i in 0..iters {
            let ev = &events[5 * i..5 * i + 5];
            timing::record(&self.gpu, &ev[0])?;
            self.dispatch_send(call)?;
            timing::record(&self.gpu, &ev[1])?;
            self.dispatch_recv(call)?;
            timing::record(&self.gpu, &ev[2])?;
            self.combine_send(call)?;
            timing::record(&self.gpu, &ev[3])?;
            self.combine_recv(call)?;
            timing::record(&self.gpu, &ev[4])?;
        }
        let mut sums = [0f64; 4];
        for i in 0..iters {
            let ev = &events[5 * i..5 * i + 5];
            for (j, sum) in sums.iter_mut().enumerate() {
                *sum += timing::elapsed_us(&ev[j], &ev[j + 1])?;
            }
        }
        self.check(call)?;
        let n = iters as f64;
        Ok(PhaseTimes {
            dispatch_send: sums[0] / n,
            dispatch_recv: sums[1] / n,
            combine_send: sums[2] / n,
            combine_recv: sums[3] / n,
        })
    }

    /// Waits for the GPU and turns the ranks' recorded errors into an [`Error`] (the lowest
    /// rank's); every rank's error words are cleared, so the next call starts clean.
    pub fn check(&mut self, call: &LlCall) -> Result<(), Error> {
        let stream = self.gpu.stream().clone();
        let ws = stream
            .clone_dtoh(self.ranks.workspace())
            .cuda("reading the rank workspaces")?;
        let stride = self.ranks.workspace_ints();
        let at = errors_offset(&self.spec) as usize;
        let k = self.spec.top_k as usize;
        let mut first = None;
        for rank in 0..self.ranks.ranks() {
            let e = &ws[rank * stride + at..][..4];
            if e[0] == 0 {
                continue;
            }
            let words = rank * stride + at..rank * stride + at + 4;
            let mut view = self.ranks.workspace_mut().slice_mut(words);
            stream
                .memset_zeros(&mut view)
                .cuda("clearing error words")?;
            if first.is_some() {
                continue;
            }
            let detail = e[1] as usize;
            first = Some(match e[0] {
                error_code::BAD_EXPERT => {
                    let flat = (i32::MAX - e[3]) as usize;
                    Error::BadExpertId {
                        token: flat / k,
                        slot: flat % k,
                        value: call
                            .host_idx
                            .get(rank)
                            .and_then(|v| v.get(flat))
                            .copied()
                            .unwrap_or(i64::MIN),
                        experts: self.spec.experts,
                        count: e[2] as usize,
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
                    "rank {rank}: the receive rows of expert {detail} overflowed (a previous \
                     call's dispatch was never received)"
                )),
                _ => Error::Timeout {
                    rank,
                    phase: "dispatch send (blocks of a rank did not meet)",
                    peer: rank,
                },
            });
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits, checks for errors and copies every rank's dispatch results of a call to the host.
    /// Only received rows are copied; the rest of each tensor is left zero.
    pub fn dispatched(&mut self, call: &LlCall) -> Result<Vec<RankDispatch>, Error> {
        let epoch = call.device_epoch(&self.gpu, "dispatched")?;
        self.check(call)?;
        let stream = self.gpu.stream();
        let s = &self.spec;
        let w = &self.window;
        let (r, l) = (s.ranks as usize, s.local_experts() as usize);
        let per_expert = w.rows_per_expert as usize;
        let rows = l * per_expert;
        let (payload, sc) = (w.payload_bytes as usize, w.scale_count as usize);
        let counts = stream
            .clone_dtoh(&call.recv_count)
            .cuda("reading recv_count")?;
        let half = w.half(epoch) as usize;
        // Copies `n` bytes at `offset` of rank `rank`'s half into `dst`.
        let read = |rank: usize, offset: usize, dst: &mut [u8]| -> Result<(), Error> {
            if dst.is_empty() {
                return Ok(());
            }
            let at = half + offset;
            let view = self.ranks.window(rank).slice(at..at + dst.len());
            stream.memcpy_dtoh(&view, dst).cuda("reading a window")
        };
        let ints = |b: &[u8]| -> Vec<i32> {
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut out = Vec::with_capacity(r);
        for d in 0..r {
            let (mut x, mut scales, mut meta) = (
                vec![0u8; rows * payload],
                vec![0u8; rows * sc * 4],
                vec![0u8; rows * 8],
            );
            for le in 0..l {
                let n = (counts[d * l + le].max(0) as usize).min(per_expert);
                let first = le * per_expert;
                read(
                    d,
                    w.recv_x_offset as usize + first * payload,
                    &mut x[first * payload..][..n * payload],
                )?;
                read(
                    d,
                    w.recv_scales_offset as usize + first * sc * 4,
                    &mut scales[first * sc * 4..][..n * sc * 4],
                )?;
                read(
                    d,
                    w.recv_meta_offset as usize + first * 8,
                    &mut meta[first * 8..][..n * 8],
                )?;
            }
            let mut range = vec![0u8; l * r * 8];
            read(d, w.range_offset as usize, &mut range)?;
            out.push(RankDispatch {
                recv_count: counts[d * l..][..l].to_vec(),
                recv_src: ints(&meta).chunks_exact(2).map(|m| m[0]).collect(),
                recv_range: ints(&range),
                recv_x: x,
                recv_scales: ints(&scales)
                    .into_iter()
                    .map(|b| f32::from_bits(b as u32))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Waits, checks for errors and copies every rank's combined `out [T, H]` to the host.
    pub fn combined(&mut self, call: &LlCall) -> Result<Vec<Vec<u16>>, Error> {
        self.check(call)?;
        let out = self
            .gpu
            .stream()
            .clone_dtoh(&call.out)
            .cuda("reading out")?;
        let ep_codegen::Dims {
            tokens: m,
            hidden: h,
            ..
        } = self.spec.dims();
        Ok(call
            .tokens
            .iter()
            .enumerate()
            .map(|(rank, &t)| out[rank * m * h..][..t * h].to_vec())
            .collect())
    }
}
