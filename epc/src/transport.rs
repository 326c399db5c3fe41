//! Where `epc run` and `epc bench` put their ranks: all on one GPU as virtual ranks, or one per
//! GPU over NCCL.
//!
//! With `--transport nccl`, a process is either one rank (`--nccl-rank`/`--nccl-ranks`, or the
//! rank variables of torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`) or Open MPI
//! (`OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`)), or the
//! launcher: with one GPU it runs a 1-rank communicator itself, with several it starts one
//! process of itself per GPU, hands them NCCL's unique id through `EPC_NCCL_ID`, and relays
//! their output.
//!
//! The ranks of one job meet through NCCL's unique id: `EPC_NCCL_ID` (hex), or a file named by
//! `--nccl-id-file` / `EPC_NCCL_ID_FILE` that rank 0 writes (atomically) and the other ranks
//! wait for (at most 120 s; a file older than a minute when the rank started is a previous
//! job's and is not read).

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ep_codegen::{Renderer, Spec};
use ep_runtime::transport::{NcclComm, NcclUniqueId};
use ep_runtime::{Gpu, HtGroup, Jit, LowLatency, ModeGroup};

use crate::cli::{TransportArg, TransportArgs};

/// How long a rank waits for rank 0's unique-id file, and a launcher for its children.
const ID_WAIT: Duration = Duration::from_secs(120);
const CHILD_WAIT: Duration = Duration::from_secs(1800);

/// This process's part of a job.
pub enum Placement {
    /// Every rank on GPU 0.
    Virtual,
    /// One NCCL rank of `ranks` on GPU `device`.
    NcclRank {
        /// This rank.
        rank: usize,
        /// Ranks in all.
        ranks: usize,
        /// The GPU.
        device: usize,
    },
    /// Starts one process per GPU (`gpus` of them) and waits for them.
    NcclLauncher {
        /// GPUs, and so ranks.
        gpus: usize,
    },
}

/// What a command's transport arguments make of this process.
pub enum Role {
    /// Runs its part of the job here.
    Here(Placement),
    /// Was the launcher: the job's processes ran and ended with this code.
    Launched(ExitCode),
}

impl Placement {
    /// For a command that also takes `--ranks` (`ranks`): [`Placement::of`], except that a
    /// launcher starts the job's processes and waits for them, and `--ranks` over NCCL is an
    /// error (the job has one rank per GPU).
    pub fn for_command(args: &TransportArgs, ranks: Option<u32>) -> Result<Role> {
        let placement = Placement::of(args)?;
        if let Placement::NcclLauncher { gpus } = placement {
            return launch(gpus).map(Role::Launched);
        }
        if let (Some(_), Some(r)) = (ranks, placement.ranks()) {
            bail!(
                "--ranks does not apply to --transport nccl: the job has {}, one per GPU",
                crate::words::count(r as usize, "rank")
            );
        }
        Ok(Role::Here(placement))
    }

    /// Decides from the arguments, the environment and the GPUs present.
    pub fn of(args: &TransportArgs) -> Result<Placement> {
        if args.transport == TransportArg::Virtual {
            if args.nccl_rank.is_some() || args.nccl_ranks.is_some() {
                bail!("--nccl-rank/--nccl-ranks need --transport nccl");
            }
            return Ok(Placement::Virtual);
        }
        let env = |names: &[&str]| -> Result<Option<usize>> {
            for name in names {
                if let Ok(v) = std::env::var(name) {
                    return v
                        .trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| anyhow!("{name}={v:?} is not a rank number"));
                }
            }
            Ok(None)
        };
        let rank = match args.nccl_rank {
            Some(r) => Some(r),
            None => env(&["RANK", "OMPI_COMM_WORLD_RANK"])?,
        };
        let ranks = match args.nccl_ranks {
            Some(r) => Some(r),
            None => env(&["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"])?,
        };
        let gpus = Gpu::count();
        match (rank, ranks) {
            (Some(rank), Some(ranks)) => {
                if ranks == 0 || rank >= ranks {
                    bail!("NCCL rank {rank} of {ranks}: the rank must be below the rank count");
                }
                let device = match args.nccl_device {
                    Some(d) => d,
                    None => env(&["LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"])?
                        .unwrap_or(rank % gpus.max(1)),
                };
                Ok(Placement::NcclRank {
                    rank,
                    ranks,
                    device,
                })
            }
            (None, None) if gpus <= 1 => Ok(Placement::NcclRank {
                rank: 0,
                ranks: 1,
                device: 0,
            }),
            (None, None) => Ok(Placement::NcclLauncher { gpus }),
            _ => bail!(
                "an NCCL rank needs both its rank and the rank count (--nccl-rank and \
                 --nccl-ranks, or RANK and WORLD_SIZE)"
            ),
        }
    }

    /// The rank count the spec must run with, if this placement fixes one.
    pub fn ranks(&self) -> Option<u32> {
        match self {
            Placement::Virtual => None,
            Placement::NcclRank { ranks, .. } => Some(*ranks as u32),
            Placement::NcclLauncher { gpus } => Some(*gpus as u32),
        }
    }

    /// The GPU this process uses.
    pub fn device(&self) -> usize {
        match self {
            Placement::NcclRank { device, .. } => *device,
            _ => 0,
        }
    }
}

/// Which knobs a group runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knobs {
    /// The tuning database's where the spec says `auto`, with token buckets: what users get.
    Tuned,
    /// Exactly the spec's (`auto`: the analytic defaults): what `epc tune` times.
    AsSpecSays,
}

/// This process's ranks, made once per process: nothing for virtual ranks, the NCCL
/// communicator of its rank (a unique id serves one communicator, so every spec's group is
/// registered on this one).
pub struct Ranks {
    comm: Option<NcclComm>,
}

impl Ranks {
    /// Joins the job (NCCL: makes the communicator, collectively with the other ranks).
    pub fn join(placement: &Placement, args: &TransportArgs, gpu: &Gpu) -> Result<Ranks> {
        let comm = match placement {
            Placement::Virtual => None,
            Placement::NcclRank { rank, ranks, .. } => {
                let id = unique_id(args, *rank)?;
                Some(
                    NcclComm::init_rank(gpu, &id, *rank, *ranks)
                        .with_context(|| format!("NCCL rank {rank} of {ranks}"))?,
                )
            }
            Placement::NcclLauncher { .. } => bail!("the launcher runs no ranks itself"),
        };
        Ok(Ranks { comm })
    }

    /// The LL group of `spec` on this process's ranks: all virtual ranks, or its NCCL rank
    /// (collective: every rank sets up the same specs in the same order).
    pub fn ll_group(
        &self,
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
        knobs: Knobs,
    ) -> Result<LowLatency> {
        match self.mode_group(gpu, jit, renderer, spec, knobs)? {
            ModeGroup::Ll(group) => Ok(LowLatency::from_group(group)),
            ModeGroup::Ht(_) => bail!(
                "{} is a high_throughput spec, not a low_latency one",
                spec.name()
            ),
        }
    }

    /// The high-throughput group of `spec` on this process's ranks (collective, as
    /// [`Ranks::ll_group`]).
    pub fn ht_group(
        &self,
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
        knobs: Knobs,
    ) -> Result<HtGroup> {
        match self.mode_group(gpu, jit, renderer, spec, knobs)? {
            ModeGroup::Ht(group) => Ok(group),
            ModeGroup::Ll(_) => bail!(
                "{} is a low_latency spec, not a high_throughput one",
                spec.name()
            ),
        }
    }

    fn mode_group(
        &self,
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
        knobs: Knobs,
    ) -> Result<ModeGroup> {
        let comm = self.comm.as_ref();
        Ok(match knobs {
            Knobs::Tuned => ModeGroup::new(gpu, jit, renderer, spec, comm)?,
            Knobs::AsSpecSays => ModeGroup::as_spec_says(gpu, jit, renderer, spec, comm)?,
        })
    }

    /// The transport's name in tuning keys: `virtual` or `nccl`.
    pub fn transport(&self) -> &'static str {
        if self.comm.is_some() {
            "nccl"
        } else {
            "virtual"
        }
    }

    /// Whether this process speaks for the job: every process of virtual ranks, rank 0 of an
    /// NCCL job.
    pub fn lead(&self) -> bool {
        self.comm.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// Every process's `values` in rank order (NCCL: an all-gather, collective); with virtual
    /// ranks, the values themselves.
    pub fn gather(&self, gpu: &Gpu, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        match &self.comm {
            None => Ok(vec![values.to_vec()]),
            Some(comm) => Ok(comm
                .all_gather_f64(gpu, values)?
                .chunks(values.len().max(1))
                .map(<[f64]>::to_vec)
                .collect()),
        }
    }
}

/// NCCL's unique id for this job: `EPC_NCCL_ID`, the id file (rank 0 writes it), or, for a
/// job of one process, a new one.
fn unique_id(args: &TransportArgs, rank: usize) -> Result<NcclUniqueId> {
    if let Ok(hex) = std::env::var("EPC_NCCL_ID") {
        return NcclUniqueId::from_hex(hex.trim()).context("EPC_NCCL_ID");
    }
    let Some(path) = &args.nccl_id_file else {
        if args.nccl_ranks.unwrap_or(1) <= 1 && std::env::var_os("WORLD_SIZE").is_none() {
            return Ok(NcclComm::unique_id()?);
        }
        bail!(
            "the ranks of an NCCL job need a shared unique id: set EPC_NCCL_ID (hex) or \
             --nccl-id-file PATH (rank 0 writes it)"
        );
    };
    if rank == 0 {
        let id = NcclComm::unique_id()?;
        write_atomically(path, &id.to_hex())?;
        return Ok(id);
    }
    let start = Instant::now();
    let fresh_after = std::time::SystemTime::now() - Duration::from_secs(60);
    let fresh = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= fresh_after)
    };
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) if fresh(path) => {
                return NcclUniqueId::from_hex(text.trim())
                    .with_context(|| format!("the NCCL id in {}", path.display()));
            }
            _ if start.elapsed() < ID_WAIT => std::thread::sleep(Duration::from_millis(50)),
            _ => bail!(
                "rank {rank}: waited {} s for rank 0 to write a fresh NCCL id to {}",
                ID_WAIT.as_secs(),
                path.display()
            ),
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Starts this program once per GPU as rank i of `gpus` (same arguments, plus the rank
/// options), waits for all, prints each one's output under its rank, and fails if any failed.
fn launch(gpus: usize) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding epc's own executable")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let id = NcclComm::unique_id()?;
    println!(
        "NCCL: starting {}, one per GPU",
        crate::words::count(gpus, "process")
    );
    let mut children = Vec::with_capacity(gpus);
    for rank in 0..gpus {
        let child = Command::new(&exe)
            .args(&args)
            .args(["--nccl-rank", &rank.to_string()])
            .args(["--nccl-ranks", &gpus.to_string()])
            .args(["--nccl-device", &rank.to_string()])
            .env("EPC_NCCL_ID", id.to_hex())
            .env_remove("RANK")
            .env_remove("WORLD_SIZE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push(child);
    }
    // Each child's output is drained as it comes (a full pipe would stall it), and printed
    // under its rank once it ends. When one rank fails, the others (which would wait for it in
    // NCCL, with no timeout of NCCL's own) are stopped.
    let mut readers = Vec::with_capacity(gpus);
    for child in &mut children {
        let pipes = (child.stdout.take(), child.stderr.take());
        readers.push(Some(std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut s) = pipes.0 {
                let _ = s.read_to_string(&mut out);
            }
            if let Some(mut s) = pipes.1 {
                let _ = s.read_to_string(&mut out);
            }
            out
        })));
    }
    let start = Instant::now();
    let mut ended = vec![false; gpus];
    let mut failed = Vec::new();
    while ended.contains(&false) {
        for (rank, child) in children.iter_mut().enumerate() {
            if ended[rank] {
                continue;
            }
            let done = if !failed.is_empty() || start.elapsed() > CHILD_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                Some((
                    false,
                    if failed.is_empty() {
                        format!("still running after {} s; stopped", CHILD_WAIT.as_secs())
                    } else {
                        "stopped after another rank failed".to_owned()
                    },
                ))
            } else {
                child.try_wait()?.map(|s| (s.success(), s.to_string()))
            };
            if let Some((ok, how)) = done {
                if !ok {
                    failed.push(format!("rank {rank}: {how}"));
                }
                if let Some(out) = readers[rank].take().and_then(|r| r.join().ok()) {
                    for line in out.lines() {
                        println!("[rank {rank}] {line}");
                    }
                }
                ended[rank] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("NCCL ranks failed: {}", failed.join("; "))
    }
}
