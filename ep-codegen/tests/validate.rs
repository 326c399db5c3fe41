//! Every validation rule, each with the message it must produce, and a fuzz of the parser.

use ep_codegen::{Layout, Mode, ScaleFormat, Spec, SpecErrors};

const BASE_LL: &str = "\
name: test-ll
mode: low_latency
hidden: 7168
experts: 256
top_k: 8
ranks: 8
max_tokens_per_rank: 128
";

const BASE_HT: &str = "\
name: test-ht
mode: high_throughput
hidden: 4096
experts: 128
top_k: 8
ranks: 8
max_tokens_per_rank: 4096
max_recv_tokens_per_rank: 32768
";

/// `base` with `key: value` lines replaced or appended (a value of `None` deletes the key).
fn with(base: &str, changes: &[(&str, Option<&str>)]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
    for (key, value) in changes {
        let prefix = format!("{key}:");
        let pos = lines.iter().position(|l| l.starts_with(&prefix));
        match (pos, value) {
            (Some(i), Some(v)) => lines[i] = format!("{key}: {v}"),
            (Some(i), None) => {
                lines.remove(i);
            }
            (None, Some(v)) => lines.push(format!("{key}: {v}")),
            (None, None) => {}
        }
    }
    lines.join("\n") + "\n"
}

fn errors(text: &str) -> SpecErrors {
    match Spec::from_yaml(text, Some("specs/t.yaml")) {
        Ok(spec) => panic!("expected an error, got {spec:?}\n---\n{text}"),
        Err(e) => e,
    }
}

/// Asserts exactly one error at `path`, on the line where the text holds it, whose message
/// holds `value` and every fragment of `rule`.
fn expect(text: &str, path: &str, value: &str, rule: &[&str]) {
    let errs = errors(text);
    let e = errs
        .0
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at `{path}` in:\n{errs}"));
    let shown = e.to_string();
    assert!(shown.starts_with("specs/t.yaml:"), "{shown}");
    assert!(shown.contains(&format!("`{path}`")), "{shown}");
    assert_eq!(e.value, value, "{shown}");
    for fragment in rule {
        assert!(
            shown.contains(fragment),
            "`{fragment}` missing from: {shown}"
        );
    }
    let key = path.rsplit('.').next().unwrap_or(path);
    if value.contains("missing") {
        // An absent field is placed at the mapping that should hold it.
        assert!(e.line.is_some() && e.column.is_some(), "{shown}");
    } else if let Some(line) = e.line {
        let written = text.lines().nth(line - 1).unwrap_or("");
        assert!(
            written.contains(key) || written.contains('{'),
            "line {line} (`{written}`) does not hold `{key}`: {shown}"
        );
        assert!(e.column.is_some(), "{shown}");
    } else if !value.contains("missing") {
        panic!("no line for a written value: {shown}");
    }
}

#[test]
fn the_base_specs_are_valid_with_their_defaults() {
    let ll = Spec::from_yaml(BASE_LL, None).unwrap();
    assert_eq!(ll.mode(), Mode::LowLatency);
    assert_eq!(ll.dispatch_dtype(), ep_codegen::Dtype::Bf16);
    assert_eq!(ll.nvlink_domain(), 8);
    assert_eq!(ll.local_experts(), 32);
    assert!(ll.high_throughput().is_none() && ll.fp8().is_none());
    let ht = Spec::from_yaml(BASE_HT, None).unwrap();
    let h = ht.high_throughput().unwrap();
    assert_eq!((h.layout, h.expert_alignment), (Layout::Flat, 1));
}

#[test]
fn name_must_be_a_file_name() {
    expect(
        &with(BASE_LL, &[("name", Some("\"a b\""))]),
        "name",
        "\"a b\"",
        &["letters, digits"],
    );
    expect(
        &with(BASE_LL, &[("name", Some("\"\""))]),
        "name",
        "\"\"",
        &["1 to 64"],
    );
    let long = "n".repeat(65);
    expect(
        &with(BASE_LL, &[("name", Some(long.as_str()))]),
        "name",
        &format!("\"{long}\""),
        &["1 to 64", "not 65"],
    );
}

#[test]
fn a_huge_name_is_refused_and_not_echoed_whole() {
    let long = "x".repeat(100_000);
    let e = errors(&with(BASE_LL, &[("name", Some(long.as_str()))]));
    let message = e.to_string();
    assert!(
        message.contains("1 to 64"),
        "{}",
        &message[..200.min(message.len())]
    );
    assert!(message.len() < 1000, "{} bytes of message", message.len());
    let huge = "x".repeat(5 << 20);
    let e = errors(&with(BASE_LL, &[("name", Some(huge.as_str()))]));
    let message = e.to_string();
    assert!(message.contains("at most 1048576 bytes"), "{message:.300}");
    assert!(message.len() < 1000, "{} bytes of message", message.len());
}

#[test]
fn hidden_rules() {
    expect(
        &with(BASE_LL, &[("hidden", Some("0"))]),
        "hidden",
        "0",
        &["between 1 and 65536"],
    );
    expect(
        &with(BASE_LL, &[("hidden", Some("70000"))]),
        "hidden",
        "70000",
        &["between 1 and 65536"],
    );
    expect(
        &with(BASE_LL, &[("hidden", Some("7164"))]),
        "hidden",
        "7164",
        &["multiple of 16 bytes"],
    );
    // fp16 rows follow the same 16-byte rule.
    expect(
        &with(BASE_LL, &[("hidden", Some("100")), ("dtype", Some("fp16"))]),
        "hidden",
        "100",
        &["multiple of 8"],
    );
}

#[test]
fn fp8_rules() {
    let fp8 = with(BASE_LL, &[("dispatch_dtype", Some("fp8_e4m3"))]);
    let spec = Spec::from_yaml(&fp8, None).unwrap();
    let f = spec.fp8().unwrap();
    assert_eq!((f.block, f.scale), (128, ScaleFormat::F32));
    expect(
        &with(&fp8, &[("hidden", Some("2880"))]),
        "hidden",
        "2880",
        &["multiple of 128"],
    );
    expect(
        &format!("{fp8}fp8:\n  block: 64\n"),
        "fp8.block",
        "64",
        &["only 128-channel"],
    );
    expect(
        &format!("{BASE_LL}fp8:\n  scale: f32\n"),
        "fp8",
        "(set)",
        &["dispatch_dtype: fp8_e4m3"],
    );
    let ue8m0 = Spec::from_yaml(&format!("{fp8}fp8: {{scale: ue8m0}}\n"), None).unwrap();
    assert_eq!(ue8m0.fp8().unwrap().scale, ScaleFormat::Ue8m0);
}

#[test]
fn dtype_rules() {
    expect(
        &with(BASE_LL, &[("dtype", Some("fp8_e4m3"))]),
        "dtype",
        "fp8_e4m3",
        &["bf16 or fp16"],
    );
    expect(
        &with(BASE_LL, &[("dispatch_dtype", Some("fp16"))]),
        "dispatch_dtype",
        "fp16",
        &["fp8_e4m3 or the activation dtype (bf16)"],
    );
    expect(
        &with(BASE_LL, &[("combine_dtype", Some("fp16"))]),
        "combine_dtype",
        "fp16",
        &["must equal the activation dtype (bf16)"],
    );
    let e = errors(&with(BASE_LL, &[("dtype", Some("f32"))]));
    let shown = e.to_string();
    assert!(shown.contains("specs/t.yaml:8:8"), "{shown}");
    assert!(
        shown.contains("`dtype` = f32") && shown.contains("must be one of `bf16`, `fp16`"),
        "{shown}"
    );
}

#[test]
fn expert_and_rank_rules() {
    expect(
        &with(BASE_LL, &[("experts", Some("0"))]),
        "experts",
        "0",
        &["between 1 and 4096"],
    );
    expect(
        &with(BASE_LL, &[("top_k", Some("0"))]),
        "top_k",
        "0",
        &["between 1 and 32"],
    );
    expect(
        &with(BASE_LL, &[("top_k", Some("33"))]),
        "top_k",
        "33",
        &["between 1 and 32"],
    );
    expect(
        &with(BASE_LL, &[("experts", Some("8")), ("top_k", Some("9"))]),
        "top_k",
        "9",
        &["must not exceed experts (8)"],
    );
    expect(
        &with(BASE_LL, &[("ranks", Some("0"))]),
        "ranks",
        "0",
        &["between 1 and 1024"],
    );
    expect(
        &with(BASE_LL, &[("ranks", Some("12"))]),
        "experts",
        "256",
        &["divisible by ranks (12)"],
    );
    expect(
        &with(BASE_LL, &[("nvlink_domain", Some("3"))]),
        "nvlink_domain",
        "3",
        &["must divide ranks (8)"],
    );
    expect(
        &with(BASE_LL, &[("nvlink_domain", Some("0"))]),
        "nvlink_domain",
        "0",
        &["between 1"],
    );
}

#[test]
fn token_capacity_rules() {
    expect(
        &with(BASE_LL, &[("max_tokens_per_rank", Some("0"))]),
        "max_tokens_per_rank",
        "0",
        &["between 1 and 1024"],
    );
    expect(
        &with(BASE_LL, &[("max_tokens_per_rank", Some("4096"))]),
        "max_tokens_per_rank",
        "4096",
        &["between 1 and 1024"],
    );
    assert!(
        Spec::from_yaml(
            &with(BASE_HT, &[("max_tokens_per_rank", Some("65536"))]),
            None
        )
        .is_ok()
    );
}

#[test]
fn mode_specific_fields() {
    for (field, value) in [
        ("max_recv_tokens_per_rank", "100"),
        ("layout", "flat"),
        ("expert_alignment", "128"),
    ] {
        expect(
            &with(BASE_LL, &[(field, Some(value))]),
            field,
            "(set)",
            &["only high_throughput mode"],
        );
    }
    expect(
        &with(BASE_HT, &[("max_recv_tokens_per_rank", None)]),
        "max_recv_tokens_per_rank",
        "(missing)",
        &["needs the receive buffer's capacity"],
    );
    expect(
        &with(BASE_HT, &[("max_recv_tokens_per_rank", Some("40000"))]),
        "max_recv_tokens_per_rank",
        "40000",
        &["exceeds the 32768 rows"],
    );
    expect(
        &with(BASE_HT, &[("layout", Some("expert_major"))]),
        "expert_alignment",
        "(missing)",
        &["needs expert_alignment"],
    );
    expect(
        &with(
            BASE_HT,
            &[
                ("layout", Some("expert_major")),
                ("expert_alignment", Some("96")),
            ],
        ),
        "expert_alignment",
        "96",
        &["power of two"],
    );
    expect(
        &with(BASE_HT, &[("expert_alignment", Some("64"))]),
        "expert_alignment",
        "64",
        &["only `layout: expert_major`"],
    );
    // Expert-major rows: each token may land once per local expert, plus padding.
    let em = with(
        BASE_HT,
        &[
            ("layout", Some("expert_major")),
            ("expert_alignment", Some("128")),
            ("max_recv_tokens_per_rank", Some("200000")),
        ],
    );
    let spec = Spec::from_yaml(&em, None).unwrap();
    assert_eq!(spec.high_throughput().unwrap().layout, Layout::ExpertMajor);
}

#[test]
fn tuning_rules() {
    let t = |body: &str| format!("{BASE_LL}tuning:\n{body}");
    expect(&t("  sms: 0\n"), "tuning.sms", "0", &["between 1 and 1024"]);
    expect(
        &t("  warps_per_block: 33\n"),
        "tuning.warps_per_block",
        "33",
        &["between 1 and 32"],
    );
    expect(
        &t("  tokens_per_warp: 0\n"),
        "tuning.tokens_per_warp",
        "0",
        &["between 1 and 64"],
    );
    expect(
        &t("  vector_bytes: 3\n"),
        "tuning.vector_bytes",
        "3",
        &["one of [4, 8, 16]"],
    );
    expect(
        &t("  unroll: 17\n"),
        "tuning.unroll",
        "17",
        &["between 1 and 16"],
    );
    expect(
        &t("  unroll: fast\n"),
        "tuning.unroll",
        "fast",
        &["`auto` or an integer"],
    );
    let spec = Spec::from_yaml(&t("  sms: 24\n  unroll: auto\n"), None).unwrap();
    assert_eq!((spec.tuning().sms, spec.tuning().unroll), (Some(24), None));
}

#[test]
fn unknown_and_missing_fields() {
    let e = errors(&format!("{BASE_LL}hiden: 5\n"));
    let shown = e.to_string();
    assert!(
        shown.contains("`hiden`") && shown.contains("did you mean `hidden`?"),
        "{shown}"
    );
    assert!(shown.contains("specs/t.yaml:8:"), "{shown}");
    let e = errors(&format!("{BASE_LL}tuning:\n  smz: 3\n"));
    assert!(
        e.to_string().contains("`tuning.smz`") && e.to_string().contains("`sms`"),
        "{e}"
    );
    let e = errors(&format!("{BASE_LL}colour: blue\n"));
    assert!(
        e.to_string().contains("the fields here are: name, mode"),
        "{e}"
    );
    let e = errors(&with(BASE_LL, &[("experts", None)]));
    assert!(
        e.to_string()
            .contains("`experts` = (missing): this field is required"),
        "{e}"
    );
    let e = errors(&with(BASE_LL, &[("mode", Some("turbo"))]));
    assert!(
        e.to_string()
            .contains("must be one of `low_latency`, `high_throughput`"),
        "{e}"
    );
    let e = errors(&with(BASE_LL, &[("hidden", Some("lots"))]));
    assert!(e.to_string().contains("`hidden` = lots"), "{e}");
}

#[test]
fn every_violation_is_reported_at_once() {
    let e = errors(&with(
        BASE_LL,
        &[
            ("hidden", Some("7164")),
            ("top_k", Some("40")),
            ("ranks", Some("7")),
        ],
    ));
    let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    // In the order of the text.
    assert_eq!(paths, ["hidden", "experts", "top_k"], "{e}");
}

#[test]
fn malformed_yaml_is_located() {
    let e = errors("name: x\nmode: [unclosed\n");
    assert!(e.0[0].line.is_some(), "{e}");
    let e = errors("");
    assert!(!e.to_string().is_empty());
}

#[test]
fn the_hash_covers_resolved_defaults() {
    let a = Spec::from_yaml(BASE_LL, None).unwrap();
    let b = Spec::from_yaml(
        &with(
            BASE_LL,
            &[("dtype", Some("bf16")), ("nvlink_domain", Some("8"))],
        ),
        None,
    )
    .unwrap();
    assert_eq!(
        a.hash(),
        b.hash(),
        "writing a default out does not change the spec"
    );
    let c = Spec::from_yaml(&with(BASE_LL, &[("top_k", Some("6"))]), None).unwrap();
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn canonical_yaml_parses_back_to_the_same_spec() {
    for b in ep_codegen::builtin_specs() {
        let spec = b.parse().unwrap();
        let again = Spec::from_yaml(&spec.to_canonical_yaml(), None)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", b.file, spec.to_canonical_yaml()));
        assert_eq!(again, spec, "{}", b.file);
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "name",
        "mode",
        "hidden",
        "dtype",
        "dispatch_dtype",
        "fp8",
        "experts",
        "top_k",
        "ranks",
        "nvlink_domain",
        "max_tokens_per_rank",
        "max_recv_tokens_per_rank",
        "layout",
        "expert_alignment",
        "tuning",
        "index_dtype",
        "combine_dtype",
    ];
    const VALUES: &[&str] = &[
        "0",
        "1",
        "-1",
        "7",
        "128",
        "4096",
        "99999999999999999999",
        "1.5",
        "auto",
        "bf16",
        "fp8_e4m3",
        "high_throughput",
        "low_latency",
        "expert_major",
        "{sms: 3}",
        "[1, 2]",
        "~",
        "\"\"",
        "{block: 128, scale: ue8m0}",
        "\u{e9}\u{e9}",
        "&a 3",
        "*a",
        "|\n  x",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Spec::from_yaml(&text, Some("fuzz.yaml"));
        }

        #[test]
        fn mutated_specs_never_panic(
            base in prop::sample::select(vec![BASE_LL, BASE_HT]),
            edits in prop::collection::vec(
                (prop::sample::select(KEYS), prop::option::of(prop::sample::select(VALUES))),
                0..6,
            ),
            cut in 0usize..400,
        ) {
            let changes: Vec<(&str, Option<&str>)> = edits.iter().map(|(k, v)| (*k, *v)).collect();
            let text = with(base, &changes);
            let result = Spec::from_yaml(&text, Some("fuzz.yaml"));
            if let Err(e) = &result {
                prop_assert!(!e.0.is_empty());
                for err in &e.0 {
                    prop_assert!(!err.to_string().is_empty());
                }
            }
            // Truncated documents too.
            let cut = text.char_indices().map(|(i, _)| i).take_while(|&i| i <= cut).last().unwrap_or(0);
            let _ = Spec::from_yaml(&text[..cut], Some("fuzz.yaml"));
        }
    }
}

#[test]
fn with_ranks_renames_a_new_deployment_and_keeps_the_same_one() {
    let yaml = "name: w\nmode: low_latency\nhidden: 2048\nexperts: 64\ntop_k: 4\nranks: 8\n\
                max_tokens_per_rank: 32\n";
    let spec = Spec::from_yaml(yaml, None).unwrap();
    let same = spec.with_ranks(8).unwrap();
    assert_eq!(same, spec);
    assert_eq!(same.hash(), spec.hash());
    let four = spec.with_ranks(4).unwrap();
    assert_eq!((four.name(), four.ranks()), ("w-r4", 4));
    assert_ne!(four.hash(), spec.hash());
    assert!(
        spec.with_ranks(3).is_err(),
        "64 experts do not split over 3 ranks"
    );
}
