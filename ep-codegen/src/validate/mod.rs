//! Every rule a spec must satisfy, and the reading that comes before them.
//!
//! Three steps, each reporting everything it finds rather than stopping at the first problem:
//! the text becomes a located tree within limits ([`crate::yaml`]); the tree becomes the fields as
//! written ([`read`]: missing, unknown, repeated, or of the wrong kind); then [`check`] applies
//! the rules on values and their consistency and resolves the defaults into a [`Spec`]. Every
//! problem carries the place of the value it is about.

mod read;

use std::collections::HashMap;

use crate::error::{SpecError, SpecErrors};
use crate::spec::{
    Dtype, Fp8, HighThroughput, IndexDtype, Layout, Mode, ScaleFormat, Spec, Tuning,
    recv_rows_ceiling,
};
use crate::yaml::{self, LIMITS, Mark};
use read::{At, FP8_FIELDS, Knob, RawSpec, Reader, SPEC_FIELDS, TUNING_FIELDS};

/// Largest supported top-k.
pub const MAX_TOP_K: i64 = 32;
/// Largest supported expert count (shared-memory histograms are sized by it).
pub const MAX_EXPERTS: i64 = 4096;
/// Largest supported rank count.
pub const MAX_RANKS: i64 = 1024;
/// Largest supported hidden size.
pub const MAX_HIDDEN: i64 = 65536;
/// Largest `max_tokens_per_rank` in low-latency mode.
pub const MAX_LL_TOKENS: i64 = 1024;
/// Largest `max_tokens_per_rank` in high-throughput mode.
pub const MAX_HT_TOKENS: i64 = 1 << 20;
/// The only supported FP8 block size.
pub const FP8_BLOCK: i64 = 128;
/// The longest spec name: it names files and cache folders.
pub const MAX_NAME: usize = 64;

/// One problem before it is turned into a [`SpecError`].
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    /// Dotted field path; empty for the document itself.
    pub path: String,
    /// The value as shown.
    pub value: String,
    /// The rule, in words.
    pub rule: String,
    /// Where, when known before the fallback to the field's mapping.
    pub at: Option<Mark>,
}

/// Parses YAML text and checks every rule. `file` only labels errors.
pub(crate) fn parse_and_validate(text: &str, file: Option<&str>) -> Result<Spec, SpecErrors> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = match yaml::read(text, &LIMITS) {
        Ok(doc) => doc,
        Err(problem) => {
            let finding = Finding {
                path: String::new(),
                value: String::new(),
                rule: problem.message,
                at: Some(problem.at),
            };
            return Err(located(text, file, vec![finding]));
        }
    };
    let mut findings = Vec::new();
    let mut reader = Reader {
        findings: &mut findings,
        places: HashMap::new(),
    };
    let raw = reader.spec(doc.root.as_ref());
    let places = reader.places;
    if let Some(p) = doc.trailing {
        findings.push(Finding {
            path: String::new(),
            value: String::new(),
            rule: p.message,
            at: Some(p.at),
        });
    }
    let mut c = Checker {
        findings,
        places,
        root: doc.root.as_ref().map_or(Mark::START, |r| r.at),
    };
    let spec = check(&mut c, &raw);
    if c.findings.is_empty() {
        Ok(spec)
    } else {
        Err(located(text, file, c.findings))
    }
}

/// Findings as errors, in the order of the text, each with its line shown.
fn located(text: &str, file: Option<&str>, mut findings: Vec<Finding>) -> SpecErrors {
    findings.sort_by_key(|f| f.at.map(|m| (m.line, m.column)));
    findings.dedup_by(|a, b| a.path == b.path && a.rule == b.rule && a.at == b.at);
    SpecErrors(
        findings
            .into_iter()
            .map(|f| {
                let at = f.at.unwrap_or(Mark::START);
                SpecError::at(file, at.line, at.column, text, f.path, f.value, f.rule)
            })
            .collect(),
    )
}

/// Collects rule violations, each placed at the value it is about.
struct Checker {
    findings: Vec<Finding>,
    /// Where each written field's value starts.
    places: HashMap<String, Mark>,
    /// The spec's top mapping: the place of problems with no written value (a default).
    root: Mark,
}

impl Checker {
    /// The place of `path`'s value, else of the nearest written mapping holding it.
    fn place(&self, path: &str) -> Mark {
        let mut p = path;
        loop {
            if let Some(m) = self.places.get(p) {
                return *m;
            }
            match p.rsplit_once('.') {
                Some((parent, _)) => p = parent,
                None => return self.root,
            }
        }
    }

    fn fail(&mut self, path: &str, value: impl ToString, rule: impl Into<String>) {
        let at = self.place(path);
        self.findings.push(Finding {
            path: path.to_owned(),
            value: value.to_string(),
            rule: rule.into(),
            at: Some(at),
        });
    }

    /// Checks `lo <= value <= hi`.
    fn range(&mut self, path: &str, value: i64, lo: i64, hi: i64) -> bool {
        if value < lo || value > hi {
            self.fail(path, value, format!("must be between {lo} and {hi}"));
            return false;
        }
        true
    }

    /// A required integer in range: `Some` only when written and valid.
    fn required(&mut self, path: &str, v: &Option<At<i64>>, lo: i64, hi: i64) -> Option<i64> {
        let v = v.as_ref()?.value;
        self.range(path, v, lo, hi).then_some(v)
    }

    fn knob(&mut self, path: &str, knob: &Option<At<Knob>>, allowed: Allowed) -> Option<u32> {
        match knob.as_ref()?.value {
            Knob::Auto => None,
            Knob::Int(v) => match allowed {
                Allowed::Range(lo, hi) => self.range(path, v, lo, hi).then_some(v as u32),
                Allowed::OneOf(set) => {
                    if set.contains(&v) {
                        Some(v as u32)
                    } else {
                        self.fail(path, v, format!("must be one of {set:?}"));
                        None
                    }
                }
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Allowed {
    Range(i64, i64),
    OneOf(&'static [i64]),
}

/// A value as shown in a message: at most 80 characters (the middle elided), control characters
/// escaped so that a spec cannot drive the terminal.
pub(crate) fn shortened(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let safe = |cs: &[char]| -> String {
        cs.iter()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    if chars.len() <= 80 {
        return safe(&chars);
    }
    format!(
        "{}...{} ({} characters)",
        safe(&chars[..50]),
        safe(&chars[chars.len() - 20..]),
        chars.len()
    )
}

fn check_name(c: &mut Checker, name: &str) {
    let chars = name.chars().count();
    let shown = shortened(&format!("{name:?}"));
    if chars == 0 || chars > MAX_NAME {
        c.fail(
            "name",
            shown,
            format!("must be 1 to {MAX_NAME} characters (it names files), not {chars}"),
        );
    } else if !name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.fail(
            "name",
            shown,
            "must use only letters, digits, `.`, `-` and `_` (it names files)",
        );
    } else if name.starts_with('.') {
        c.fail(
            "name",
            shown,
            "must not start with `.` (it names files and folders)",
        );
    }
}

/// Applies the rules; the returned spec is meaningful only when no problem was recorded.
fn check(c: &mut Checker, raw: &RawSpec) -> Spec {
    if let Some(name) = &raw.name {
        check_name(c, &name.value);
    }
    let value = |v: &Option<At<Dtype>>| v.as_ref().map(|a| a.value);

    // Dtypes.
    let dtype = value(&raw.dtype).unwrap_or(Dtype::Bf16);
    if dtype == Dtype::Fp8E4m3 {
        c.fail(
            "dtype",
            dtype.as_str(),
            "activations must be bf16 or fp16 (fp8 is a dispatch payload only)",
        );
    }
    let dispatch_dtype = value(&raw.dispatch_dtype).unwrap_or(dtype);
    if dispatch_dtype != Dtype::Fp8E4m3 && dispatch_dtype != dtype {
        c.fail(
            "dispatch_dtype",
            dispatch_dtype.as_str(),
            format!(
                "must be fp8_e4m3 or the activation dtype ({})",
                dtype.as_str()
            ),
        );
    }
    let combine_dtype = value(&raw.combine_dtype).unwrap_or(dtype);
    if combine_dtype != dtype {
        c.fail(
            "combine_dtype",
            combine_dtype.as_str(),
            format!(
                "must equal the activation dtype ({}): combine returns activations",
                dtype.as_str()
            ),
        );
    }

    // Hidden size and FP8.
    let hidden = c.required("hidden", &raw.hidden, 1, MAX_HIDDEN);
    if let Some(h) = hidden
        && (h * i64::from(dtype.size())) % 16 != 0
    {
        c.fail(
            "hidden",
            h,
            format!(
                "a row of {h} x {} bytes must be a multiple of 16 bytes (hidden a multiple of {})",
                dtype.size(),
                16 / dtype.size()
            ),
        );
    }
    let fp8 = if dispatch_dtype == Dtype::Fp8E4m3 {
        let written = raw.fp8.as_ref().map(|f| &f.value);
        if let Some(block) = written.and_then(|f| f.block.as_ref())
            && block.value != FP8_BLOCK
        {
            c.fail(
                "fp8.block",
                block.value,
                format!("only {FP8_BLOCK}-channel scale blocks are supported"),
            );
        }
        if let Some(h) = hidden
            && h % FP8_BLOCK != 0
        {
            c.fail(
                "hidden",
                h,
                format!("fp8 dispatch needs hidden to be a multiple of {FP8_BLOCK}"),
            );
        }
        let scale = written
            .and_then(|f| f.scale.as_ref())
            .map_or(ScaleFormat::F32, |s| s.value);
        Some(Fp8 {
            block: FP8_BLOCK as u32,
            scale,
        })
    } else {
        if raw.fp8.is_some() {
            c.fail(
                "fp8",
                "(set)",
                "fp8 settings need `dispatch_dtype: fp8_e4m3`",
            );
        }
        None
    };

    // Experts and ranks.
    let experts = c.required("experts", &raw.experts, 1, MAX_EXPERTS);
    let top_k = c.required("top_k", &raw.top_k, 1, MAX_TOP_K);
    if let (Some(e), Some(k)) = (experts, top_k)
        && k > e
    {
        c.fail("top_k", k, format!("must not exceed experts ({e})"));
    }
    let ranks = c.required("ranks", &raw.ranks, 1, MAX_RANKS);
    if let (Some(e), Some(r)) = (experts, ranks)
        && e % r != 0
    {
        c.fail(
            "experts",
            e,
            format!(
                "must be divisible by ranks ({r}) so every rank holds the same number of experts"
            ),
        );
    }
    let nvlink_domain = match &raw.nvlink_domain {
        Some(g) => c.required("nvlink_domain", &Some(g.clone()), 1, MAX_RANKS),
        None => ranks,
    };
    if let (Some(g), Some(r), true) = (nvlink_domain, ranks, raw.nvlink_domain.is_some())
        && r % g != 0
    {
        c.fail(
            "nvlink_domain",
            g,
            format!("must divide ranks ({r}): every NVLink domain holds the same number of ranks"),
        );
    }

    // Token capacities and the mode's own fields.
    let mode = raw.mode.as_ref().map(|m| m.value);
    let max_tokens_limit = match mode {
        Some(Mode::LowLatency) => MAX_LL_TOKENS,
        Some(Mode::HighThroughput) | None => MAX_HT_TOKENS,
    };
    let tokens = c.required(
        "max_tokens_per_rank",
        &raw.max_tokens_per_rank,
        1,
        max_tokens_limit,
    );
    let high_throughput = match mode {
        Some(Mode::LowLatency) | None => {
            if mode.is_some() {
                for (field, set) in [
                    (
                        "max_recv_tokens_per_rank",
                        raw.max_recv_tokens_per_rank.is_some(),
                    ),
                    ("layout", raw.layout.is_some()),
                    ("expert_alignment", raw.expert_alignment.is_some()),
                ] {
                    if set {
                        c.fail(
                            field,
                            "(set)",
                            "only high_throughput mode has this field (low_latency receives expert-major into [L, R*M, H])",
                        );
                    }
                }
            }
            None
        }
        Some(Mode::HighThroughput) => {
            let sizes = match (experts, top_k, ranks, tokens) {
                (Some(e), Some(k), Some(r), Some(m)) => Some((e, k, r, m)),
                _ => None,
            };
            Some(check_high_throughput(c, raw, sizes))
        }
    };

    let t = &raw.tuning;
    let tuning = Tuning {
        sms: c.knob("tuning.sms", &t.sms, Allowed::Range(1, 1024)),
        warps_per_block: c.knob(
            "tuning.warps_per_block",
            &t.warps_per_block,
            Allowed::Range(1, 32),
        ),
        tokens_per_warp: c.knob(
            "tuning.tokens_per_warp",
            &t.tokens_per_warp,
            Allowed::Range(1, 64),
        ),
        vector_bytes: c.knob(
            "tuning.vector_bytes",
            &t.vector_bytes,
            Allowed::OneOf(&[4, 8, 16]),
        ),
        unroll: c.knob("tuning.unroll", &t.unroll, Allowed::Range(1, 16)),
    };

    let as_u32 = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    Spec {
        name: raw
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_default(),
        mode: mode.unwrap_or(Mode::LowLatency),
        hidden: as_u32(hidden),
        dtype,
        dispatch_dtype,
        fp8,
        combine_dtype,
        index_dtype: raw
            .index_dtype
            .as_ref()
            .map_or(IndexDtype::I64, |i| i.value),
        experts: as_u32(experts),
        top_k: as_u32(top_k),
        ranks: as_u32(ranks),
        nvlink_domain: as_u32(nvlink_domain),
        max_tokens_per_rank: as_u32(tokens),
        high_throughput,
        tuning,
    }
}

/// The high-throughput fields; `sizes` is (experts, top_k, ranks, tokens) when all are valid.
fn check_high_throughput(
    c: &mut Checker,
    raw: &RawSpec,
    sizes: Option<(i64, i64, i64, i64)>,
) -> HighThroughput {
    let layout = raw.layout.as_ref().map_or(Layout::Flat, |l| l.value);
    let alignment = raw.expert_alignment.as_ref().map(|a| a.value);
    let expert_alignment = match (layout, alignment) {
        (Layout::Flat, None | Some(1)) => 1,
        (Layout::Flat, Some(a)) => {
            c.fail(
                "expert_alignment",
                a,
                "only `layout: expert_major` pads expert groups (flat takes 1 or nothing)",
            );
            1
        }
        (Layout::ExpertMajor, None) => {
            if !c.places.contains_key("expert_alignment") {
                c.fail(
                    "expert_alignment",
                    "(missing)",
                    "`layout: expert_major` needs expert_alignment (rows per group multiple, e.g. 128)",
                );
            }
            1
        }
        (Layout::ExpertMajor, Some(a)) => {
            if c.range("expert_alignment", a, 1, 1024) && (a & (a - 1)) != 0 {
                c.fail("expert_alignment", a, "must be a power of two");
            }
            a.clamp(1, 1024)
        }
    };
    let max_recv = match &raw.max_recv_tokens_per_rank {
        None if c.places.contains_key("max_recv_tokens_per_rank") => 0,
        None => {
            c.fail(
                "max_recv_tokens_per_rank",
                "(missing)",
                "high_throughput mode needs the receive buffer's capacity in rows",
            );
            0
        }
        Some(v) => {
            let v = v.value;
            if c.range("max_recv_tokens_per_rank", v, 1, i64::from(u32::MAX))
                && let Some((experts, top_k, ranks, tokens)) = sizes
            {
                let ceiling =
                    recv_rows_ceiling(layout, experts, top_k, ranks, tokens, expert_alignment);
                if v > ceiling {
                    c.fail(
                        "max_recv_tokens_per_rank",
                        v,
                        format!("exceeds the {ceiling} rows that can ever arrive on one rank; use at most that"),
                    );
                }
            }
            v
        }
    };
    let as_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    HighThroughput {
        max_recv_tokens_per_rank: as_u32(max_recv),
        layout,
        expert_alignment: as_u32(expert_alignment),
    }
}

/// The known field closest to a misspelling, if it is close.
pub fn did_you_mean(word: &str) -> Option<&'static str> {
    let all: Vec<&'static str> = SPEC_FIELDS
        .iter()
        .chain(FP8_FIELDS)
        .chain(TUNING_FIELDS)
        .copied()
        .collect();
    closest(word, &all)
}

/// The word of `known` closest to `word`, if it is close enough to be a likely misspelling.
pub(crate) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    crate::suggest::closest(word, known.iter().copied())
}
