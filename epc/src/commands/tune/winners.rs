//! Choosing each token-count bucket's winner, checking it against the reference, and storing
//! the result in the tuning database.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use ep_codegen::{Mode, Spec, Tuning};
use ep_runtime::routing::Pattern;
use ep_runtime::tuning::{BucketKnobs, TuningDb, TuningEntry, TuningKey};

use super::measure::{Timer, Variant};
use super::report::label;
use crate::commands::verify::{LlPlan, Plan, verify_ht_on, verify_ll_on};
use crate::transport::Knobs;

/// One bucket's result: the winner (the defaults when nothing beats them) and both times.
pub struct Won {
    /// The bucket's last token count.
    pub tokens: usize,
    /// The winning knobs.
    pub tuning: Tuning,
    /// Its dispatch + combine time there, microseconds.
    pub time_us: f64,
    /// The defaults' time there, microseconds.
    pub default_us: f64,
}

/// Each bucket's winner: the variant with the least dispatch + combine time there. `None`
/// when the defaults could not be timed in some bucket (nothing to compare with).
pub fn choose(found: &[Variant], tokens: &[usize]) -> Option<Vec<Won>> {
    tokens
        .iter()
        .enumerate()
        .map(|(b, &t)| {
            let default_us = found.first()?.total(b)?;
            let (tuning, time_us) = found
                .iter()
                .filter_map(|v| v.total(b).map(|time| (v.tuning, time)))
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            Some(Won {
                tokens: t,
                tuning,
                time_us,
                default_us,
            })
        })
        .collect()
}

fn knobs_of(t: &Tuning) -> BTreeMap<String, u32> {
    let mut knobs = BTreeMap::new();
    if let Some(w) = t.warps_per_block {
        knobs.insert("warps_per_block".to_owned(), w);
    }
    if let Some(s) = t.sms {
        knobs.insert("sms".to_owned(), s);
    }
    knobs
}

/// Checks `tuned` on this process's ranks against the CPU reference.
fn check(t: &Timer<'_>, tuned: &Spec) -> Result<()> {
    match tuned.mode() {
        Mode::LowLatency => {
            let plan = LlPlan {
                seed: 7,
                routings: 3,
                iters: 1,
                dump: None,
            };
            let mut ll = t
                .ranks
                .ll_group(t.gpu, t.jit, t.renderer, tuned, Knobs::AsSpecSays)?;
            verify_ll_on(&mut ll, tuned, &plan).map(|_| ())
        }
        Mode::HighThroughput => {
            let plan = Plan {
                seed: 7,
                tokens: (tuned.max_tokens_per_rank() as usize).min(512),
                pattern: Pattern::Uniform,
                routings: 2,
                iters: 1,
            };
            let mut group = t
                .ranks
                .ht_group(t.gpu, t.jit, t.renderer, tuned, Knobs::AsSpecSays)?;
            verify_ht_on(&mut group, tuned, &plan)
        }
    }
}

/// Checks every distinct winner against the CPU reference on every rank (collective: a
/// mismatch on any rank stops all), then stores the entry (the last bucket's knobs as the main
/// ones, the smaller buckets' beside them); rank 0 (`lead`) says what won.
pub fn store(t: &Timer<'_>, db: &TuningDb, spec: &Spec, won: &[Won], lead: bool) -> Result<()> {
    let Some(main) = won.last() else {
        return Ok(());
    };
    let mut checked: Vec<Tuning> = Vec::new();
    for w in won {
        if checked.contains(&w.tuning) {
            continue;
        }
        let here = spec
            .with_tuning(w.tuning)
            .map_err(anyhow::Error::from)
            .and_then(|tuned| check(t, &tuned));
        // Every rank learns whether any failed before one stops.
        let failed = t
            .ranks
            .gather(t.gpu, &[f64::from(u8::from(here.is_err()))])?;
        here.with_context(|| {
            format!(
                "the winner {} does not match the reference",
                label(&w.tuning)
            )
        })?;
        if let Some(rank) = failed.iter().position(|f| f.first() != Some(&0.0)) {
            bail!(
                "the winner {} does not match the reference on NCCL rank {rank}",
                label(&w.tuning)
            );
        }
        checked.push(w.tuning);
    }
    let entry = TuningEntry {
        key: TuningKey::on(spec, t.gpu, t.jit, t.ranks.transport()),
        knobs: knobs_of(&main.tuning),
        time_us: main.time_us,
        default_us: main.default_us,
        buckets: won[..won.len() - 1]
            .iter()
            .map(|w| BucketKnobs {
                max_tokens: w.tokens as u32,
                knobs: knobs_of(&w.tuning),
                time_us: w.time_us,
                default_us: w.default_us,
            })
            .collect(),
        tuned_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        epc_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    db.put(&entry)?;
    if !lead {
        return Ok(());
    }
    for w in won {
        println!(
            "  {}: T <= {}: {} wins ({:.1} us, defaults {:.1} us, {:.2}x)",
            spec.name(),
            w.tokens,
            label(&w.tuning),
            w.time_us,
            w.default_us,
            w.default_us / w.time_us
        );
    }
    println!(
        "  {}: every winner matches the reference; stored in {} under `{}`",
        spec.name(),
        db.dir().display(),
        t.ranks.transport()
    );
    Ok(())
}
