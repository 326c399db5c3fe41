//! Errors of spec parsing, validation and rendering.

use std::fmt;

/// One problem in a spec, located as precisely as the YAML text allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file the spec came from, when it came from a file.
    pub file: Option<String>,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted field path (`tuning.sms`); empty for the document itself.
    pub path: String,
    /// The offending value as written (or `(missing)`).
    pub value: String,
    /// The rule that the value breaks, in words.
    pub rule: String,
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
            write!(f, ": {}", self.rule)
        } else {
            write!(f, ": `{}` = {}: {}", self.path, self.value, self.rule)
        }
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
