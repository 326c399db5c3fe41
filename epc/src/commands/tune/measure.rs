//! Compiling and timing the variants of one spec.

use anyhow::Result;
use ep_codegen::{Mode, Renderer, Spec, Tuning};
use ep_runtime::reference::ll::RankInput;
use ep_runtime::routing::Pattern;
use ep_runtime::{Arch, Gpu, Jit};

use super::report::label;
use crate::cli::TuneArgs;
use crate::commands::bench::ll_inputs;
use crate::progress::bar;
use crate::transport::{Knobs, Ranks};

/// The median time of one variant's two phases at one token count, microseconds (infinite:
/// it failed to run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phases {
    /// Dispatch (LL: send and receive; HT: notify and the data kernels).
    pub dispatch: f64,
    /// Combine, send and receive.
    pub combine: f64,
}

impl Phases {
    const FAILED: Phases = Phases {
        dispatch: f64::INFINITY,
        combine: f64::INFINITY,
    };

    /// Both phases.
    pub fn total(&self) -> f64 {
        self.dispatch + self.combine
    }
}

/// One variant's results.
pub struct Variant {
    /// Its knobs (the spec's own tuning for the defaults).
    pub tuning: Tuning,
    /// Registers of its dispatch kernel, or why it did not compile.
    pub compiled: std::result::Result<u32, String>,
    /// Per token-count bucket: `None` when not timed (the budget ran out).
    pub times: Vec<Option<Phases>>,
}

impl Variant {
    /// Its time in bucket `b`, when it ran.
    pub fn total(&self, b: usize) -> Option<f64> {
        self.times
            .get(b)
            .copied()
            .flatten()
            .map(|p| p.total())
            .filter(|t| t.is_finite())
    }
}

/// Compiles every variant's kernels, on every CPU core; a failure is the variant's, not the run's.
pub fn compile_all(
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    tunings: &[Tuning],
    arch: Arch,
    buckets: usize,
) -> Vec<Variant> {
    let progress = bar(tunings.len(), "compiling variants");
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tunings.len().max(1));
    let mut out: Vec<Option<Variant>> = (0..tunings.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let mut first = 0;
        for chunk in out.chunks_mut(tunings.len().div_ceil(threads).max(1)) {
            let start = first;
            first += chunk.len();
            let progress = &progress;
            s.spawn(move || {
                for (i, slot) in chunk.iter_mut().enumerate() {
                    let tuning = tunings[start + i];
                    let compiled = compile_one(jit, renderer, spec, tuning, arch);
                    progress.inc(1);
                    *slot = Some(Variant {
                        tuning,
                        compiled,
                        times: vec![None; buckets],
                    });
                }
            });
        }
    });
    progress.finish_and_clear();
    out.into_iter().flatten().collect()
}

fn compile_one(
    jit: &Jit,
    renderer: &Renderer,
    spec: &Spec,
    tuning: Tuning,
    arch: Arch,
) -> std::result::Result<u32, String> {
    let variant = spec.with_tuning(tuning).map_err(|e| e.to_string())?;
    let kernels = renderer.render(&variant).map_err(|e| e.to_string())?;
    let mut registers = 0;
    for k in &kernels {
        let cubin = jit.cubin(k, arch).map_err(|e| e.to_string())?;
        if k.name == "ll_dispatch" || k.name == "ht_dispatch" {
            registers = cubin.metadata.stats.registers.unwrap_or(0);
        }
    }
    Ok(registers)
}

/// What timing needs: the GPU, the compiler and this process's ranks (all virtual ranks, or
/// its NCCL rank).
pub struct Timer<'a> {
    pub gpu: &'a Gpu,
    pub jit: &'a Jit,
    pub renderer: &'a Renderer,
    pub ranks: &'a Ranks,
    pub args: &'a TuneArgs,
}

impl Timer<'_> {
    /// Times every compiled variant at each bucket's last token count, the defaults first,
    /// within the budget; the bar says the best so far. Over NCCL the ranks decide together
    /// (collective): the budget by the longest any rank has spent, each time by the slowest
    /// rank's.
    pub fn time_all(&self, spec: &Spec, found: &mut [Variant], tokens: &[usize]) -> Result<()> {
        let start = std::time::Instant::now();
        let progress = bar(found.len(), "timing variants");
        let mut best = f64::INFINITY;
        for (i, v) in found.iter_mut().enumerate() {
            progress.inc(1);
            let spent = self.slowest(&[start.elapsed().as_secs_f64()])?;
            if i > 0 && spent[0] > self.args.budget {
                continue;
            }
            if v.compiled.is_err() {
                // Every rank compiled the same sources: all skip it.
                v.times = vec![Some(Phases::FAILED); tokens.len()];
                continue;
            }
            let timed = spec
                .with_tuning(v.tuning)
                .map_err(anyhow::Error::from)
                .and_then(|variant| self.time_variant(&variant, tokens));
            let mine = match timed {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!("{}: {} does not run: {e:#}", spec.name(), label(&v.tuning));
                    vec![Phases::FAILED; tokens.len()]
                }
            };
            let flat: Vec<f64> = mine.iter().flat_map(|p| [p.dispatch, p.combine]).collect();
            v.times = self
                .slowest(&flat)?
                .chunks(2)
                .map(|p| {
                    Some(Phases {
                        dispatch: p[0],
                        combine: p[1],
                    })
                })
                .collect();
            let sum: f64 = v.times.iter().flatten().map(Phases::total).sum();
            if sum < best {
                best = sum;
                progress.set_message(format!("best so far: {} ({sum:.1} us)", label(&v.tuning)));
            }
        }
        progress.finish_and_clear();
        Ok(())
    }

    /// The largest of every rank's `values`, element by element (NCCL: an all-gather).
    fn slowest(&self, values: &[f64]) -> Result<Vec<f64>> {
        let all = self.ranks.gather(self.gpu, values)?;
        Ok((0..values.len())
            .map(|i| {
                all.iter()
                    .filter_map(|r| r.get(i).copied())
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .collect())
    }

    /// This process's ranks' inputs at `t` tokens per rank.
    fn mine(&self, spec: &Spec, ranks: &[usize], t: usize) -> Vec<RankInput> {
        let all = ll_inputs(spec, t, Pattern::Uniform);
        ranks.iter().map(|&r| all[r].clone()).collect()
    }

    /// One variant's phases at each token count.
    fn time_variant(&self, spec: &Spec, tokens: &[usize]) -> Result<Vec<Phases>> {
        match spec.mode() {
            Mode::LowLatency => self.time_ll(spec, tokens),
            Mode::HighThroughput => tokens.iter().map(|&t| self.time_ht(spec, t)).collect(),
        }
    }

    /// The median of `repeats` samples, ordered by their total.
    fn median(&self, mut sample: impl FnMut() -> Result<Phases>) -> Result<Phases> {
        let mut samples = (0..self.args.repeats.max(1))
            .map(|_| sample())
            .collect::<Result<Vec<_>>>()?;
        samples.sort_by(|a, b| a.total().total_cmp(&b.total()));
        Ok(samples[samples.len() / 2])
    }

    fn time_ll(&self, spec: &Spec, tokens: &[usize]) -> Result<Vec<Phases>> {
        let mut ll =
            self.ranks
                .ll_group(self.gpu, self.jit, self.renderer, spec, Knobs::AsSpecSays)?;
        let ranks = ll.group().ranks();
        let mut call = ll.new_call()?;
        let mut out = Vec::with_capacity(tokens.len());
        for &t in tokens {
            call.set_inputs(self.gpu, &self.mine(spec, &ranks, t))?;
            out.push(self.median(|| {
                let p = ll.time_phases(&mut call, self.args.warmup, self.args.iters)?;
                Ok(Phases {
                    dispatch: p.dispatch,
                    combine: p.combine,
                })
            })?);
        }
        Ok(out)
    }

    fn time_ht(&self, spec: &Spec, t: usize) -> Result<Phases> {
        let mut group =
            self.ranks
                .ht_group(self.gpu, self.jit, self.renderer, spec, Knobs::AsSpecSays)?;
        let got = group.dispatch(&self.mine(spec, &group.ranks(), t))?;
        // The rows' values do not change the time; each rank returns zeros.
        let h = spec.hidden() as usize;
        let y: Vec<Vec<u16>> = got.iter().map(|g| vec![0; g.recv_src.len() * h]).collect();
        group.combine(&y)?;
        self.median(|| {
            let p = group.time_phases(self.args.warmup, self.args.iters)?;
            Ok(Phases {
                dispatch: p.notify + p.dispatch,
                combine: p.combine,
            })
        })
    }
}
