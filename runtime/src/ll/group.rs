//! [`LlGroup`]: the low-latency mode of one spec on the ranks this process drives on one GPU
//! (R virtual ranks, or one NCCL rank), fed by the caller's device tensors on the caller's stream.

use std::time::Duration;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use ep_codegen::kernels::ll::{CallLayout, Window, launch_ranks, workspace_ints};
use ep_codegen::{KernelSource, Mode, Spec};

use super::call::{CombineInput, DispatchInput, LlCall};
use super::errors::read_errors;
use super::launch::RankArgs;
use super::tensor::{Elem, Stream, Tensor};
use crate::error::CudaContextExt;
use crate::launch::{Grid, launch};
use crate::transport::{LocalRank, Transport, VirtualRanks};
use crate::{Error, Gpu, Jit};

/// How long a receive waits for a peer before reporting a timeout, unless changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Low-latency dispatch and combine of one spec, for the ranks this process drives on one GPU.
///
/// A call is [`LlGroup::dispatch_send`] (returns at once: the hook), [`LlGroup::dispatch_recv`]
/// (when the tokens are wanted), the experts' kernel writing [`LlCall::received`]`.y` in place,
/// [`LlGroup::combine_send`] and [`LlGroup::combine_recv`]. Every launch goes on the stream the
/// caller gives; nothing is allocated, copied through the host or synchronized with the host,
/// so the whole sequence can be captured into a CUDA graph. Errors the kernels find (an expert
/// id outside `[-1, E)`, a peer that never signalled) are recorded on the device and read on
/// request with [`LlGroup::check`].
pub struct LlGroup {
    gpu: Gpu,
    spec: Spec,
    window: Window,
    call_layout: CallLayout,
    /// The compiled kernels of calls up to `max_tokens_per_rank` tokens per rank.
    main: Kernels,
    /// Kernels of smaller token-count buckets (tuned apart), ascending: a call runs the first
    /// whose bucket holds its tokens, else `main`.
    buckets: Vec<Kernels>,
    _transport: Transport,
    ranks: Vec<LocalRank>,
    workspace: CudaSlice<i32>,
    workspace_ptr: CUdeviceptr,
    timeout_ns: u64,
    calls_made: u32,
    id: u64,
    /// Met its peers for the last time ([`LlGroup::close`]).
    closed: bool,
}

impl LlGroup {
    /// All R ranks of `spec` as virtual ranks of `gpu`, with the spec's kernels (`kernels`,
    /// from [`ep_codegen::Renderer::render`] or a macro's embedded sources) compiled by `jit`.
    pub fn virtual_ranks(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<LlGroup, Error> {
        check_mode(spec)?;
        let r = spec.ranks() as usize;
        let bytes = usize::try_from(Window::of(spec).bytes()).unwrap_or(usize::MAX);
        let windows = VirtualRanks::new(gpu, r, bytes)?;
        let ranks = LocalRank::of_virtual(gpu, &windows);
        LlGroup::build(gpu, jit, spec, kernels, Transport::Virtual(windows), ranks)
    }

    pub(crate) fn build(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
        transport: Transport,
        ranks: Vec<LocalRank>,
    ) -> Result<LlGroup, Error> {
        check_mode(spec)?;
        let max_tokens = spec.max_tokens_per_rank() as usize;
        let main = Kernels::load(gpu, jit, spec, kernels, ranks.len(), max_tokens)?;
        let stream = gpu.stream();
        let g = ranks.len();
        let workspace = stream
            .alloc_zeros::<i32>(g * workspace_ints(spec) as usize)
            .cuda("allocating the rank workspaces")?;
        let window = Window::of(spec);
        let workspace_ptr = {
            let (ptr, _sync) = workspace.device_ptr(stream);
            ptr
        };
        Ok(LlGroup {
            gpu: gpu.clone(),
            spec: spec.clone(),
            window,
            call_layout: CallLayout::of(spec),
            main,
            buckets: Vec::new(),
            _transport: transport,
            ranks,
            workspace,
            workspace_ptr,
            timeout_ns: DEFAULT_TIMEOUT.as_nanos() as u64,
            calls_made: 0,
            id: next_group_id(),
            closed: false,
        })
    }

    /// Adds the kernels calls of at most `max_tokens` tokens per rank run (a token-count
    /// bucket's tuned knobs, [`crate::tuning::bucket_specs`]): `spec` is the group's spec with
    /// another `tuning` section, `kernels` its rendered sources. Windows and protocol do not
    /// depend on the knobs, so ranks running different buckets' kernels work together.
    pub fn add_bucket(
        &mut self,
        jit: &Jit,
        max_tokens: usize,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<(), Error> {
        let m = self.spec.max_tokens_per_rank() as usize;
        if max_tokens == 0 || max_tokens >= m {
            return Err(Error::Input(format!(
                "a token-count bucket ends between 1 and max_tokens_per_rank - 1 = {}, not at \
                 {max_tokens}",
                m - 1
            )));
        }
        if spec.with_tuning(self.spec.tuning()).as_ref().ok() != Some(&self.spec) {
            return Err(Error::Input(format!(
                "the kernels of bucket 1..={max_tokens} are for {}, which differs from the \
                 group's {} in more than its tuning",
                spec.name(),
                self.spec.name()
            )));
        }
        let k = Kernels::load(&self.gpu, jit, spec, kernels, self.ranks.len(), max_tokens)?;
        self.buckets.retain(|old| old.max_tokens != max_tokens);
        let at = self
            .buckets
            .partition_point(|old| old.max_tokens < max_tokens);
        self.buckets.insert(at, k);
        Ok(())
    }

    /// The token-count buckets' ends, ascending (the last is `max_tokens_per_rank`), and the
    /// warps per block and blocks per rank of each.
    pub fn buckets(&self) -> Vec<(usize, u32, u32)> {
        self.buckets
            .iter()
            .chain([&self.main])
            .map(|k| (k.max_tokens, k.threads / 32, k.blocks_per_rank))
            .collect()
    }

    /// The kernels of a call whose ranks have at most `tokens` tokens.
    fn kernels_for(&self, tokens: usize) -> &Kernels {
        self.buckets
            .iter()
            .find(|k| k.max_tokens >= tokens)
            .unwrap_or(&self.main)
    }

    /// The spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The window layout.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The global ranks this group drives, in the order of the per-rank arguments of every call.
    pub fn ranks(&self) -> Vec<usize> {
        self.ranks.iter().map(|r| r.rank).collect()
    }

    /// How many ranks this group drives.
    pub fn local_ranks(&self) -> usize {
        self.ranks.len()
    }

    /// How long receives wait for peers before reporting a timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    }

    /// Allocates one call's state (setup, not the hot path). Calls use the two halves of the
    /// windows in turn: the first call made uses half 0, the second half 1, the third half 0...
    /// Two calls may be in flight at once when they use different halves; every rank must make
    /// its calls in the same order. A call can be reused for any number of consecutive calls.
    pub fn new_call(&mut self) -> Result<LlCall, Error> {
        let half = self.calls_made % 2;
        self.calls_made += 1;
        LlCall::new(self, half)
    }

    pub(crate) fn call_layout(&self) -> &CallLayout {
        &self.call_layout
    }

    pub(crate) fn local(&self) -> &[LocalRank] {
        &self.ranks
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Starts a call: each rank's selections are written into the experts' windows.
    /// `inputs[i]` belongs to `ranks()[i]`: `x [T, H]` (the activation dtype) and
    /// `topk_idx [T, K]` (the spec's index dtype), `T <= max_tokens_per_rank`, chosen per rank.
    /// Ids outside `[-1, E)` are skipped (nothing is written for them) and recorded as an
    /// error that [`LlGroup::check`] reports. [`LlGroup::dispatch_recv`] completes it: work
    /// may run between the two (the hook); [`LlGroup::dispatch`] does both in one launch.
    pub fn dispatch_send(
        &self,
        call: &mut LlCall,
        inputs: &[DispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        self.start_dispatch(call, inputs, Entry::Send, stream)
    }

    /// A whole dispatch ([`LlGroup::dispatch_send`], then [`LlGroup::dispatch_recv`]) in one
    /// launch where the group's ranks fit one (over NCCL, and up to `launch_ranks` virtual
    /// ranks), else in two. The call's [`LlCall::received`] views are then valid on `stream`.
    pub fn dispatch(
        &self,
        call: &mut LlCall,
        inputs: &[DispatchInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        if self.one_launch() {
            return self.start_dispatch(call, inputs, Entry::Fused, stream);
        }
        self.start_dispatch(call, inputs, Entry::Send, stream)?;
        self.dispatch_recv(call, stream)
    }

    /// Checks a dispatch's inputs and launches its send (`Entry::Send`) or the whole of it.
    fn start_dispatch(
        &self,
        call: &mut LlCall,
        inputs: &[DispatchInput],
        entry: Entry,
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        call.belongs_to(self)?;
        self.expect_ranks(inputs.len(), "dispatch inputs")?;
        let (h, k, m) = (
            self.spec.hidden() as usize,
            self.spec.top_k() as usize,
            self.spec.max_tokens_per_rank() as usize,
        );
        let (act, index) = (
            Elem::of(self.spec.dtype()),
            Elem::of_index(self.spec.index_dtype()),
        );
        for (i, input) in inputs.iter().enumerate() {
            let rank = self.ranks[i].rank;
            let t = input.x.shape().first().copied().unwrap_or(0);
            if t > m {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens exceed max_tokens_per_rank = {m}"
                )));
            }
            input.x.expect(rank, "x", &[t, h], act)?;
            input.topk_idx.expect(rank, "topk_idx", &[t, k], index)?;
        }
        let args = |i: usize, lr: &LocalRank| RankArgs {
            x: inputs[i].x.ptr(),
            topk_idx: inputs[i].topk_idx.ptr(),
            tokens: inputs[i].x.shape()[0] as i32,
            ..self.rank_args(call, i, lr)
        };
        let k = self.kernels_for(inputs.iter().map(|i| i.x.shape()[0]).max().unwrap_or(0));
        self.launch_all(&k.dispatch[entry as usize], k.send_grid(), &args, stream)?;
        call.sent(inputs.iter().map(|i| i.x.shape()[0]));
        Ok(())
    }

    /// Completes a call's dispatch: waits for every rank's rows and takes the row counts. The
    /// call's [`LlCall::received`] views are then valid on `stream`. Launch it after the call's
    /// [`LlGroup::dispatch_send`] on the stream (the same stream, or one that waits for an event
    /// recorded after the send): on one GPU the receive waits for the senders' flags only, and
    /// the send launch's end is what completes the rows there (across GPUs the receive also
    /// waits for every peer's rows to land).
    pub fn dispatch_recv(&self, call: &LlCall, stream: Stream<'_>) -> Result<(), Error> {
        call.belongs_to(self)?;
        call.require_sent("dispatch_recv")?;
        let args = |i: usize, lr: &LocalRank| self.rank_args(call, i, lr);
        let k = self.call_kernels(call);
        self.launch_all(
            &k.dispatch[Entry::Recv as usize],
            k.recv_grid(),
            &args,
            stream,
        )
    }

    /// Announces that this group's experts have written the call's `y` (on `stream`).
    pub fn combine_send(&self, call: &LlCall, stream: Stream<'_>) -> Result<(), Error> {
        call.belongs_to(self)?;
        call.require_sent("combine_send")?;
        let args = |i: usize, lr: &LocalRank| self.rank_args(call, i, lr);
        let k = self.call_kernels(call);
        self.launch_all(
            &k.combine[Entry::Send as usize],
            k.recv_grid(),
            &args,
            stream,
        )
    }

    /// Pulls the experts' rows of each rank's tokens and reduces them into `out [T, H]`:
    /// `out[t] = sum over k of topk_weights[t, k] * y(row of t, k)` in f32, k in order. `T` is the
    /// call's dispatch's; `inputs[i]` belongs to `ranks()[i]`. Follows
    /// [`LlGroup::combine_send`]; [`LlGroup::combine`] does both in one launch.
    pub fn combine_recv(
        &self,
        call: &LlCall,
        inputs: &[CombineInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        self.finish_combine(call, inputs, Entry::Recv, stream)
    }

    /// A whole combine ([`LlGroup::combine_send`], then [`LlGroup::combine_recv`]) in one launch
    /// where the group's ranks fit one, else in two.
    pub fn combine(
        &self,
        call: &LlCall,
        inputs: &[CombineInput],
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        if self.one_launch() {
            return self.finish_combine(call, inputs, Entry::Fused, stream);
        }
        self.combine_send(call, stream)?;
        self.finish_combine(call, inputs, Entry::Recv, stream)
    }

    /// Checks a combine's inputs and launches its receive (`Entry::Recv`) or the whole of it.
    fn finish_combine(
        &self,
        call: &LlCall,
        inputs: &[CombineInput],
        entry: Entry,
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        call.belongs_to(self)?;
        call.require_sent("combine")?;
        self.expect_ranks(inputs.len(), "combine inputs")?;
        let (h, k) = (self.spec.hidden() as usize, self.spec.top_k() as usize);
        for (i, input) in inputs.iter().enumerate() {
            let (rank, t) = (self.ranks[i].rank, call.tokens()[i]);
            let act = Elem::of(self.spec.dtype());
            input
                .topk_weights
                .expect(rank, "topk_weights", &[t, k], Elem::F32)?;
            input.out.expect(rank, "out", &[t, h], act)?;
        }
        let args = |i: usize, lr: &LocalRank| RankArgs {
            topk_weights: inputs[i].topk_weights.ptr(),
            out: inputs[i].out.ptr(),
            ..self.rank_args(call, i, lr)
        };
        let k = self.call_kernels(call);
        self.launch_all(&k.combine[entry as usize], k.send_grid(), &args, stream)
    }

    /// Waits for `stream`, then reports the first error the kernels recorded (the lowest rank's)
    /// and clears every rank's error words, so the next call starts clean. This is the one
    /// place that synchronizes with the host; call it when a result is wanted, not per step.
    pub fn check(&mut self, stream: Stream<'_>) -> Result<(), Error> {
        self.gpu
            .context()
            .bind_to_thread()
            .cuda("binding the context")?;
        // SAFETY: the stream belongs to this GPU's context (`Stream::from_raw`'s contract).
        unsafe { cudarc::driver::result::stream::synchronize(stream.raw()) }
            .cuda("waiting for the stream")?;
        let ranks: Vec<usize> = self.ranks();
        read_errors(&self.gpu, &self.spec, &mut self.workspace, &ranks)
    }

    fn expect_ranks(&self, n: usize, what: &str) -> Result<(), Error> {
        if n != self.ranks.len() {
            return Err(Error::Input(format!(
                "{what}: {n} given for the {} ranks this group drives",
                self.ranks.len()
            )));
        }
        Ok(())
    }

    /// The group's part of rank `i`'s arguments (no caller tensors).
    fn rank_args(&self, call: &LlCall, i: usize, lr: &LocalRank) -> RankArgs {
        let ints = u64::from(workspace_ints(&self.spec));
        RankArgs {
            call: call.state_ptr(i),
            workspace: self.workspace_ptr + 4 * ints * i as u64,
            peers: lr.peers,
            rank: lr.rank as i32,
            half: call.half() as i32,
            one_gpu: i32::from(self.one_gpu()),
            ..RankArgs::default()
        }
    }

    /// Launches `f`, a kernel taking the LL kernels' `LaunchArgs` (the benchmark's empty
    /// kernels, [`ep_codegen::kernels::ll::empty_plan`]), on the grid and with the rank
    /// arguments that `launch` of `call` has.
    pub(crate) fn launch_like(
        &self,
        f: &CudaFunction,
        call: &LlCall,
        launch: LlLaunch,
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        call.belongs_to(self)?;
        call.require_sent("a launch like the call's")?;
        let k = self.call_kernels(call);
        let grid = match launch {
            LlLaunch::Dispatch
            | LlLaunch::Combine
            | LlLaunch::DispatchSend
            | LlLaunch::CombineRecv => k.send_grid(),
            LlLaunch::DispatchRecv | LlLaunch::CombineSend => k.recv_grid(),
        };
        let args = |i: usize, lr: &LocalRank| self.rank_args(call, i, lr);
        self.launch_all(f, grid, &args, stream)
    }

    /// Whether every rank of the spec is one of this group's, on its GPU: then the kernels'
    /// signals order memory at GPU scope, not system scope.
    fn one_gpu(&self) -> bool {
        self.ranks.len() == self.spec.ranks() as usize
    }

    /// Whether every local rank fits one launch, so that a phase can wait inside its one
    /// launch for the others (their blocks are co-resident).
    pub(crate) fn one_launch(&self) -> bool {
        self.ranks.len() <= launch_ranks(&self.spec) as usize
    }

    /// The kernels of a call's dispatch (the bucket of its largest rank's tokens).
    fn call_kernels(&self, call: &LlCall) -> &Kernels {
        self.kernels_for(call.tokens().iter().copied().max().unwrap_or(0))
    }

    /// Launches `f` for every local rank, [`launch_ranks`] ranks at a time.
    fn launch_all(
        &self,
        f: &CudaFunction,
        grid: Grid,
        args: &dyn Fn(usize, &LocalRank) -> RankArgs,
        stream: Stream<'_>,
    ) -> Result<(), Error> {
        self.gpu
            .context()
            .bind_to_thread()
            .cuda("binding the context")?;
        let per = launch_ranks(&self.spec) as usize;
        let mut chunk = [RankArgs::default(); ep_codegen::kernels::ll::MAX_LAUNCH_RANKS as usize];
        for (c, ranks) in self.ranks.chunks(per).enumerate() {
            for (j, lr) in ranks.iter().enumerate() {
                chunk[j] = args(c * per + j, lr);
            }
            // SAFETY: `f` is an entry point of this spec's kernels (or an empty kernel with
            // their `LaunchArgs` parameter, `launch_like`); the caller's tensors were
            // checked against the spec's shapes, and the group's memory (workspace,
            // call state, windows) was allocated for it and lives as long as the group and call.
            unsafe { launch(f, grid, &chunk[..ranks.len()], self.timeout_ns, stream)? };
        }
        Ok(())
    }
}

impl Drop for LlGroup {
    /// Over NCCL, peers read this rank's window until they finish their last combine: before
    /// the window is freed, every rank meets once more (see [`LlGroup::close`]). Every rank
    /// drops its groups in the same order, as it made them; a peer that is gone costs one
    /// timeout and a warning.
    fn drop(&mut self) {
        if self.closed || !self._transport.is_nccl() {
            return;
        }
        if let Err(e) = LlGroup::meet(std::slice::from_mut(self)) {
            tracing::warn!(
                "NCCL rank(s) {:?}: the last meeting before freeing the window failed: {e}",
                self.ranks()
            );
        }
    }
}

impl LlGroup {
    /// Closes groups together: every rank meets once more (a dispatch of no tokens, whose
    /// receive returns only when every rank has sent it, so when no rank reads or writes this
    /// rank's window again), then the groups are dropped and their windows freed. A process
    /// driving several GPUs ([`NcclComm::init_all`](crate::transport::NcclComm::init_all)) closes
    /// its groups with one call: dropped one by one, each would wait for the next one's meeting
    /// (bounded by the timeout). A group dropped alone meets on its own; virtual ranks need none
    /// of this.
    pub fn close(mut groups: Vec<LlGroup>) -> Result<(), Error> {
        let met = if groups.iter().any(|g| g._transport.is_nccl()) {
            LlGroup::meet(&mut groups)
        } else {
            Ok(())
        };
        for g in &mut groups {
            g.closed = true;
        }
        met
    }

    /// A dispatch of zero tokens on every local rank of every group, sent by all before any
    /// receive, then waited for.
    fn meet(groups: &mut [LlGroup]) -> Result<(), Error> {
        let mut calls = Vec::with_capacity(groups.len());
        for g in groups.iter() {
            let mut call = LlCall::new(g, 0)?;
            let (h, k) = (g.spec.hidden() as usize, g.spec.top_k() as usize);
            // SAFETY: empty tensors are never dereferenced.
            let empty = unsafe {
                DispatchInput {
                    x: Tensor::from_raw(0, &[0, h], Elem::of(g.spec.dtype()))?,
                    topk_idx: Tensor::from_raw(0, &[0, k], Elem::of_index(g.spec.index_dtype()))?,
                }
            };
            let cuda = g.gpu.stream().clone();
            g.dispatch_send(&mut call, &vec![empty; g.ranks.len()], Stream::from(&*cuda))?;
            calls.push(call);
        }
        for (g, call) in groups.iter().zip(&calls) {
            let cuda = g.gpu.stream().clone();
            g.dispatch_recv(call, Stream::from(&*cuda))?;
        }
        let mut first = Ok(());
        for g in groups.iter_mut() {
            let cuda = g.gpu.stream().clone();
            let checked = g.check(Stream::from(&*cuda));
            if first.is_ok() {
                first = checked;
            }
        }
        first
    }
}

/// One of a call's launches: a phase in one launch, or one of the hook's four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LlLaunch {
    /// Dispatch in one launch.
    Dispatch,
    /// Combine in one launch.
    Combine,
    /// Dispatch send.
    DispatchSend,
    /// Dispatch receive.
    DispatchRecv,
    /// Combine send.
    CombineSend,
    /// Combine receive.
    CombineRecv,
}

/// The entries of each LL kernel family, in the order the plans declare them.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The send alone.
    Send = 0,
    /// The receive alone.
    Recv = 1,
    /// Send and receive in one launch.
    Fused = 2,
}

/// One compiled variant of a group's kernels, with its launch geometry.
struct Kernels {
    /// Calls of at most this many tokens per rank run it.
    max_tokens: usize,
    /// Send, receive and one-launch entries ([`Entry`]).
    dispatch: [CudaFunction; 3],
    combine: [CudaFunction; 3],
    blocks_per_rank: u32,
    threads: u32,
    /// Whether the send-grid entries must be co-resident (a cooperative launch), as the kernel
    /// plans say (`LaunchShape::cooperative`).
    cooperative: bool,
    /// Whether launches may begin while the kernel before them ends (programmatic dependent
    /// launch: every LL entry waits for it first, `dependent_launch::begin`; sm_90 and later).
    dependent: bool,
}

impl Kernels {
    /// Loads `spec`'s kernels (`sources`) for a group of `local` ranks on `gpu`.
    fn load(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        sources: &[KernelSource],
        local: usize,
        max_tokens: usize,
    ) -> Result<Kernels, Error> {
        let find = |name: &str| {
            sources.iter().find(|k| k.name == name).ok_or_else(|| {
                Error::Input(format!("no {name} kernel rendered for {}", spec.name()))
            })
        };
        let dispatch_src = find("ll_dispatch")?;
        let entries =
            |functions: Vec<CudaFunction>, name: &str| -> Result<[CudaFunction; 3], Error> {
                <[CudaFunction; 3]>::try_from(functions).map_err(|_| {
                    Error::Input(format!(
                        "{name} must have a send, a receive and a one-launch entry"
                    ))
                })
            };
        let dispatch = entries(jit.load(gpu, dispatch_src)?.functions, "ll_dispatch")?;
        let combine_src = find("ll_combine")?;
        let combine = entries(jit.load(gpu, combine_src)?.functions, "ll_combine")?;
        let threads = dispatch_src.launch.block_threads;
        // The send-grid entries take one rank's share of the SMs each: the SMs are split
        // between the ranks of one launch, at the occupancy of the least resident of those
        // entries, so that a launch's blocks are all resident at once on an idle GPU (they do
        // not need to be: see send_grid).
        let mut per_sm = u32::MAX;
        for f in [
            &dispatch[Entry::Send as usize],
            &dispatch[Entry::Fused as usize],
            &combine[Entry::Recv as usize],
            &combine[Entry::Fused as usize],
        ] {
            per_sm = per_sm.min(
                f.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
                    .cuda("querying occupancy")?,
            );
        }
        let per_launch = (launch_ranks(spec) as usize).min(local).max(1) as u32;
        // tuning.sms: the SMs a launch's ranks may occupy together (default: the whole GPU).
        let sms = spec
            .tuning()
            .sms
            .unwrap_or(gpu.sms())
            .min(gpu.sms() * per_sm.max(1));
        let blocks_per_rank = (sms / per_launch).max(1);
        if per_sm == 0 || blocks_per_rank * per_launch > gpu.sms() * per_sm {
            return Err(Error::Input(format!(
                "{per_launch} ranks per launch need {per_launch} co-resident blocks of {threads} \
                 threads, more than this GPU's {} SMs x {per_sm} can hold; use fewer warps per \
                 block",
                gpu.sms()
            )));
        }
        Ok(Kernels {
            max_tokens,
            dispatch,
            combine,
            blocks_per_rank,
            threads,
            cooperative: dispatch_src.launch.cooperative || combine_src.launch.cooperative,
            dependent: gpu.dependent_launch(),
        })
    }

    /// The grid of the entries that span the rank's SMs (the dispatch's send, the combine's
    /// receive, both one-launch entries). The LL plans launch it plain, so that it may begin
    /// while the kernel before it ends: their blocks wait only for lower-numbered blocks of
    /// their rank and for other ranks' flags, so they need no co-residency (the templates'
    /// headers say why).
    fn send_grid(&self) -> Grid {
        Grid {
            blocks: self.blocks_per_rank,
            threads: self.threads,
            cooperative: self.cooperative,
            dependent: self.dependent,
        }
    }

    fn recv_grid(&self) -> Grid {
        Grid {
            blocks: 1,
            threads: self.threads,
            cooperative: false,
            dependent: self.dependent,
        }
    }
}

fn check_mode(spec: &Spec) -> Result<(), Error> {
    if spec.mode() != Mode::LowLatency {
        return Err(Error::Input(format!(
            "spec `{}` is not low_latency",
            spec.name()
        )));
    }
    Ok(())
}

fn next_group_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
