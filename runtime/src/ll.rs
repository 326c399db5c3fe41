//! Low-latency dispatch and combine on virtual ranks.
//!
//! [`LowLatency`] owns the compiled kernels, the windows and the per-rank tensors of every
//! virtual rank. A call is: [`LowLatency::set_inputs`], [`LowLatency::dispatch_send`] (starts
//! call n, epoch n), [`LowLatency::dispatch_recv`], then the experts' outputs with
//! [`LowLatency::set_expert_outputs`], [`LowLatency::combine_send`] and
//! [`LowLatency::combine_recv`]. Send and receive are separate launches; nothing synchronizes
//! with the host until results are read.

use std::time::Duration;

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use ep_codegen::kernels::ll::{Window, error_code, errors_offset, workspace_ints};
use ep_codegen::{Mode, Renderer, Spec};

use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::reference::ll::RankInput;
use crate::virtual_ranks::VirtualRanks;
use crate::{Error, Gpu, Jit};

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

/// Per-rank device tensors, each with a leading rank dimension.
struct Tensors {
    x: CudaSlice<u16>,
    topk_idx: DeviceIndex,
    topk_weights: CudaSlice<f32>,
    num_tokens: CudaSlice<i32>,
    recv_x: CudaSlice<u8>,
    recv_scales: CudaSlice<f32>,
    recv_count: CudaSlice<i32>,
    recv_src: CudaSlice<i32>,
    recv_range: CudaSlice<i32>,
    recv_slot: CudaSlice<i32>,
    y: CudaSlice<u16>,
    out: CudaSlice<u16>,
}

/// Low-latency mode of one spec on R virtual ranks of one GPU.
pub struct LowLatency {
    gpu: Gpu,
    spec: Spec,
    window: Window,
    dispatch: Vec<CudaFunction>,
    combine: Vec<CudaFunction>,
    ranks: VirtualRanks,
    tensors: Tensors,
    tokens: Vec<usize>,
    host_idx: Vec<Vec<i64>>,
    epoch: u32,
    blocks_per_rank: u32,
    threads: u32,
    timeout_ns: u64,
}

impl LowLatency {
    /// Renders, compiles (through the cache) and loads the LL kernels of `spec`, and allocates
    /// windows and tensors for its R ranks on `gpu`.
    pub fn new(
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
    ) -> Result<LowLatency, Error> {
        if spec.mode != Mode::LowLatency {
            return Err(Error::Input(format!(
                "spec `{}` is not low_latency",
                spec.name
            )));
        }
        let kernels = renderer.render(spec)?;
        let find = |name: &str| {
            kernels
                .iter()
                .find(|k| k.name == name)
                .ok_or_else(|| Error::Input(format!("no {name} kernel rendered for {}", spec.name)))
        };
        let dispatch_src = find("ll_dispatch")?;
        let combine_src = find("ll_combine")?;
        let dispatch = jit.load(gpu, dispatch_src)?.functions;
        let combine = jit.load(gpu, combine_src)?.functions;
        let threads = dispatch_src.launch.block_threads;

        let (r, l, m, h, k) = (
            spec.ranks as usize,
            spec.local_experts() as usize,
            spec.max_tokens_per_rank as usize,
            spec.hidden as usize,
            spec.top_k as usize,
        );
        let window = Window::of(spec);
        let ranks = VirtualRanks::new(
            gpu,
            r,
            usize::try_from(window.bytes()).unwrap_or(usize::MAX),
            workspace_ints(spec) as usize,
        )?;
        let stream = gpu.stream();
        let alloc_u16 = |n: usize, what: &str| stream.alloc_zeros::<u16>(n.max(1)).cuda(what);
        let alloc_i32 = |n: usize, what: &str| stream.alloc_zeros::<i32>(n.max(1)).cuda(what);
        let rows = r * l * r * m;
        let tensors = Tensors {
            x: alloc_u16(r * m * h, "allocating x")?,
            topk_idx: DeviceIndex::upload(stream, spec.index_dtype, &vec![-1; r * m * k])?,
            topk_weights: stream
                .alloc_zeros::<f32>(r * m * k)
                .cuda("allocating topk_weights")?,
            num_tokens: alloc_i32(r, "allocating num_tokens")?,
            recv_x: stream
                .alloc_zeros::<u8>(rows * window.payload_bytes as usize)
                .cuda("allocating recv_x")?,
            recv_scales: stream
                .alloc_zeros::<f32>((rows * window.scale_count as usize).max(1))
                .cuda("allocating recv_scales")?,
            recv_count: alloc_i32(r * l, "allocating recv_count")?,
            recv_src: alloc_i32(rows, "allocating recv_src")?,
            recv_range: alloc_i32(r * l * r * 2, "allocating recv_range")?,
            recv_slot: alloc_i32(rows, "allocating recv_slot")?,
            y: alloc_u16(rows * h, "allocating y")?,
            out: alloc_u16(r * m * h, "allocating out")?,
        };
        // Every rank's blocks of a receive must be co-resident: split the SMs between ranks.
        let per_sm = dispatch[1]
            .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
            .cuda("querying occupancy")?;
        let blocks_per_rank = (gpu.sms() / r as u32).max(1);
        if per_sm == 0 || blocks_per_rank as usize * r > (gpu.sms() * per_sm) as usize {
            return Err(Error::Input(format!(
                "{r} virtual ranks need {r} co-resident blocks of {threads} threads, more than \
                 this GPU's {} SMs x {per_sm} can hold",
                gpu.sms()
            )));
        }
        Ok(LowLatency {
            gpu: gpu.clone(),
            spec: spec.clone(),
            window,
            dispatch,
            combine,
            ranks,
            tensors,
            tokens: vec![0; r],
            host_idx: vec![Vec::new(); r],
            epoch: 0,
            blocks_per_rank,
            threads,
            timeout_ns: DEFAULT_TIMEOUT.as_nanos() as u64,
        })
    }

    /// How long receives wait for peers before reporting a timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    }

    /// The window layout.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Uploads every rank's tokens, ids and weights (one [`RankInput`] per rank).
    pub fn set_inputs(&mut self, inputs: &[RankInput]) -> Result<(), Error> {
        let s = &self.spec;
        let (r, m, h, k) = (
            s.ranks as usize,
            s.max_tokens_per_rank as usize,
            s.hidden as usize,
            s.top_k as usize,
        );
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
                    "rank {rank}: expected x [T, {h}], topk_idx and topk_weights [T, {k}] with T = {t}; got {} x, {} ids, {} weights, top-k {}",
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
            self.tokens[rank] = t;
            self.host_idx[rank] = input.routing.topk_idx.clone();
        }
        let stream = self.gpu.stream();
        let tokens: Vec<i32> = self.tokens.iter().map(|&t| t as i32).collect();
        let tn = &mut self.tensors;
        stream.memcpy_htod(&x, &mut tn.x).cuda("uploading x")?;
        tn.topk_idx = DeviceIndex::upload(stream, s.index_dtype, &idx)?;
        stream
            .memcpy_htod(&w, &mut tn.topk_weights)
            .cuda("uploading topk_weights")?;
        stream
            .memcpy_htod(&tokens, &mut tn.num_tokens)
            .cuda("uploading num_tokens")?;
        Ok(())
    }

    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks_per_rank, self.spec.ranks, 1),
            block_dim: (self.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Starts a call: every rank sends its tokens to the experts' ranks.
    pub fn dispatch_send(&mut self) -> Result<(), Error> {
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let (cfg, rank_base, epoch) = (self.config(), 0i32, self.epoch);
        let t = &self.tensors;
        let stream = self.gpu.stream();
        let mut launch = stream.launch_builder(&self.dispatch[0]);
        launch.arg(&t.x);
        t.topk_idx.push(&mut launch);
        launch
            .arg(&t.num_tokens)
            .arg(self.ranks.workspace())
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&epoch);
        // SAFETY: arguments follow the send kernel's signature; every tensor has the
        // [R, ...] shape the kernel indexes (allocated in `new` from the same spec), and the
        // windows in the peer table are alive as long as `self.ranks`.
        unsafe { launch.launch(cfg) }.cuda("launching dispatch send")?;
        Ok(())
    }

    fn started(&self, what: &str) -> Result<(), Error> {
        if self.epoch == 0 {
            return Err(Error::Input(format!("{what} before any dispatch_send")));
        }
        Ok(())
    }

    /// Receives the current call's tokens into the expert-major tensors.
    pub fn dispatch_recv(&mut self) -> Result<(), Error> {
        self.started("dispatch_recv")?;
        let (cfg, rank_base, epoch, timeout) = (self.config(), 0i32, self.epoch, self.timeout_ns);
        let stream = self.gpu.stream().clone();
        let t = &mut self.tensors;
        stream
            .memset_zeros(&mut t.recv_count)
            .cuda("zeroing recv_count")?;
        let mut launch = stream.launch_builder(&self.dispatch[1]);
        launch
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&epoch)
            .arg(&timeout)
            .arg(&mut t.recv_x);
        if self.spec.fp8.is_some() {
            launch.arg(&mut t.recv_scales);
        }
        launch
            .arg(&mut t.recv_count)
            .arg(&mut t.recv_src)
            .arg(&mut t.recv_range)
            .arg(&mut t.recv_slot)
            .arg(self.ranks.workspace());
        // SAFETY: as for the send; the grid fits co-resident (checked in `new`), so waiting
        // blocks cannot starve the blocks they wait for.
        unsafe { launch.launch_cooperative(cfg) }.cuda("launching dispatch receive")?;
        Ok(())
    }

    /// Uploads the experts' outputs: per rank `[L, R*M, H]` in the received layout.
    pub fn set_expert_outputs(&mut self, y: &[Vec<u16>]) -> Result<(), Error> {
        let s = &self.spec;
        let per_rank = (s.local_experts() * s.ranks * s.max_tokens_per_rank * s.hidden) as usize;
        if y.len() != s.ranks as usize || y.iter().any(|v| v.len() != per_rank) {
            return Err(Error::Input(format!(
                "expert outputs: expected {} ranks of [L, R*M, H] = {per_rank} values",
                s.ranks
            )));
        }
        let flat: Vec<u16> = y.concat();
        self.gpu
            .stream()
            .memcpy_htod(&flat, &mut self.tensors.y)
            .cuda("uploading expert outputs")
    }

    /// Sends the experts' outputs back to the tokens' ranks.
    pub fn combine_send(&mut self) -> Result<(), Error> {
        self.started("combine_send")?;
        let (cfg, rank_base, epoch) = (self.config(), 0i32, self.epoch);
        let t = &self.tensors;
        let stream = self.gpu.stream();
        let mut launch = stream.launch_builder(&self.combine[0]);
        launch
            .arg(&t.y)
            .arg(&t.recv_count)
            .arg(&t.recv_src)
            .arg(&t.recv_slot)
            .arg(self.ranks.workspace())
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&epoch);
        // SAFETY: arguments follow the combine send kernel's signature and shapes (see `new`).
        unsafe { launch.launch(cfg) }.cuda("launching combine send")?;
        Ok(())
    }

    /// Reduces the returned rows into each rank's `out [T, H]`.
    pub fn combine_recv(&mut self) -> Result<(), Error> {
        self.started("combine_recv")?;
        let (cfg, rank_base, epoch, timeout) = (self.config(), 0i32, self.epoch, self.timeout_ns);
        let stream = self.gpu.stream().clone();
        let t = &mut self.tensors;
        let mut launch = stream.launch_builder(&self.combine[1]);
        t.topk_idx.push(&mut launch);
        launch
            .arg(&t.topk_weights)
            .arg(&t.num_tokens)
            .arg(&mut t.out)
            .arg(self.ranks.workspace())
            .arg(self.ranks.peers())
            .arg(&rank_base)
            .arg(&epoch)
            .arg(&timeout);
        // SAFETY: as for the dispatch receive.
        unsafe { launch.launch_cooperative(cfg) }.cuda("launching combine receive")?;
        Ok(())
    }

    /// Waits for the GPU and turns the ranks' recorded errors into an [`Error`] (the lowest
    /// rank's); every rank's error words are cleared, so the next call starts clean.
    pub fn check(&mut self) -> Result<(), Error> {
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
            first = Some(match e[0] {
                error_code::BAD_EXPERT => {
                    let flat = (i32::MAX - e[3]) as usize;
                    Error::BadExpertId {
                        token: flat / k,
                        slot: flat % k,
                        value: self.host_idx[rank].get(flat).copied().unwrap_or(i64::MIN),
                        experts: self.spec.experts,
                        count: e[2] as usize,
                    }
                    .on_rank(rank)
                }
                code => Error::Timeout {
                    rank,
                    phase: match code {
                        error_code::DISPATCH_TIMEOUT => "dispatch receive",
                        error_code::COMBINE_TIMEOUT => "combine receive",
                        _ => "dispatch receive (row count above M)",
                    },
                    peer: e[1] as usize,
                },
            });
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits, checks for errors and copies every rank's dispatch results to the host.
    pub fn dispatched(&mut self) -> Result<Vec<RankDispatch>, Error> {
        self.check()?;
        let stream = self.gpu.stream();
        let t = &self.tensors;
        let s = &self.spec;
        let (r, l) = (s.ranks as usize, s.local_experts() as usize);
        let count = stream
            .clone_dtoh(&t.recv_count)
            .cuda("reading recv_count")?;
        let src = stream.clone_dtoh(&t.recv_src).cuda("reading recv_src")?;
        let range = stream
            .clone_dtoh(&t.recv_range)
            .cuda("reading recv_range")?;
        let x = stream.clone_dtoh(&t.recv_x).cuda("reading recv_x")?;
        let scales = stream
            .clone_dtoh(&t.recv_scales)
            .cuda("reading recv_scales")?;
        let rows = l * r * s.max_tokens_per_rank as usize;
        let payload = self.window.payload_bytes as usize;
        let sc = self.window.scale_count as usize;
        Ok((0..r)
            .map(|d| RankDispatch {
                recv_count: count[d * l..][..l].to_vec(),
                recv_src: src[d * rows..][..rows].to_vec(),
                recv_range: range[d * l * r * 2..][..l * r * 2].to_vec(),
                recv_x: x[d * rows * payload..][..rows * payload].to_vec(),
                recv_scales: if sc == 0 {
                    Vec::new()
                } else {
                    scales[d * rows * sc..][..rows * sc].to_vec()
                },
            })
            .collect())
    }

    /// Waits, checks for errors and copies every rank's combined `out [T, H]` to the host.
    pub fn combined(&mut self) -> Result<Vec<Vec<u16>>, Error> {
        self.check()?;
        let out = self
            .gpu
            .stream()
            .clone_dtoh(&self.tensors.out)
            .cuda("reading out")?;
        let (m, h) = (
            self.spec.max_tokens_per_rank as usize,
            self.spec.hidden as usize,
        );
        Ok(self
            .tokens
            .iter()
            .enumerate()
            .map(|(rank, &t)| out[rank * m * h..][..t * h].to_vec())
            .collect())
    }
}
