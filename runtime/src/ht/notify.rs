//! The notify phase of high-throughput mode on R virtual ranks: every rank's layout counts
//! exchanged through the windows, and what each rank derives from them (see
//! `ep_codegen::kernels::ht`), read back for the caller.

use std::time::Duration;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr};
use ep_codegen::kernels::ht::{
    HtWindow, NOTIFY_ARGS_BYTES, NOTIFY_OVERFLOW, NOTIFY_STATUS_WORDS, NOTIFY_TIMEOUT,
    NotifyOutputs, NotifyWindow, data_path_built, notify_output_ints,
};
use ep_codegen::kernels::ll::MAX_LAUNCH_RANKS;
use ep_codegen::{KernelSource, Mode, Spec};

use crate::error::CudaContextExt;
use crate::launch::{Grid, launch};
use crate::ll::{DEFAULT_TIMEOUT, Stream};
use crate::reference::Layout;
use crate::transport::VirtualRanks;
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

/// Notify for all R ranks of a high-throughput spec as virtual ranks of one GPU.
pub struct HtNotify {
    gpu: Gpu,
    spec: Spec,
    functions: [CudaFunction; 2],
    windows: VirtualRanks,
    /// Per rank: the layout counters `[R + E + 2]`.
    counters: CudaSlice<i32>,
    /// Per rank: the outputs.
    out: CudaSlice<i32>,
    /// Per rank: status words.
    status: CudaSlice<i32>,
    /// Per rank: the epoch word.
    epochs: CudaSlice<u32>,
    timeout: Duration,
}

impl HtNotify {
    /// The notify kernels of `spec` (from `kernels`, compiled by `jit`) on R virtual ranks.
    pub fn virtual_ranks(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<HtNotify, Error> {
        if spec.mode() != Mode::HighThroughput {
            return Err(Error::Input(format!(
                "spec `{}` is not a high_throughput spec",
                spec.name()
            )));
        }
        let source = kernels
            .iter()
            .find(|k| k.name == "ht_notify" && k.spec_hash == spec.hash())
            .ok_or_else(|| {
                Error::Input(format!("no ht_notify kernel rendered for {}", spec.name()))
            })?;
        let functions = <[CudaFunction; 2]>::try_from(jit.load(gpu, source)?.functions)
            .map_err(|_| Error::Input("ht_notify must have a send and a receive entry".into()))?;
        let (r, e) = (spec.ranks() as usize, spec.experts() as usize);
        // The whole high-throughput window when dispatch and combine are built (notify's region
        // comes first), else notify's region alone.
        let bytes = if data_path_built(spec) {
            HtWindow::of(spec).bytes
        } else {
            NotifyWindow::of(spec).bytes
        };
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        let windows = VirtualRanks::new(gpu, r, bytes)?;
        let stream = gpu.stream();
        let zeros = |n: usize, what: &str| {
            stream
                .alloc_zeros::<i32>(n.max(1))
                .cuda(&format!("allocating notify's {what}"))
        };
        Ok(HtNotify {
            gpu: gpu.clone(),
            spec: spec.clone(),
            functions,
            counters: zeros(r * (r + e + 2), "counters")?,
            out: zeros(r * notify_output_ints(spec) as usize, "outputs")?,
            status: zeros(r * NOTIFY_STATUS_WORDS as usize, "status words")?,
            epochs: stream
                .alloc_zeros::<u32>(r)
                .cuda("allocating notify's epochs")?,
            windows,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes how long a receive waits for a peer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The GPU.
    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The windows.
    pub(crate) fn windows_mut(&mut self) -> &mut VirtualRanks {
        &mut self.windows
    }

    /// The timeout of every wait, in nanoseconds.
    pub(crate) fn timeout_ns(&self) -> u64 {
        u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Device addresses of rank `rank`'s notify outputs, epoch word and status words, and of the
    /// peer table.
    pub(crate) fn rank_state(
        &self,
        rank: usize,
    ) -> (CUdeviceptr, CUdeviceptr, CUdeviceptr, CUdeviceptr) {
        let stream = self.gpu.stream();
        let words = notify_output_ints(&self.spec) as usize;
        let (out, _s1) = self.out.device_ptr(stream);
        let (epochs, _s2) = self.epochs.device_ptr(stream);
        let (status, _s3) = self.status.device_ptr(stream);
        let (peers, _s4) = self.windows.peers().device_ptr(stream);
        (
            out + (rank * words * 4) as u64,
            epochs + (rank * 4) as u64,
            status + (rank * NOTIFY_STATUS_WORDS as usize * 4) as u64,
            peers,
        )
    }

    /// Reads and clears the status words: the first rank's error, if any.
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
        for (rank, s) in status.chunks(NOTIFY_STATUS_WORDS as usize).enumerate() {
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
                code => {
                    return Err(Error::Input(format!(
                        "rank {rank}: {phase} reported the unknown status {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// One notify over the ranks' layouts (`layouts[r]` of rank r, as the layout kernel
    /// computes it), read back per rank. A peer that never signals is [`Error::Timeout`]; a
    /// receive buffer too small is [`Error::Capacity`].
    pub fn run(&mut self, layouts: &[Layout]) -> Result<Vec<NotifyResult>, Error> {
        let (r, e) = (self.spec.ranks() as usize, self.spec.experts() as usize);
        if layouts.len() != r
            || layouts
                .iter()
                .any(|l| l.num_tokens_per_rank.len() != r || l.num_tokens_per_expert.len() != e)
        {
            return Err(Error::Input(format!(
                "notify takes {r} layouts of {r} rank counts and {e} expert counts"
            )));
        }
        let mut host = vec![0i32; r * (r + e + 2)];
        for (rank, l) in layouts.iter().enumerate() {
            let row = &mut host[rank * (r + e + 2)..];
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
        self.launch_phases()?;
        let out = stream
            .clone_dtoh(&self.out)
            .cuda("reading notify's outputs")?;
        self.take_status("notify receive")?;
        let words = notify_output_ints(&self.spec) as usize;
        Ok((0..r)
            .map(|rank| NotifyResult::of(&self.spec, &out[rank * words..(rank + 1) * words]))
            .collect())
    }

    /// The send for every rank, then the receive for every rank (chunks of at most
    /// [`MAX_LAUNCH_RANKS`] ranks per launch), on the GPU's stream.
    pub(crate) fn launch_phases(&self) -> Result<(), Error> {
        let stream = self.gpu.stream();
        let (r, e) = (self.spec.ranks() as usize, self.spec.experts() as usize);
        let words = notify_output_ints(&self.spec) as usize;
        let base = |s: &CudaSlice<i32>| {
            let (ptr, _sync) = s.device_ptr(stream);
            ptr
        };
        let (counters, out, status) = (base(&self.counters), base(&self.out), base(&self.status));
        let epochs = {
            let (ptr, _sync) = self.epochs.device_ptr(stream);
            ptr
        };
        let peers = {
            let (ptr, _sync) = self.windows.peers().device_ptr(stream);
            ptr
        };
        let args: Vec<NotifyArgs> = (0..r)
            .map(|rank| NotifyArgs {
                counters: counters + (rank * (r + e + 2) * 4) as u64,
                out: out + (rank * words * 4) as u64,
                status: status + (rank * NOTIFY_STATUS_WORDS as usize * 4) as u64,
                epoch: epochs + (rank * 4) as u64,
                peers,
                rank: rank as i32,
                unused: 0,
            })
            .collect();
        let grid = Grid {
            blocks: 1,
            threads: ep_codegen::kernels::ht::NOTIFY_THREADS,
            cooperative: false,
        };
        let timeout_ns = u64::try_from(self.timeout.as_nanos()).unwrap_or(u64::MAX);
        self.gpu
            .context()
            .bind_to_thread()
            .cuda("making the GPU's context current")?;
        for f in &self.functions {
            for chunk in args.chunks(MAX_LAUNCH_RANKS as usize) {
                // SAFETY: `f` is an ht_notify entry of this spec (LaunchArgs of NotifyArgs, as
                // many ranks as launch_ranks); every address points into buffers this struct
                // owns, sized above for R ranks, alive until the stream is synchronized by the
                // reads that follow.
                unsafe { launch(f, grid, chunk, timeout_ns, Stream::from(&**stream))? };
            }
        }
        Ok(())
    }
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
