//! Errors of spec parsing, validation and rendering.

use std::fmt;

/// One problem in a spec, located as precisely as the YAML text allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file the spec came from, when it came from a file.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Dotted field path (`tuning.sms`); empty for the document itself.
    pub path: String,
    /// The offending value as written, shortened (or `(missing)`).
    pub value: String,
    /// The rule that the value breaks, in words.
    pub rule: String,
    /// The line of text the problem is on, with the caret's place in it.
    pub snippet: Option<Snippet>,
}

/// A line of the spec as shown under a message: at most [`Snippet::WIDTH`] characters around
/// the place; a tab is shown as a space and other control characters as `?`, one character each,
/// so that the caret stays under the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The (possibly cut) line.
    pub text: String,
    /// 1-based column of the caret within `text`.
    pub caret: usize,
}

impl Snippet {
    /// The most characters of a line shown.
    pub const WIDTH: usize = 100;

    /// The part of `line` around 1-based `column`.
    pub fn new(line: &str, column: usize) -> Snippet {
        let chars: Vec<char> = line
            .chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '?',
                c => c,
            })
            .collect();
        let column = column.clamp(1, chars.len() + 1);
        let start = column.saturating_sub(Self::WIDTH / 2).min(
            chars.len().saturating_sub(Self::WIDTH), // show a full window near the end
        );
        let end = (start + Self::WIDTH).min(chars.len());
        let mut text: String = chars[start..end].iter().collect();
        let mut caret = column - start;
        if start > 0 {
            text.insert_str(0, "...");
            caret += 3;
        }
        if end < chars.len() {
            text.push_str("...");
        }
        Snippet { text, caret }
    }
}

impl SpecError {
    /// An error at `line:column` of `text`, with that line as its snippet.
    pub(crate) fn at(
        file: Option<&str>,
        line: usize,
        column: usize,
        text: &str,
        path: String,
        value: String,
        rule: String,
    ) -> SpecError {
        // A place past the last line (the end of the text) is shown at the end of the last one.
        let (line, column, shown) = match text.lines().nth(line.max(1) - 1) {
            Some(l) => (line.max(1), column, l),
            None => {
                let count = text.lines().count().max(1);
                let last = text.lines().last().unwrap_or("");
                (count, last.chars().count() + 1, last)
            }
        };
        let snippet = Some(Snippet::new(shown, column));
        SpecError {
            file: file.map(str::to_owned),
            line: Some(line),
            column: Some(column),
            path,
            value,
            rule,
            snippet,
        }
    }

    /// An error about a spec as a whole, with no place in a text.
    pub(crate) fn unplaced(value: String, rule: String) -> SpecError {
        SpecError {
            file: None,
            line: None,
            column: None,
            path: String::new(),
            value,
            rule,
            snippet: None,
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file.as_deref().unwrap_or("<spec>"))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.rule)?;
        } else {
            write!(f, ": `{}` = {}: {}", self.path, self.value, self.rule)?;
        }
        if let (Some(line), Some(s)) = (self.line, &self.snippet) {
            let number = line.to_string();
            let pad = " ".repeat(number.len());
            write!(
                f,
                "\n{pad} |\n{number} | {}\n{pad} | {}^",
                s.text,
                " ".repeat(s.caret - 1)
            )?;
        }
        Ok(())
    }
}

/// Every problem found in one spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// The error type of `ep-codegen`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is malformed or breaks a rule; each entry says where and which.
    #[error("invalid spec:\n{0}")]
    Spec(#[from] SpecErrors),
    /// A template failed to parse or render: fix the template (or the override folder).
    #[error("template `{name}`: {message}")]
    Template {
        /// Template name.
        name: String,
        /// What handlebars reported.
        message: String,
    },
    /// An export or a path was refused: a name that is not one plain path component, or a
    /// folder holding another spec's export (or other files) without `force`.
    #[error("{folder}: {refusal}")]
    Refused {
        /// The folder concerned.
        folder: String,
        /// Why, and what to do.
        refusal: crate::PathError,
    },
    /// Reading a spec or template file, or writing an export, failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
