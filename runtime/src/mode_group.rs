//! [`ModeGroup`]: the group of a spec in whichever mode it names, made in one step from the spec,
//! for interfaces that hand callers one handle for both modes (C, Python).

use std::time::Duration;

use ep_codegen::{Mode, Renderer, Spec};

use crate::ll::Stream;
use crate::transport::NcclComm;
use crate::tuning::{bucket_specs, tuned_spec};
use crate::{Error, Gpu, HtGroup, Jit, LlGroup};

/// A low-latency or a high-throughput group.
#[expect(
    clippy::large_enum_variant,
    reason = "one per group, held behind the interface's own handle"
)]
pub enum ModeGroup {
    /// Low latency.
    Ll(LlGroup),
    /// High throughput.
    Ht(HtGroup),
}

/// The single group of a one-member call.
fn one<T>(mut groups: Vec<T>) -> Result<T, Error> {
    match groups.len() {
        1 => groups
            .pop()
            .ok_or_else(|| Error::Input("no group was made".into())),
        n => Err(Error::Input(format!("{n} groups made for one GPU"))),
    }
}

impl ModeGroup {
    /// The group of `spec` on `gpu`, its tuned knobs applied where it says `auto`
    /// ([`tuned_spec`], and low latency's smaller token-count buckets' own, [`bucket_specs`])
    /// and its kernels rendered and compiled: all of its ranks as virtual ranks of `gpu` with
    /// no communicator, else this process's rank over `comm` (collective).
    pub fn new(
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
        comm: Option<&NcclComm>,
    ) -> Result<ModeGroup, Error> {
        let transport = if comm.is_some() { "nccl" } else { "virtual" };
        let (tuned, source) = tuned_spec(spec, gpu, jit, transport);
        let mut group = ModeGroup::as_spec_says(gpu, jit, renderer, &tuned, comm)?;
        if let ModeGroup::Ll(ll) = &mut group {
            for (max_tokens, s) in bucket_specs(spec, &source) {
                ll.add_bucket(jit, max_tokens, &s, &renderer.render(&s)?)?;
            }
        }
        Ok(group)
    }

    /// The group of `spec` with exactly the knobs it names (`auto` gives the analytic
    /// defaults; the tuning database is not read): what `epc tune` times.
    pub fn as_spec_says(
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
        comm: Option<&NcclComm>,
    ) -> Result<ModeGroup, Error> {
        let kernels = renderer.render(spec)?;
        Ok(match (spec.mode(), comm) {
            (Mode::LowLatency, None) => {
                ModeGroup::Ll(LlGroup::virtual_ranks(gpu, jit, spec, &kernels)?)
            }
            (Mode::LowLatency, Some(c)) => {
                ModeGroup::Ll(one(LlGroup::nccl(&[(gpu, c)], jit, spec, &kernels)?)?)
            }
            (Mode::HighThroughput, None) => {
                ModeGroup::Ht(HtGroup::virtual_ranks(gpu, jit, spec, &kernels)?)
            }
            (Mode::HighThroughput, Some(c)) => {
                ModeGroup::Ht(one(HtGroup::nccl(&[(gpu, c)], jit, spec, &kernels)?)?)
            }
        })
    }

    /// The spec the group runs (with its tuned knobs).
    pub fn spec(&self) -> &Spec {
        match self {
            ModeGroup::Ll(l) => l.spec(),
            ModeGroup::Ht(h) => h.spec(),
        }
    }

    /// The global ranks the group drives.
    pub fn ranks(&self) -> Vec<usize> {
        match self {
            ModeGroup::Ll(l) => l.ranks(),
            ModeGroup::Ht(h) => h.ranks(),
        }
    }

    /// Bounds every wait for a peer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        match self {
            ModeGroup::Ll(l) => l.set_timeout(timeout),
            ModeGroup::Ht(h) => h.set_timeout(timeout),
        }
    }

    /// Waits for `stream` and reports the first error the kernels recorded.
    pub fn check(&mut self, stream: Stream<'_>) -> Result<(), Error> {
        match self {
            ModeGroup::Ll(l) => l.check(stream),
            ModeGroup::Ht(h) => h.check(stream, "the last call"),
        }
    }

    /// Frees the windows (over NCCL after every rank meets once more).
    pub fn close(self) -> Result<(), Error> {
        match self {
            ModeGroup::Ll(l) => LlGroup::close(vec![l]),
            ModeGroup::Ht(h) => HtGroup::close(vec![h]),
        }
    }
}
