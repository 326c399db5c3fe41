//! The notify phase of high-throughput mode (virtual ranks or NCCL): every rank's layout counts
//! exchanged through the windows, and what each rank derives from them (see
//! `ep_codegen::kernels::ht`), read back for the caller.

use std::time::Duration;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use ep_codegen::kernels::ht::{
    HtWindow, NOTIFY_ARGS_BYTES, NOTIFY_BAD_EXPERT, NOTIFY_OVERFLOW, NOTIFY_STATUS_WORDS,
    NOTIFY_TIMEOUT, NotifyOutputs, notify_output_ints,
};
use ep_codegen::kernels::ll::MAX_LAUNCH_RANKS;
use ep_codegen::{KernelSource, Mode, Spec};

use crate::error::CudaContextExt;
use crate::launch::{Grid, launch};
use crate::ll::{DEFAULT_TIMEOUT, Stream};
use crate::reference::Layout;
use crate::transport::{LocalRank, NcclComm, Transport, VirtualRanks, register_windows};
use crate::{Error, Gpu, Jit};

/// One rank's entry of notify's `LaunchArgs` (`struct RankArgs` in `ht_notify.cu.hbs`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct NotifyArgs {
    counters: CUdeviceptr,
    out: CUdeviceptr,
    status: CUdeviceptr,
    epoch: CUdeviceptr,
    peers: CUdeviceptr,
    topk_idx: CUdeviceptr,
    rank: i32,
    unused: i32,
}

const _: () = assert!(std::mem::size_of::<NotifyArgs>() == NOTIFY_ARGS_BYTES);

/// What notify gives one rank (DESIGN.md "Semantics", HT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyResult {
    /// `[R]`: the first row of this rank's tokens on each destination (flat layout).
    pub send_offset: Vec<i32>,
    /// Rows this rank receives (flat layout).
    pub recv_rows: i32,
    /// `[L]`: slots naming each local expert (`num_recv_tokens_per_expert`).
    pub recv_tokens_per_expert: Vec<i32>,
    /// `[L + 1]`: the first row of each local expert's group (expert-major layout, padded); the
    /// last entry is the rows used.
    pub group_offset: Vec<i32>,
    /// `[E]`: the first row of this rank's slots in each expert's group on its rank.
    pub send_expert_offset: Vec<i32>,
}

impl NotifyResult {
    /// Splits one rank's output words.
    fn of(spec: &Spec, words: &[i32]) -> NotifyResult {
        let o = NotifyOutputs::of(spec);
        let (r, l, e) = (
            spec.ranks() as usize,
            spec.local_experts() as usize,
            spec.experts() as usize,
        );
        let at = |start: u32, n: usize| words[start as usize..start as usize + n].to_vec();
        NotifyResult {
            send_offset: at(o.send_offset, r),
            recv_rows: words[o.recv_rows as usize],
            recv_tokens_per_expert: at(o.recv_tokens_per_expert, l),
            group_offset: at(o.group_offset, l + 1),
            send_expert_offset: at(o.send_expert_offset, e),
        }
    }
}

/// Notify of a high-throughput spec for the ranks this process drives on one GPU: all R as
/// virtual ranks, or one NCCL rank.
pub struct HtNotify {
    gpu: Gpu,
    spec: Spec,
    functions: [CudaFunction; 2],
    windows: Transport,
    ranks: Vec<LocalRank>,
    /// Per local rank: the layout counters `[R + E + 2]`.
    counters: CudaSlice<i32>,
    /// Per local rank: the outputs.
    out: CudaSlice<i32>,
    /// Per local rank: status words.
    status: CudaSlice<i32>,
    /// Per local rank: the epoch word.
    epochs: CudaSlice<u32>,
    timeout: Duration,
    /// Met its peers for the last time ([`HtNotify::close`]).
    closed: bool,
}

/// Bytes of one rank's window: the whole high-throughput window (notify's region comes first).
pub(crate) fn window_bytes(spec: &Spec) -> usize {
    usize::try_from(HtWindow::of(spec).bytes).unwrap_or(usize::MAX)
}

impl HtNotify {
    /// The notify kernels of `spec` (from `kernels`, compiled by `jit`) on R virtual ranks.
    pub fn virtual_ranks(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<HtNotify, Error> {
        check_mode(spec)?;
        let windows = VirtualRanks::new(gpu, spec.ranks() as usize, window_bytes(spec))?;
        let ranks = LocalRank::of_virtual(gpu, &windows);
        HtNotify::build(gpu, jit, spec, kernels, Transport::Virtual(windows), ranks)
    }

    /// Notify for the NCCL ranks this process drives, one member `(gpu, communicator)` per GPU
    /// (see [`crate::LlGroup::nccl`]). Registering the windows is collective: every rank of the
    /// communicators calls this at the same time, with the same spec.
    pub fn nccl(
        members: &[(&Gpu, &NcclComm)],
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<Vec<HtNotify>, Error> {
        check_mode(spec)?;
        let windows = register_windows(spec, members, window_bytes(spec))?;
        members
            .iter()
            .zip(windows)
            .map(|((gpu, _), window)| {
                let rank = LocalRank::of_nccl(&window);
                HtNotify::build(gpu, jit, spec, kernels, Transport::Nccl(window), vec![rank])
            })
            .collect()
    }

    fn build(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
        windows: Transport,
        ranks: Vec<LocalRank>,
    ) -> Result<HtNotify, Error> {
        let source = kernels
            .iter()
            .find(|k| k.name == "ht_notify" && k.spec_hash == spec.hash())
            .ok_or_else(|| {
                Error::Input(format!("no ht_notify kernel rendered for {}", spec.name()))
            })?;
        let functions = <[CudaFunction; 2]>::try_from(jit.load(gpu, source)?.functions)
            .map_err(|_| Error::Input("ht_notify must have a send and a receive entry".into()))?;
        let (n, r, e) = (ranks.len(), spec.ranks() as usize, spec.experts() as usize);
        let stream = gpu.stream();
        let zeros = |count: usize, what: &str| {
            stream
                .alloc_zeros::<i32>(count.max(1))
                .cuda(&format!("allocating notify's {what}"))
        };
        Ok(HtNotify {
            gpu: gpu.clone(),
            spec: spec.clone(),
            functions,
            counters: zeros(n * (r + e + 2), "counters")?,
            out: zeros(n * notify_output_ints(spec) as usize, "outputs")?,
            status: zeros(n * NOTIFY_STATUS_WORDS as usize, "status words")?,
            epochs: stream
                .alloc_zeros::<u32>(n.max(1))
                .cuda("allocating notify's epochs")?,
            windows,
            ranks,
            timeout: DEFAULT_TIMEOUT,
            closed: false,
        })
    }

    /// Changes how long a receive waits for a peer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The ranks this process drives here, in the order of every per-rank argument and result.
    pub fn ranks(&self) -> Vec<usize> {
        self.ranks.iter().map(|r| r.rank).collect()
    }

    /// The GPU.
    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device address of local rank `i`'s window.
    pub(crate) fn window_base(&self, i: usize) -> CUdeviceptr {
        self.ranks[i].window
    }

    /// The timeout of every wait, in nanoseconds.
    pub(crate) fn timeout_ns(&self) -> u64 {
        u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Local rank `i`'s id and the device addresses of its notify outputs, epoch word, status
    /// words and peer table.
    pub(crate) fn rank_state(&self, i: usize) -> RankState {
        let stream = self.gpu.stream();
        let words = notify_output_ints(&self.spec) as usize;
        let (out, _s1) = self.out.device_ptr(stream);
        let (epochs, _s2) = self.epochs.device_ptr(stream);
        let (status, _s3) = self.status.device_ptr(stream);
        RankState {
            rank: self.ranks[i].rank,
            out: out + (i * words * 4) as u64,
            epoch: epochs + (i * 4) as u64,
            status: status + (i * NOTIFY_STATUS_WORDS as usize * 4) as u64,
            peers: self.ranks[i].peers,
        }
    }

    /// Device address of local rank `i`'s layout counters `[R + E + 2]`.
    pub(crate) fn counters_ptr(&self, i: usize) -> CUdeviceptr {
        let (ptr, _sync) = self.counters.device_ptr(self.gpu.stream());
        let stride = self.spec.ranks() as usize + self.spec.experts() as usize + 2;
        ptr + (i * stride * 4) as u64
    }

    /// Reads local rank `i`'s notify outputs (waits for the GPU's work queued so far).
    pub(crate) fn read_outputs(&self) -> Result<Vec<NotifyResult>, Error> {
        let out = self
            .gpu
            .stream()
            .clone_dtoh(&self.out)
            .cuda("reading notify's outputs")?;
        let words = notify_output_ints(&self.spec) as usize;
        Ok((0..self.ranks.len())
            .map(|i| NotifyResult::of(&self.spec, &out[i * words..(i + 1) * words]))
            .collect())
    }

    /// Reads and clears the status words: the first local rank's error, if any.
    pub(crate) fn take_status(&mut self, phase: &'static str) -> Result<(), Error> {
        let stream = self.gpu.stream().clone();
        let status = stream
            .clone_dtoh(&self.status)
            .cuda("reading the status words")?;
        stream
            .memset_zeros(&mut self.status)
            .cuda("clearing the status words")?;
        let capacity = self
            .spec
            .high_throughput()
            .map_or(0, |h| h.max_recv_tokens_per_rank as usize);
        for (local, s) in self
            .ranks
            .iter()
            .zip(status.chunks(NOTIFY_STATUS_WORDS as usize))
        {
            let rank = local.rank;
            match s[0] {
                0 => {}
                NOTIFY_TIMEOUT => {
                    return Err(Error::Timeout {
                        rank,
                        phase,
                        peer: s[1].max(0) as usize,
                    });
                }
                NOTIFY_OVERFLOW => {
                    return Err(Error::Capacity {
                        rank,
                        rows: s[1].max(0) as usize,
                        capacity,
                    });
                }
                NOTIFY_BAD_EXPERT => {
                    let (flat, k) = (s[1].max(0) as usize, self.spec.top_k() as usize);
                    return Err(Error::BadExpertId {
                        token: flat / k,
                        slot: flat % k,
                        value: (i64::from(s[4]) << 32) | i64::from(s[3] as u32),
                        experts: self.spec.experts(),
                        count: s[2].max(0) as usize,
                    }
                    .on_rank(rank));
                }
                code => {
                    return Err(Error::Input(format!(
                        "rank {rank}: {phase} reported the unknown status {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// One notify over the local ranks' layouts (`layouts[i]` of the i-th of
    /// [`HtNotify::ranks`], as the layout kernel computes it), read back per local rank. A peer
    /// that never signals is [`Error::Timeout`]; a receive buffer too small is
    /// [`Error::Capacity`].
    pub fn run(&mut self, layouts: &[Layout]) -> Result<Vec<NotifyResult>, Error> {
        self.start(layouts)?;
        self.finish("notify")
    }

    /// Uploads the layouts' counts and launches notify, without waiting for it: a process
    /// driving several GPUs starts every GPU's notify before it reads any back.
    pub(crate) fn start(&mut self, layouts: &[Layout]) -> Result<(), Error> {
        let (n, r, e) = (
            self.ranks.len(),
            self.spec.ranks() as usize,
            self.spec.experts() as usize,
        );
        if layouts.len() != n
            || layouts
                .iter()
                .any(|l| l.num_tokens_per_rank.len() != r || l.num_tokens_per_expert.len() != e)
        {
            return Err(Error::Input(format!(
                "notify takes {n} layouts (one per local rank) of {r} rank counts and {e} \
                 expert counts"
            )));
        }
        let mut host = vec![0i32; n * (r + e + 2)];
        for (i, l) in layouts.iter().enumerate() {
            let row = &mut host[i * (r + e + 2)..];
            row[..r].copy_from_slice(&l.num_tokens_per_rank);
            row[r..r + e].copy_from_slice(&l.num_tokens_per_expert);
        }
        let stream = self.gpu.stream().clone();
        stream
            .memcpy_htod(&host, &mut self.counters)
            .cuda("uploading the layout counters")?;
        stream
            .memset_zeros(&mut self.status)
            .cuda("clearing notify's status")?;
        self.launch_phases(Stream::from(&*stream), &[])
    }

    /// Waits for the notify [`HtNotify::start`] launched (and for what was queued after it) and
    /// reads what it gave each local rank; an error is reported as `phase`'s.
    pub(crate) fn finish(&mut self, phase: &'static str) -> Result<Vec<NotifyResult>, Error> {
        let out = self.read_outputs()?;
        self.take_status(phase)?;
        Ok(out)
    }

    /// The send for every local rank, then the receive for every local rank (chunks of at most
    /// [`MAX_LAUNCH_RANKS`] ranks per launch), on `stream`. `topk_idx[i]` is local rank i's
    /// expert ids, read only to report a bad id the layout kernel counted (none given: counts
    /// uploaded from the host, which have no bad ids).
    pub(crate) fn launch_phases(
        &self,
        stream: Stream<'_>,
        topk_idx: &[CUdeviceptr],
    ) -> Result<(), Error> {
        let args: Vec<NotifyArgs> = (0..self.ranks.len())
            .map(|i| {
                let state = self.rank_state(i);
                NotifyArgs {
                    counters: self.counters_ptr(i),
                    out: state.out,
                    status: state.status,
                    epoch: state.epoch,
                    peers: state.peers,
                    topk_idx: topk_idx.get(i).copied().unwrap_or(0),
                    rank: state.rank as i32,
                    unused: 0,
                }
            })
            .collect();
        let grid = Grid {
            blocks: 1,
            threads: ep_codegen::kernels::ht::NOTIFY_THREADS,
            cooperative: false,
            // The HT entries read before any wait of their own.
            dependent: false,
        };
        self.gpu
            .context()
            .bind_to_thread()
            .cuda("making the GPU's context current")?;
        for f in &self.functions {
            for chunk in args.chunks(MAX_LAUNCH_RANKS as usize) {
                // SAFETY: `f` is an ht_notify entry of this spec (LaunchArgs of NotifyArgs, as
                // many ranks as launch_ranks); every address points into buffers this struct
                // owns, sized above for its local ranks, or into the windows it holds, alive
                // until the stream is synchronized by the reads that follow.
                unsafe { launch(f, grid, chunk, self.timeout_ns(), stream)? };
            }
        }
        Ok(())
    }

    /// Closes notifies together: every rank meets once more (a notify of no tokens, whose
    /// receive returns only when every rank has sent it, so once no peer reads or writes this
    /// rank's window again), then the windows can be freed. A process driving several GPUs
    /// closes its ranks with one call; dropped one by one, each would wait for the next one's
    /// meeting (bounded by the timeout). Virtual ranks need none of this.
    pub fn close(mut notifies: Vec<HtNotify>) -> Result<(), Error> {
        let mut all: Vec<&mut HtNotify> = notifies.iter_mut().collect();
        HtNotify::close_all(&mut all)
    }

    /// [`HtNotify::close`] over borrowed notifies (a group closes the notify it holds).
    pub(crate) fn close_all(notifies: &mut [&mut HtNotify]) -> Result<(), Error> {
        let met = if notifies.iter().any(|n| n.windows.is_nccl() && !n.closed) {
            HtNotify::meet(notifies)
        } else {
            Ok(())
        };
        for n in notifies.iter_mut() {
            n.closed = true;
        }
        met
    }

    /// A notify of no tokens on every local rank of every notify, sent by all before any
    /// receive is waited for.
    fn meet(notifies: &mut [&mut HtNotify]) -> Result<(), Error> {
        for n in notifies.iter_mut() {
            let (r, e) = (n.spec.ranks() as usize, n.spec.experts() as usize);
            let empty = Layout {
                num_tokens_per_rank: vec![0; r],
                num_tokens_per_expert: vec![0; e],
                is_token_in_rank: Vec::new(),
            };
            let layouts = vec![empty; n.ranks.len()];
            n.start(&layouts)?;
        }
        for n in notifies.iter_mut() {
            n.finish("the closing meeting")?;
        }
        Ok(())
    }
}

impl Drop for HtNotify {
    /// Over NCCL, peers reach this rank's window until they finish their last call: before the
    /// window is freed, every rank meets once more (see [`HtNotify::close`]); a peer that is
    /// gone costs one timeout and a warning.
    fn drop(&mut self) {
        if self.closed || !self.windows.is_nccl() {
            return;
        }
        if let Err(e) = HtNotify::close_all(&mut [self]) {
            tracing::warn!(
                "NCCL rank(s) {:?}: the last meeting before freeing the window failed: {e}",
                self.ranks()
            );
        }
    }
}

/// Where one local rank's notify state is, for the data kernels' arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RankState {
    pub rank: usize,
    pub out: CUdeviceptr,
    pub epoch: CUdeviceptr,
    pub status: CUdeviceptr,
    pub peers: CUdeviceptr,
}

fn check_mode(spec: &Spec) -> Result<(), Error> {
    if spec.mode() != Mode::HighThroughput {
        return Err(Error::Input(format!(
            "spec `{}` is not a high_throughput spec",
            spec.name()
        )));
    }
    Ok(())
}

/// What notify must give every rank, from the ranks' layouts (the definition the kernels are
/// checked against).
pub fn expected_notify(spec: &Spec, layouts: &[Layout]) -> Vec<NotifyResult> {
    let (r, l, e) = (
        spec.ranks() as usize,
        spec.local_experts() as usize,
        spec.experts() as usize,
    );
    let align = spec
        .high_throughput()
        .map_or(1, |h| h.expert_alignment.max(1) as i64);
    let expert_total = |x: usize| -> i64 {
        layouts
            .iter()
            .map(|y| i64::from(y.num_tokens_per_expert[x]))
            .sum()
    };
    // First row of every expert's group on its rank.
    let mut group = vec![0i64; e];
    for (rank, starts) in group.chunks_mut(l.max(1)).enumerate() {
        let mut next = 0;
        for (i, start) in starts.iter_mut().enumerate() {
            *start = next;
            next += (expert_total(rank * l + i) + align - 1) / align * align;
        }
    }
    let clamp = |v: i64| v.min(i64::from(i32::MAX)) as i32;
    (0..r)
        .map(|d| {
            let used = (d * l..(d + 1) * l)
                .map(|x| (expert_total(x) + align - 1) / align * align)
                .sum::<i64>();
            NotifyResult {
                send_offset: (0..r)
                    .map(|x| {
                        clamp(
                            layouts[..d]
                                .iter()
                                .map(|y| i64::from(y.num_tokens_per_rank[x]))
                                .sum(),
                        )
                    })
                    .collect(),
                recv_rows: clamp(
                    layouts
                        .iter()
                        .map(|y| i64::from(y.num_tokens_per_rank[d]))
                        .sum(),
                ),
                recv_tokens_per_expert: (d * l..(d + 1) * l)
                    .map(|x| clamp(expert_total(x)))
                    .collect(),
                group_offset: (d * l..(d + 1) * l)
                    .map(|x| clamp(group[x]))
                    .chain([clamp(used)])
                    .collect(),
                send_expert_offset: (0..e)
                    .map(|x| {
                        clamp(
                            group[x]
                                + layouts[..d]
                                    .iter()
                                    .map(|y| i64::from(y.num_tokens_per_expert[x]))
                                    .sum::<i64>(),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}
