//! YAML parsing and every rule a spec must satisfy.
//!
//! Parsing is two steps: serde reads the text into [`RawSpec`] (unknown fields and malformed
//! values are errors located by the YAML library), then [`check`] applies the rules and resolves
//! defaults into a [`Spec`], collecting every violation rather than stopping at the first.

use serde::Deserialize;

use crate::error::{SpecError, SpecErrors};
use crate::locate::locate;
use crate::spec::{
    Dtype, Fp8, HighThroughput, IndexDtype, Layout, Mode, ScaleFormat, Spec, Tuning,
};

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

/// A tuning knob as written: an integer or the word `auto`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawKnob {
    Int(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTuning {
    sms: Option<RawKnob>,
    warps_per_block: Option<RawKnob>,
    tokens_per_warp: Option<RawKnob>,
    vector_bytes: Option<RawKnob>,
    unroll: Option<RawKnob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFp8 {
    block: Option<i64>,
    scale: Option<ScaleFormat>,
}

/// The spec as written, before rules and defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    mode: Mode,
    hidden: i64,
    dtype: Option<Dtype>,
    dispatch_dtype: Option<Dtype>,
    fp8: Option<RawFp8>,
    combine_dtype: Option<Dtype>,
    index_dtype: Option<IndexDtype>,
    experts: i64,
    top_k: i64,
    ranks: i64,
    nvlink_domain: Option<i64>,
    max_tokens_per_rank: i64,
    max_recv_tokens_per_rank: Option<i64>,
    layout: Option<Layout>,
    expert_alignment: Option<i64>,
    #[serde(default)]
    tuning: RawTuning,
}

/// All field names a spec may hold, for "did you mean" hints.
const FIELDS: &[&str] = &[
    "name",
    "mode",
    "hidden",
    "dtype",
    "dispatch_dtype",
    "fp8",
    "combine_dtype",
    "index_dtype",
    "experts",
    "top_k",
    "ranks",
    "nvlink_domain",
    "max_tokens_per_rank",
    "max_recv_tokens_per_rank",
    "layout",
    "expert_alignment",
    "tuning",
    "block",
    "scale",
    "sms",
    "warps_per_block",
    "tokens_per_warp",
    "vector_bytes",
    "unroll",
];

/// Collects violations with their locations in the source text.
struct Checker<'a> {
    text: &'a str,
    file: Option<&'a str>,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, value: impl ToString, rule: impl Into<String>) {
        let parts: Vec<&str> = path.split('.').collect();
        let (line, column) = locate(self.text, &parts).unzip();
        self.errors.push(SpecError {
            file: self.file.map(str::to_owned),
            line,
            column,
            path: path.to_owned(),
            value: value.to_string(),
            rule: rule.into(),
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

    fn knob(&mut self, path: &str, knob: &Option<RawKnob>, allowed: Allowed) -> Option<u32> {
        match knob {
            None => None,
            Some(RawKnob::Word(w)) if w == "auto" => None,
            Some(RawKnob::Word(w)) => {
                self.fail(path, w, "must be `auto` or an integer");
                None
            }
            Some(RawKnob::Int(v)) => match allowed {
                Allowed::Range(lo, hi) => self.range(path, *v, lo, hi).then_some(*v as u32),
                Allowed::OneOf(set) => {
                    if set.contains(v) {
                        Some(*v as u32)
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

/// Parses YAML text and checks every rule. `file` only labels errors.
pub(crate) fn parse_and_validate(text: &str, file: Option<&str>) -> Result<Spec, SpecErrors> {
    let raw: RawSpec =
        serde_yaml_ng::from_str(text).map_err(|e| SpecErrors(vec![yaml_error(&e, text, file)]))?;
    let mut c = Checker {
        text,
        file,
        errors: Vec::new(),
    };
    let spec = check(&mut c, raw);
    if c.errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(c.errors))
    }
}

/// The longest spec name: it names files and cache folders.
pub const MAX_NAME: usize = 64;

/// A value as shown in a message: at most 80 characters, the middle elided.
fn shortened(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 80 {
        return value.to_owned();
    }
    let head: String = chars[..50].iter().collect();
    let tail: String = chars[chars.len() - 20..].iter().collect();
    format!("{head}...{tail} ({} characters)", chars.len())
}

/// Applies the rules; the returned spec is meaningful only when no error was recorded.
fn check(c: &mut Checker<'_>, raw: RawSpec) -> Spec {
    let name_chars = raw.name.chars().count();
    if name_chars == 0 || name_chars > MAX_NAME {
        c.fail(
            "name",
            shortened(&format!("{:?}", raw.name)),
            format!("must be 1 to {MAX_NAME} characters (it names files), not {name_chars}"),
        );
    } else if !raw
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.fail(
            "name",
            format!("{:?}", raw.name),
            "must use only letters, digits, `-` and `_` (it names files)",
        );
    }

    // Dtypes.
    let dtype = raw.dtype.unwrap_or(Dtype::Bf16);
    if dtype == Dtype::Fp8E4m3 {
        c.fail(
            "dtype",
            dtype.as_str(),
            "activations must be bf16 or fp16 (fp8 is a dispatch payload only)",
        );
    }
    let dispatch_dtype = raw.dispatch_dtype.unwrap_or(dtype);
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
    let combine_dtype = raw.combine_dtype.unwrap_or(dtype);
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
    let hidden = raw.hidden;
    if c.range("hidden", hidden, 1, MAX_HIDDEN) && (hidden * dtype.size() as i64) % 16 != 0 {
        c.fail(
            "hidden",
            hidden,
            format!(
                "a row of {hidden} x {} bytes must be a multiple of 16 bytes (hidden a multiple of {})",
                dtype.size(),
                16 / dtype.size()
            ),
        );
    }
    let fp8 = if dispatch_dtype == Dtype::Fp8E4m3 {
        let block = raw.fp8.as_ref().and_then(|f| f.block).unwrap_or(FP8_BLOCK);
        if block != FP8_BLOCK {
            c.fail(
                "fp8.block",
                block,
                format!("only {FP8_BLOCK}-channel scale blocks are supported"),
            );
        }
        if hidden % FP8_BLOCK != 0 {
            c.fail(
                "hidden",
                hidden,
                format!("fp8 dispatch needs hidden to be a multiple of {FP8_BLOCK}"),
            );
        }
        let scale = raw
            .fp8
            .as_ref()
            .and_then(|f| f.scale)
            .unwrap_or(ScaleFormat::F32);
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
    let experts_ok = c.range("experts", raw.experts, 1, MAX_EXPERTS);
    let top_k_ok = c.range("top_k", raw.top_k, 1, MAX_TOP_K);
    if experts_ok && top_k_ok && raw.top_k > raw.experts {
        c.fail(
            "top_k",
            raw.top_k,
            format!("must not exceed experts ({})", raw.experts),
        );
    }
    let ranks_ok = c.range("ranks", raw.ranks, 1, MAX_RANKS);
    if experts_ok && ranks_ok && raw.experts % raw.ranks != 0 {
        c.fail(
            "experts",
            raw.experts,
            format!(
                "must be divisible by ranks ({}) so every rank holds the same number of experts",
                raw.ranks
            ),
        );
    }
    let nvlink_domain = raw.nvlink_domain.unwrap_or(raw.ranks);
    if c.range("nvlink_domain", nvlink_domain, 1, MAX_RANKS)
        && ranks_ok
        && raw.ranks % nvlink_domain != 0
    {
        c.fail(
            "nvlink_domain",
            nvlink_domain,
            format!(
                "must divide ranks ({}): every NVLink domain holds the same number of ranks",
                raw.ranks
            ),
        );
    }

    // Token capacities and the mode's own fields.
    let max_tokens_limit = match raw.mode {
        Mode::LowLatency => MAX_LL_TOKENS,
        Mode::HighThroughput => MAX_HT_TOKENS,
    };
    let tokens_ok = c.range(
        "max_tokens_per_rank",
        raw.max_tokens_per_rank,
        1,
        max_tokens_limit,
    );
    let high_throughput = match raw.mode {
        Mode::LowLatency => {
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
            None
        }
        Mode::HighThroughput => Some(check_high_throughput(c, &raw, tokens_ok && ranks_ok)),
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

    let as_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    Spec {
        name: raw.name,
        mode: raw.mode,
        hidden: as_u32(hidden),
        dtype,
        dispatch_dtype,
        fp8,
        combine_dtype,
        index_dtype: raw.index_dtype.unwrap_or(IndexDtype::I64),
        experts: as_u32(raw.experts),
        top_k: as_u32(raw.top_k),
        ranks: as_u32(raw.ranks),
        nvlink_domain: as_u32(nvlink_domain),
        max_tokens_per_rank: as_u32(raw.max_tokens_per_rank),
        high_throughput,
        tuning,
    }
}

fn check_high_throughput(c: &mut Checker<'_>, raw: &RawSpec, sizes_ok: bool) -> HighThroughput {
    let layout = raw.layout.unwrap_or(Layout::Flat);
    let expert_alignment = match (layout, raw.expert_alignment) {
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
            c.fail(
                "expert_alignment",
                "(missing)",
                "`layout: expert_major` needs expert_alignment (rows per group multiple, e.g. 128)",
            );
            1
        }
        (Layout::ExpertMajor, Some(a)) => {
            if c.range("expert_alignment", a, 1, 1024) && (a & (a - 1)) != 0 {
                c.fail("expert_alignment", a, "must be a power of two");
            }
            a
        }
    };
    let max_recv = match raw.max_recv_tokens_per_rank {
        None => {
            c.fail(
                "max_recv_tokens_per_rank",
                "(missing)",
                "high_throughput mode needs the receive buffer's capacity in rows",
            );
            1
        }
        Some(v) => {
            // The most rows that can ever arrive on one rank.
            let senders = raw.ranks.saturating_mul(raw.max_tokens_per_rank);
            let ceiling = match layout {
                Layout::Flat => senders,
                Layout::ExpertMajor => {
                    let local = if raw.ranks > 0 {
                        raw.experts / raw.ranks
                    } else {
                        0
                    };
                    senders
                        .saturating_mul(raw.top_k.min(local).max(1))
                        .saturating_add(local.saturating_mul(expert_alignment - 1))
                }
            };
            if c.range("max_recv_tokens_per_rank", v, 1, i64::from(u32::MAX))
                && sizes_ok
                && v > ceiling
            {
                c.fail(
                    "max_recv_tokens_per_rank",
                    v,
                    format!("exceeds the {ceiling} rows that can ever arrive on one rank; use at most that"),
                );
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

/// Turns a serde/YAML error into a located [`SpecError`].
fn yaml_error(e: &serde_yaml_ng::Error, text: &str, file: Option<&str>) -> SpecError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unzip();
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    // serde_yaml_ng writes "path.to.field: message" when it knows the path.
    let (mut path, mut rule) = match message.split_once(": ") {
        Some((p, m))
            if !p.is_empty()
                && p.chars().all(|ch| {
                    ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '[' || ch == ']'
                }) =>
        {
            (p.to_owned(), m.to_owned())
        }
        _ => (String::new(), message.clone()),
    };
    let mut value = String::new();
    if let Some(field) = rule
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_owned)
    {
        path = if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        };
        value = "(set)".into();
        if let Some(best) = did_you_mean(&field) {
            rule = format!("unknown field; did you mean `{best}`?");
        } else {
            rule = format!("unknown field; known fields: {}", FIELDS.join(", "));
        }
    } else if let Some(field) = rule
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_owned)
    {
        path = if path.is_empty() {
            field
        } else {
            format!("{path}.{field}")
        };
        value = "(missing)".into();
        rule = "this field is required".into();
    } else if !path.is_empty() {
        value = locate(text, &path.split('.').collect::<Vec<_>>())
            .and_then(|(l, col)| {
                text.lines()
                    .nth(l - 1)
                    .map(|s| s.get(col - 1..).unwrap_or(s).trim().to_owned())
            })
            .unwrap_or_default();
    }
    SpecError {
        file: file.map(str::to_owned),
        line,
        column,
        path,
        value,
        rule,
    }
}

/// The known field closest to a misspelling, if it is close.
pub fn did_you_mean(word: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .map(|f| (edit_distance(word, f), *f))
        .filter(|&(d, f)| d <= 2.max(f.len() / 4))
        .min()
        .map(|(_, f)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
