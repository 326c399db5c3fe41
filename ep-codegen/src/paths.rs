//! Paths built from names: a spec or kernel name becomes exactly one file or folder inside the
//! folder it is meant for, never a way out of it.
//!
//! Validation already restricts spec names to `[A-Za-z0-9._-]` (not starting with `.`); this is
//! the second line of defence at every place a path is built from a name (export folders, kernel
//! files, cache entries), so that a name from any other source cannot escape either.

use std::path::{Component, Path, PathBuf};

/// Why a path built from a name, or an export folder, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A name that is not one plain path component.
    #[error(
        "{what} {name:?} cannot name a file or folder: {why}; such names come from the spec's \
         `name`: give it only letters, digits, `.`, `_` and `-`, not starting with `.`"
    )]
    UnsafeName {
        /// What the name names (`spec name`, `kernel file`).
        what: &'static str,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// The export folder holds the export of a spec with another hash.
    #[error(
        "holds the export of another spec (its manifest.json has spec_hash {found}, this spec's \
         is {expected}); rerun with --force to replace it, or choose another output folder"
    )]
    OtherSpec {
        /// The `spec_hash` of the manifest found there.
        found: String,
        /// The hash of the spec being exported.
        expected: String,
    },
    /// The export folder exists but is not an epc export (no readable epc manifest), so its
    /// files are not epc's to replace.
    #[error(
        "is not an epc export ({why}); rerun with --force to write into it anyway, or choose \
         another output folder"
    )]
    NotAnExport {
        /// What was found instead.
        why: String,
    },
}

/// Checks that `name` is one plain path component (not empty, no `/` or `\`, no control
/// character, not `.` or `..`, not starting with `.`); `what` names it in the error.
pub fn check_path_component(name: &str, what: &'static str) -> Result<(), PathError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.contains(['/', '\\']) {
        Some("it holds a path separator")
    } else if name == "." || name == ".." {
        Some("it names a folder itself or its parent")
    } else if name.starts_with('.') {
        Some("it starts with `.`")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else if !matches!(
        Path::new(name).components().collect::<Vec<_>>()[..],
        [Component::Normal(c)] if c == name
    ) {
        Some("it is not one plain path component")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(PathError::UnsafeName {
            what,
            name: name.to_owned(),
            why,
        }),
    }
}

/// `dir/name`, after [`check_path_component`]: the one way a path is built from a name.
///
/// ```
/// use std::path::Path;
/// let ok = ep_codegen::join_component(Path::new("out"), "deepseek-v3-ll", "spec name");
/// assert_eq!(ok.unwrap(), Path::new("out/deepseek-v3-ll"));
/// assert!(ep_codegen::join_component(Path::new("out"), "../../escaped", "spec name").is_err());
/// ```
pub fn join_component(dir: &Path, name: &str, what: &'static str) -> Result<PathBuf, PathError> {
    check_path_component(name, what)?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(name: &str) -> &'static str {
        match check_path_component(name, "spec name") {
            Err(PathError::UnsafeName { why, .. }) => why,
            other => panic!("{name:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn plain_names_pass() {
        for name in [
            "deepseek-v3-ll",
            "a",
            "v1.2_x-y",
            "kimi-k2-ll.layout.cu",
            "x..",
        ] {
            assert_eq!(check_path_component(name, "spec name"), Ok(()), "{name}");
        }
    }

    #[test]
    fn escaping_names_are_refused() {
        assert_eq!(why("../../escaped"), "it holds a path separator");
        assert_eq!(why("a/b"), "it holds a path separator");
        assert_eq!(why("a\\b"), "it holds a path separator");
        assert_eq!(why("/abs"), "it holds a path separator");
        assert_eq!(why(".hidden"), "it starts with `.`");
        assert_eq!(why("."), "it names a folder itself or its parent");
        assert_eq!(why(".."), "it names a folder itself or its parent");
        assert_eq!(why(""), "it is empty");
        assert_eq!(why("a\0b"), "it holds a control character");
        assert_eq!(why("a\nb"), "it holds a control character");
    }

    #[test]
    fn the_message_names_the_value_and_the_fix() {
        let e = join_component(Path::new("out"), "../../escaped", "spec name").unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("spec name \"../../escaped\" cannot name a file or folder"),
            "{message}"
        );
        assert!(message.contains("the spec's `name`"), "{message}");
    }
}
