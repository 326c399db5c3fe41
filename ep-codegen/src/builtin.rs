//! The specs of `specs/`, embedded at build time: the default workload of `epc` and of the tests.

use crate::{Error, Spec};

include!(concat!(env!("OUT_DIR"), "/builtin_specs.rs"));

/// One embedded spec file.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinSpec {
    /// File name inside `specs/` (`deepseek-v3-ll.yaml`).
    pub file: &'static str,
    /// YAML text.
    pub yaml: &'static str,
}

impl BuiltinSpec {
    /// The file name without its extension.
    pub fn stem(&self) -> &'static str {
        self.file
            .rsplit_once('.')
            .map(|(stem, _)| stem)
            .unwrap_or(self.file)
    }

    /// Parses and validates it, errors labelled `specs/<file>`.
    pub fn parse(&self) -> Result<Spec, Error> {
        Ok(Spec::from_yaml(
            self.yaml,
            Some(&format!("specs/{}", self.file)),
        )?)
    }
}

/// Every embedded spec, sorted by file name.
pub fn builtin_specs() -> impl Iterator<Item = BuiltinSpec> {
    BUILTIN_SPECS
        .iter()
        .map(|&(file, yaml)| BuiltinSpec { file, yaml })
}

/// The embedded spec whose file stem or `name` field is `name`.
pub fn find_builtin(name: &str) -> Option<BuiltinSpec> {
    builtin_specs()
        .find(|s| s.stem() == name || s.parse().map(|spec| spec.name == name).unwrap_or(false))
}

/// Why no built-in spec is named `name`: `no built-in spec is named `x``, with the closest name
/// when one is close (for interfaces that take built-in names only).
pub fn unknown_builtin(name: &str) -> String {
    format!(
        "no built-in spec is named `{name}`{}",
        closest_builtin(name)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default()
    )
}

/// The built-in spec stem closest to a misspelled `name` (`deepseek-v3-l` ->
/// `deepseek-v3-ll`), when one is close.
pub fn closest_builtin(name: &str) -> Option<&'static str> {
    crate::closest(name, builtin_specs().map(|s| s.stem()))
}
