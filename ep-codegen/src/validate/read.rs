//! From the YAML tree to a spec's fields as written, each with its place in the text.
//!
//! Reading never stops at the first problem: a missing field, an unknown or repeated one and a
//! value of the wrong kind are each recorded, and reading goes on with the next field.

use std::collections::HashMap;

use super::{Finding, closest};
use crate::spec::{Dtype, IndexDtype, Layout, Mode, ScaleFormat};
use crate::yaml::{Kind, Mark, Node};

/// A value and where it is written.
#[derive(Debug, Clone)]
pub(super) struct At<T> {
    pub value: T,
    pub at: Mark,
}

/// A tuning knob as written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Knob {
    Auto,
    Int(i64),
}

/// `fp8:` as written.
#[derive(Debug, Default)]
pub(super) struct RawFp8 {
    pub block: Option<At<i64>>,
    pub scale: Option<At<ScaleFormat>>,
}

/// `tuning:` as written.
#[derive(Debug, Default)]
pub(super) struct RawTuning {
    pub sms: Option<At<Knob>>,
    pub warps_per_block: Option<At<Knob>>,
    pub tokens_per_warp: Option<At<Knob>>,
    pub vector_bytes: Option<At<Knob>>,
    pub unroll: Option<At<Knob>>,
}

/// The spec as written: `None` where a field is absent or unreadable (then a finding says why).
#[derive(Debug, Default)]
pub(super) struct RawSpec {
    pub name: Option<At<String>>,
    pub mode: Option<At<Mode>>,
    pub hidden: Option<At<i64>>,
    pub dtype: Option<At<Dtype>>,
    pub dispatch_dtype: Option<At<Dtype>>,
    pub fp8: Option<At<RawFp8>>,
    pub combine_dtype: Option<At<Dtype>>,
    pub index_dtype: Option<At<IndexDtype>>,
    pub experts: Option<At<i64>>,
    pub top_k: Option<At<i64>>,
    pub ranks: Option<At<i64>>,
    pub nvlink_domain: Option<At<i64>>,
    pub max_tokens_per_rank: Option<At<i64>>,
    pub max_recv_tokens_per_rank: Option<At<i64>>,
    pub layout: Option<At<Layout>>,
    pub expert_alignment: Option<At<i64>>,
    pub tuning: RawTuning,
}

/// The fields of a spec's top mapping.
pub(super) const SPEC_FIELDS: &[&str] = &[
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
];
/// The fields that have no default.
const REQUIRED: &[&str] = &[
    "name",
    "mode",
    "hidden",
    "experts",
    "top_k",
    "ranks",
    "max_tokens_per_rank",
];
/// The fields of `fp8:`.
pub(super) const FP8_FIELDS: &[&str] = &["block", "scale"];
/// The fields of `tuning:`.
pub(super) const TUNING_FIELDS: &[&str] = &[
    "sms",
    "warps_per_block",
    "tokens_per_warp",
    "vector_bytes",
    "unroll",
];

const MODES: &[(&str, Mode)] = &[
    ("low_latency", Mode::LowLatency),
    ("high_throughput", Mode::HighThroughput),
];
const DTYPES: &[(&str, Dtype)] = &[
    ("bf16", Dtype::Bf16),
    ("fp16", Dtype::Fp16),
    ("fp8_e4m3", Dtype::Fp8E4m3),
];
const INDEX_DTYPES: &[(&str, IndexDtype)] = &[("i32", IndexDtype::I32), ("i64", IndexDtype::I64)];
const LAYOUTS: &[(&str, Layout)] = &[
    ("flat", Layout::Flat),
    ("expert_major", Layout::ExpertMajor),
];
const SCALES: &[(&str, ScaleFormat)] = &[("f32", ScaleFormat::F32), ("ue8m0", ScaleFormat::Ue8m0)];

/// Records findings and where each field was written.
pub(super) struct Reader<'f> {
    pub findings: &'f mut Vec<Finding>,
    /// Where each present field's value starts, by dotted path.
    pub places: HashMap<String, Mark>,
}

impl Reader<'_> {
    fn fail(&mut self, path: &str, at: Mark, value: impl Into<String>, rule: impl Into<String>) {
        self.findings.push(Finding {
            path: path.to_owned(),
            value: value.into(),
            rule: rule.into(),
            at: Some(at),
        });
    }

    /// Reads the document's top value into a [`RawSpec`].
    pub fn spec(&mut self, root: Option<&Node>) -> RawSpec {
        let mut raw = RawSpec::default();
        let Some(root) = root else {
            self.fail(
                "",
                Mark::START,
                "",
                format!(
                    "the spec is empty; it needs at least {}",
                    REQUIRED
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return raw;
        };
        let Kind::Map(_) = &root.kind else {
            let found = describe(root);
            self.fail(
                "",
                root.at,
                "",
                format!(
                    "a spec is a mapping of fields (`name: demo`, `hidden: 7168`, ...), not {found}"
                ),
            );
            return raw;
        };
        let fields = self.fields(root, "", SPEC_FIELDS);
        for required in REQUIRED {
            if !fields.contains_key(required) {
                self.fail(required, root.at, "(missing)", "this field is required");
            }
        }
        for key in SPEC_FIELDS {
            let Some(node) = fields.get(key) else {
                continue;
            };
            let path = (*key).to_owned();
            match *key {
                "name" => raw.name = self.text(&path, node),
                "mode" => raw.mode = self.word(&path, node, MODES),
                "hidden" => raw.hidden = self.int(&path, node),
                "dtype" => raw.dtype = self.word(&path, node, DTYPES),
                "dispatch_dtype" => raw.dispatch_dtype = self.word(&path, node, DTYPES),
                "combine_dtype" => raw.combine_dtype = self.word(&path, node, DTYPES),
                "index_dtype" => raw.index_dtype = self.word(&path, node, INDEX_DTYPES),
                "experts" => raw.experts = self.int(&path, node),
                "top_k" => raw.top_k = self.int(&path, node),
                "ranks" => raw.ranks = self.int(&path, node),
                "nvlink_domain" => raw.nvlink_domain = self.int(&path, node),
                "max_tokens_per_rank" => raw.max_tokens_per_rank = self.int(&path, node),
                "max_recv_tokens_per_rank" => raw.max_recv_tokens_per_rank = self.int(&path, node),
                "layout" => raw.layout = self.word(&path, node, LAYOUTS),
                "expert_alignment" => raw.expert_alignment = self.int(&path, node),
                "fp8" => raw.fp8 = self.fp8(node),
                "tuning" => raw.tuning = self.tuning(node),
                _ => {}
            }
        }
        raw
    }

    fn fp8(&mut self, node: &Node) -> Option<At<RawFp8>> {
        let fields = self.section("fp8", node, FP8_FIELDS)?;
        let mut fp8 = RawFp8::default();
        if let Some(n) = fields.get("block") {
            fp8.block = self.int("fp8.block", n);
        }
        if let Some(n) = fields.get("scale") {
            fp8.scale = self.word("fp8.scale", n, SCALES);
        }
        Some(At {
            value: fp8,
            at: node.at,
        })
    }

    fn tuning(&mut self, node: &Node) -> RawTuning {
        let mut t = RawTuning::default();
        let Some(fields) = self.section("tuning", node, TUNING_FIELDS) else {
            return t;
        };
        for key in TUNING_FIELDS {
            let Some(n) = fields.get(key) else {
                continue;
            };
            let path = format!("tuning.{key}");
            let knob = self.knob(&path, n);
            match *key {
                "sms" => t.sms = knob,
                "warps_per_block" => t.warps_per_block = knob,
                "tokens_per_warp" => t.tokens_per_warp = knob,
                "vector_bytes" => t.vector_bytes = knob,
                "unroll" => t.unroll = knob,
                _ => {}
            }
        }
        t
    }

    /// A nested mapping (`fp8:`, `tuning:`); an empty value counts as an empty mapping.
    fn section<'n>(
        &mut self,
        path: &str,
        node: &'n Node,
        known: &[&'static str],
    ) -> Option<HashMap<&'static str, &'n Node>> {
        match &node.kind {
            Kind::Map(_) => Some(self.fields(node, path, known)),
            Kind::Scalar { text, plain: true } if is_null(text) => Some(HashMap::new()),
            _ => {
                let example = known.first().copied().unwrap_or("field");
                self.fail(
                    path,
                    node.at,
                    shown(node),
                    format!(
                        "expected a mapping of fields (`{path}: {{{example}: ...}}`), not {}",
                        describe(node)
                    ),
                );
                None
            }
        }
    }

    /// The entries of a mapping by name: unknown and repeated keys are findings.
    fn fields<'n>(
        &mut self,
        map: &'n Node,
        prefix: &str,
        known: &[&'static str],
    ) -> HashMap<&'static str, &'n Node> {
        let mut fields: HashMap<&'static str, &'n Node> = HashMap::new();
        let mut lines: HashMap<&'static str, usize> = HashMap::new();
        let Kind::Map(entries) = &map.kind else {
            return fields;
        };
        for (key, value) in entries {
            let Kind::Scalar { text, .. } = &key.kind else {
                self.fail(
                    prefix,
                    key.at,
                    "",
                    format!("a field name is plain text, not {}", describe(key)),
                );
                continue;
            };
            let path = join(prefix, text);
            let Some(&name) = known.iter().find(|k| **k == text.as_str()) else {
                let rule = match closest(text, known) {
                    Some(best) => format!("unknown field; did you mean `{best}`?"),
                    None => format!("unknown field; the fields here are: {}", known.join(", ")),
                };
                self.fail(&super::shortened(&path), key.at, "(set)", rule);
                continue;
            };
            if let Some(first) = lines.get(name) {
                let rule = format!("given twice; the first is on line {first}");
                self.fail(&path, key.at, shown(value), rule);
                continue;
            }
            lines.insert(name, key.at.line);
            // A nested mapping is placed at its key (its first entry may be lines below).
            let place = match value.kind {
                Kind::Scalar { .. } => value.at,
                Kind::Map(_) | Kind::List(_) => key.at,
            };
            self.places.insert(path, place);
            fields.insert(name, value);
        }
        fields
    }

    /// A scalar read as text.
    fn text(&mut self, path: &str, node: &Node) -> Option<At<String>> {
        match &node.kind {
            Kind::Scalar { text, plain } if !(*plain && is_null(text)) => Some(At {
                value: text.clone(),
                at: node.at,
            }),
            _ => {
                self.wrong(path, node, "text");
                None
            }
        }
    }

    /// A word out of `choices`.
    fn word<T: Copy>(&mut self, path: &str, node: &Node, choices: &[(&str, T)]) -> Option<At<T>> {
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        let Kind::Scalar { text, plain } = &node.kind else {
            self.wrong(path, node, &format!("one of {}", list(&words)));
            return None;
        };
        if *plain && is_null(text) {
            self.wrong(path, node, &format!("one of {}", list(&words)));
            return None;
        }
        if let Some((_, v)) = choices.iter().find(|(w, _)| *w == text.as_str()) {
            return Some(At {
                value: *v,
                at: node.at,
            });
        }
        let mut rule = format!("must be one of {}", list(&words));
        if let Some(best) = closest(text, &words) {
            rule.push_str(&format!("; did you mean `{best}`?"));
        }
        self.fail(path, node.at, shown(node), rule);
        None
    }

    /// An integer written as one (decimal, `0x` or `0o`).
    fn int(&mut self, path: &str, node: &Node) -> Option<At<i64>> {
        match &node.kind {
            Kind::Scalar { text, plain: true } => match parse_int(text) {
                Some(Ok(v)) => Some(At {
                    value: v,
                    at: node.at,
                }),
                Some(Err(())) => {
                    self.fail(path, node.at, shown(node), "is too large for an integer");
                    None
                }
                None => {
                    self.wrong(path, node, "an integer");
                    None
                }
            },
            Kind::Scalar { text, plain: false } if parse_int(text.trim()).is_some() => {
                self.fail(
                    path,
                    node.at,
                    shown(node),
                    "expected an integer, found quoted text; write the number without quotes",
                );
                None
            }
            _ => {
                self.wrong(path, node, "an integer");
                None
            }
        }
    }

    /// `auto` or an integer.
    fn knob(&mut self, path: &str, node: &Node) -> Option<At<Knob>> {
        if let Kind::Scalar { text, .. } = &node.kind
            && text == "auto"
        {
            return Some(At {
                value: Knob::Auto,
                at: node.at,
            });
        }
        match &node.kind {
            Kind::Scalar { text, plain: true } if parse_int(text).is_some() => {
                self.int(path, node).map(|v| At {
                    value: Knob::Int(v.value),
                    at: v.at,
                })
            }
            _ => {
                self.wrong(path, node, "`auto` or an integer");
                None
            }
        }
    }

    /// A value of the wrong kind.
    fn wrong(&mut self, path: &str, node: &Node, expected: &str) {
        let rule = match &node.kind {
            Kind::Scalar { text, plain: true } if is_null(text) => {
                format!("needs a value ({expected})")
            }
            _ => format!("expected {expected}, found {}", describe(node)),
        };
        self.fail(path, node.at, shown(node), rule);
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// YAML's null spellings (core schema), which a plain scalar may use.
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// An integer of YAML's core schema: `Some(Err)` when it is one but does not fit 64 bits.
fn parse_int(text: &str) -> Option<Result<i64, ()>> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).unwrap_or(i128::MAX);
    let value = if negative { -magnitude } else { magnitude };
    Some(i64::try_from(value).map_err(|_| ()))
}

/// How a value is named in "found ..." phrases.
fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Map(_) => "a mapping".into(),
        Kind::List(0) => "an empty list".into(),
        Kind::List(n) => format!("a list of {n}"),
        Kind::Scalar { text, plain: true } if is_null(text) => "nothing".into(),
        Kind::Scalar { text, plain: true } if matches!(text.as_str(), "true" | "false") => {
            format!("the boolean `{text}`")
        }
        Kind::Scalar { text, plain: true } if parse_int(text).is_some() => {
            format!("the integer `{}`", super::shortened(text))
        }
        Kind::Scalar { text, plain: true } if looks_like_float(text) => {
            format!("the fractional number `{}`", super::shortened(text))
        }
        Kind::Scalar { plain: true, .. } => "text".into(),
        Kind::Scalar { .. } => "quoted text".into(),
    }
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    matches!(t, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN")
        || (t.parse::<f64>().is_ok() && t.chars().any(|c| c.is_ascii_digit()))
}

/// A value as shown in messages.
fn shown(node: &Node) -> String {
    match &node.kind {
        Kind::Map(_) => "{...}".into(),
        Kind::List(_) => "[...]".into(),
        Kind::Scalar { text, plain: true } if is_null(text) => "(empty)".into(),
        Kind::Scalar { text, plain: true } => super::shortened(text),
        Kind::Scalar { text, .. } => super::shortened(&format!("{text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_int;

    #[test]
    fn integers_of_the_core_schema() {
        assert_eq!(parse_int("7168"), Some(Ok(7168)));
        assert_eq!(parse_int("-3"), Some(Ok(-3)));
        assert_eq!(parse_int("0x10"), Some(Ok(16)));
        assert_eq!(parse_int("0o17"), Some(Ok(15)));
        assert_eq!(parse_int("99999999999999999999"), Some(Err(())));
        assert_eq!(parse_int("1.5"), None);
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("1_000"), None);
    }
}
