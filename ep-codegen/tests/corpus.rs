//! The bad-input corpus: every file in `tests/corpus/` is a spec (or not) followed by comment
//! lines `# expect: LINE:COLUMN TEXT` (one per error, in order; the error at that place must
//! contain TEXT) or `# expect: ok`. Each file is read as `epc` reads one, bytes and all.

use std::path::{Path, PathBuf};

use ep_codegen::{Error, parse_spec_file};

/// One expected error: its place and a fragment of its message.
#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    text: String,
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The expectations of a case, `None` for `ok`.
fn expectations(path: &Path) -> Option<Vec<Expected>> {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("# expect: "))
        .collect();
    assert!(!lines.is_empty(), "{}: no `# expect:` line", path.display());
    if lines == ["ok"] {
        return None;
    }
    Some(
        lines
            .iter()
            .map(|l| {
                let (place, text) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{}: `{l}` has no message", path.display()));
                let (line, column) = place
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: `{place}` is not LINE:COLUMN", path.display()));
                Expected {
                    line: line.parse().unwrap(),
                    column: column.parse().unwrap(),
                    text: text.to_owned(),
                }
            })
            .collect(),
    )
}

#[test]
fn every_case_gives_its_messages_at_their_places() {
    let files = cases();
    assert!(files.len() >= 60, "the corpus holds {} cases", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = parse_spec_file(path);
        match (expectations(path), result) {
            (None, Ok(_)) => {}
            (None, Err(e)) => failures.push(format!("{name}: expected ok, got\n{e}")),
            (Some(_), Ok(spec)) => failures.push(format!("{name}: expected errors, got {spec:?}")),
            (Some(expected), Err(Error::Spec(errors))) => {
                let got = &errors.0;
                if got.len() != expected.len() {
                    failures.push(format!(
                        "{name}: {} errors expected, {} given:\n{errors}",
                        expected.len(),
                        got.len()
                    ));
                    continue;
                }
                for (e, x) in got.iter().zip(&expected) {
                    let shown = e.to_string();
                    let first = shown.lines().next().unwrap_or_default();
                    if e.line != Some(x.line) || e.column != Some(x.column) {
                        failures.push(format!(
                            "{name}: expected at {}:{}, got {first}",
                            x.line, x.column
                        ));
                    } else if !first.contains(&x.text) {
                        failures.push(format!("{name}: `{}` missing from {first}", x.text));
                    }
                    // Located, with its line and a caret, and short whatever the input.
                    if !first.contains(&format!(":{}:{}: ", x.line, x.column))
                        || !shown.contains('^')
                        || shown.len() > 1000
                    {
                        failures.push(format!("{name}: badly shown:\n{shown}"));
                    }
                }
            }
            (Some(_), Err(e)) => failures.push(format!("{name}: not a spec error: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    println!("corpus: {} cases", files.len());
}
