//! Property test: valid specs mutated at random, byte by byte and line by line, never panic the
//! reader, every error they give is located (line, column, and the line shown with a caret), and
//! each is read promptly.

use std::time::{Duration, Instant};

use ep_codegen::{Spec, builtin_specs};
use proptest::prelude::*;

/// What a mutation does to the text.
#[derive(Debug, Clone)]
enum Edit {
    /// Insert a fragment at a byte position (rounded down to a character boundary).
    Insert(usize, &'static str),
    /// Delete a range of bytes.
    Delete(usize, usize),
    /// Repeat a line.
    DuplicateLine(usize),
    /// Swap two lines.
    SwapLines(usize, usize),
    /// Cut the text short.
    Truncate(usize),
}

/// Fragments that matter to YAML and to the rules.
const FRAGMENTS: &[&str] = &[
    ":",
    " ",
    "\n",
    "\t",
    "#",
    "-",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "|",
    ">",
    "'",
    "\"",
    "? ",
    "---\n",
    "...\n",
    "~",
    "null",
    "0",
    "-1",
    "1.5",
    "99999999999999999999",
    "0x",
    "auto",
    "  ",
    "\r\n",
    "\u{feff}",
    "\u{1b}[31m",
    "é",
    "hidden: 7\n",
    "tuning:\n  sms: 0\n",
    "fp8: {block: 64}\n",
    "name: ../x\n",
    "mode: high_throughput\n",
];

fn floor_char(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edit: &Edit) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    match *edit {
        Edit::Insert(at, fragment) => {
            let at = floor_char(text, at);
            format!("{}{fragment}{}", &text[..at], &text[at..])
        }
        Edit::Delete(at, len) => {
            let a = floor_char(text, at);
            let b = floor_char(text, at.saturating_add(len));
            format!("{}{}", &text[..a], &text[b..])
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let i = i % lines.len();
            let mut out: Vec<&str> = lines.clone();
            out.insert(i, lines[i]);
            out.concat()
        }
        Edit::SwapLines(i, j) if !lines.is_empty() => {
            let mut out = lines.clone();
            out.swap(i % lines.len(), j % lines.len());
            out.concat()
        }
        Edit::Truncate(at) => text[..floor_char(text, at)].to_owned(),
        _ => text.to_owned(),
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0usize..600, prop::sample::select(FRAGMENTS)).prop_map(|(a, f)| Edit::Insert(a, f)),
        (0usize..600, 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (0usize..40).prop_map(Edit::DuplicateLine),
        (0usize..40, 0usize..40).prop_map(|(i, j)| Edit::SwapLines(i, j)),
        (0usize..600).prop_map(Edit::Truncate),
    ]
}

/// The number of cases; `PROPTEST_CASES` overrides it.
const CASES: u32 = 10_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn mutated_specs_are_refused_with_places_or_accepted(
        which in 0usize..64,
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let specs: Vec<_> = builtin_specs().collect();
        let base = specs[which % specs.len()].yaml;
        let text = edits.iter().fold(base.to_owned(), |t, e| apply(&t, e));
        let start = Instant::now();
        let result = Spec::from_yaml(&text, Some("mutated.yaml"));
        // A guard against a hang or a blow-up on hostile text, not a performance claim: a spec
        // of a few hundred bytes reads in microseconds.
        prop_assert!(start.elapsed() < Duration::from_secs(2), "{:?} for {text:?}", start.elapsed());
        if let Err(errors) = result {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                let shown = e.to_string();
                prop_assert!(e.line.is_some() && e.column.is_some(), "unlocated: {shown}\n{text:?}");
                prop_assert!(e.snippet.is_some() && shown.contains('^'), "no caret: {shown}\n{text:?}");
                prop_assert!(shown.starts_with("mutated.yaml:"), "{shown}");
                prop_assert!(shown.len() < 1200, "{} bytes: {shown}", shown.len());
            }
        }
    }
}
