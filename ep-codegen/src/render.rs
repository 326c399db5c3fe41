//! Renders the kernels of a spec from handlebars templates.
//!
//! Templates are embedded at build time; a folder given to [`Renderer::with_overrides`] replaces
//! any of them by relative path (`layout.cu.hbs`, `partials/header.hbs`). Handlebars runs in
//! strict mode (a missing variable is an error) with HTML escaping off.

use std::path::Path;

use handlebars::Handlebars;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::kernels::{self, KernelPlan, LaunchShape, Param};
use crate::spec::hex;
use crate::{Error, Spec};

/// Version of the generator, part of every header and cache key.
pub const GENERATOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every embedded template: (name, text). The name is the path under `templates/` without `.hbs`.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.cu", include_str!("../templates/layout.cu.hbs")),
    (
        "ht_notify.cu",
        include_str!("../templates/ht_notify.cu.hbs"),
    ),
    (
        "ht_dispatch.cu",
        include_str!("../templates/ht_dispatch.cu.hbs"),
    ),
    (
        "ht_combine.cu",
        include_str!("../templates/ht_combine.cu.hbs"),
    ),
    (
        "ht_fanout.cu",
        include_str!("../templates/ht_fanout.cu.hbs"),
    ),
    (
        "partials/ht_constants",
        include_str!("../templates/partials/ht_constants.hbs"),
    ),
    (
        "ll_dispatch.cu",
        include_str!("../templates/ll_dispatch.cu.hbs"),
    ),
    (
        "ll_combine.cu",
        include_str!("../templates/ll_combine.cu.hbs"),
    ),
    ("ll_empty.cu", include_str!("../templates/ll_empty.cu.hbs")),
    (
        "partials/convert",
        include_str!("../templates/partials/convert.hbs"),
    ),
    (
        "partials/fp8",
        include_str!("../templates/partials/fp8.hbs"),
    ),
    (
        "partials/ht_routes",
        include_str!("../templates/partials/ht_routes.hbs"),
    ),
    (
        "partials/ht_send_row",
        include_str!("../templates/partials/ht_send_row.hbs"),
    ),
    (
        "partials/ll_constants",
        include_str!("../templates/partials/ll_constants.hbs"),
    ),
    (
        "partials/dependent_launch",
        include_str!("../templates/partials/dependent_launch.hbs"),
    ),
    (
        "partials/signals",
        include_str!("../templates/partials/signals.hbs"),
    ),
    (
        "partials/header",
        include_str!("../templates/partials/header.hbs"),
    ),
    (
        "partials/types",
        include_str!("../templates/partials/types.hbs"),
    ),
];

/// One rendered kernel, ready to compile.
#[derive(Debug, Clone, Serialize)]
pub struct KernelSource {
    /// The spec's name.
    pub spec_name: String,
    /// The spec's hash.
    pub spec_hash: String,
    /// Family name (`layout`).
    pub name: String,
    /// `extern "C"` entry points, in launch order.
    pub entries: Vec<String>,
    /// File name for export (`<spec>.<kernel>.cu`).
    pub file_name: String,
    /// SHA-256 of `source`, 16 hex digits.
    pub source_hash: String,
    /// Constants baked into the source.
    pub constants: std::collections::BTreeMap<&'static str, i64>,
    /// Launch shape.
    pub launch: LaunchShape,
    /// Parameters in order.
    pub params: Vec<Param>,
    /// The CUDA C++ source.
    #[serde(skip)]
    pub source: String,
}

/// Handlebars with the templates loaded.
pub struct Renderer {
    registry: Handlebars<'static>,
}

impl Renderer {
    /// The embedded templates only.
    pub fn new() -> Result<Renderer, Error> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        for &(name, text) in TEMPLATES {
            register(&mut registry, name, text)?;
        }
        Ok(Renderer { registry })
    }

    /// The embedded templates, with every `*.hbs` file under `dir` replacing the template of
    /// the same relative path. A new partial (`partials/x.hbs`) is allowed when a template
    /// includes it (`{{> partials/x}}`); any other file that matches no embedded template
    /// (`layuot.cu.hbs`, or `layout.cu` without `.hbs`) is an error naming the closest
    /// template, so a misspelled override is never silently ignored.
    pub fn with_overrides(dir: &Path) -> Result<Renderer, Error> {
        let mut renderer = Renderer::new()?;
        let mut overrides: Vec<(String, String)> = Vec::new();
        let mut near_misses: Vec<String> = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            for entry in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
                let path = entry.map_err(|e| Error::io(&folder, e))?.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(relative) = path
                    .strip_prefix(dir)
                    .ok()
                    .and_then(Path::to_str)
                    .map(|r| r.replace('\\', "/"))
                else {
                    continue;
                };
                let Some(name) = relative.strip_suffix(".hbs") else {
                    // Not a template, unless it looks like a misspelled template file name.
                    if template_files().contains(&format!("{relative}.hbs"))
                        || closest_template(&relative).is_some()
                    {
                        near_misses.push(relative);
                    }
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                overrides.push((name.to_owned(), text));
            }
        }
        overrides.sort();
        let mut unknown: Vec<String> = near_misses;
        for (name, _) in &overrides {
            let embedded = TEMPLATES.iter().any(|(n, _)| n == name);
            let included = name.starts_with("partials/")
                && TEMPLATES
                    .iter()
                    .map(|(_, text)| *text)
                    .chain(overrides.iter().map(|(_, text)| text.as_str()))
                    .any(|text| includes(text, name));
            if !embedded && !included {
                unknown.push(format!("{name}.hbs"));
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(unknown_overrides(dir, &unknown));
        }
        for (name, text) in &overrides {
            register(&mut renderer.registry, name, text)?;
        }
        Ok(renderer)
    }

    /// Renders every kernel the spec needs.
    pub fn render(&self, spec: &Spec) -> Result<Vec<KernelSource>, Error> {
        kernels::plans(spec)
            .into_iter()
            .map(|plan| self.render_plan(spec, plan))
            .collect()
    }

    /// Renders one kernel plan of `spec`: one of [`crate::kernels::plans`], or a kernel a call
    /// does not need (the benchmark's [`crate::kernels::ht::fanout_plan`]).
    pub fn render_plan(&self, spec: &Spec, plan: KernelPlan) -> Result<KernelSource, Error> {
        let spec_hash = spec.hash();
        let mut context = Map::new();
        for (k, v) in &plan.constants {
            context.insert((*k).to_owned(), Value::from(*v));
        }
        for (k, v) in &plan.strings {
            context.insert((*k).to_owned(), Value::from(v.clone()));
        }
        for (k, v) in &plan.flags {
            context.insert((*k).to_owned(), Value::from(*v));
        }
        for (key, name) in &plan.entries {
            context.insert((*key).to_owned(), Value::from(name.clone()));
        }
        context.insert("generator_version".into(), Value::from(GENERATOR_VERSION));
        context.insert("spec_hash".into(), Value::from(spec_hash.clone()));
        context.insert(
            "spec".into(),
            serde_json::to_value(spec).unwrap_or(Value::Null),
        );
        context.insert(
            "spec_yaml".into(),
            Value::from(
                spec.to_canonical_yaml()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ),
        );
        context.insert(
            "kernel".into(),
            serde_json::json!({ "name": plan.name, "title": plan.title }),
        );
        let source = self
            .registry
            .render(plan.template, &Value::Object(context))
            .map_err(|e| Error::Template {
                name: plan.template.to_owned(),
                message: e.to_string(),
            })?;
        Ok(KernelSource {
            spec_name: spec.name.clone(),
            spec_hash,
            name: plan.name.to_owned(),
            entries: plan.entries.into_iter().map(|(_, name)| name).collect(),
            file_name: format!("{}.{}.cu", spec.name, plan.name),
            source_hash: hex(&Sha256::digest(source.as_bytes())[..8]),
            constants: plan.constants,
            launch: plan.launch,
            params: plan.params,
            source,
        })
    }
}

/// File names of the embedded templates, relative to `templates/` (`layout.cu.hbs`).
fn template_files() -> Vec<String> {
    TEMPLATES.iter().map(|(n, _)| format!("{n}.hbs")).collect()
}

/// The embedded template file closest to a misspelled `file`, if any is close.
fn closest_template(file: &str) -> Option<String> {
    let files = template_files();
    crate::closest(file, files.iter().map(String::as_str)).map(str::to_owned)
}

/// Whether `text` includes the partial `name` (`{{> name}}`, `{{~> name}}`, `{{#> name}}`).
fn includes(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].trim_end_matches([' ', '\t']);
        let after = text[at + name.len()..].chars().next();
        before.ends_with('>')
            && !after.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/' | '.'))
    })
}

/// The error for override files that match no embedded template.
fn unknown_overrides(dir: &Path, unknown: &[String]) -> Error {
    let each: Vec<String> = unknown
        .iter()
        .map(|file| match closest_template(file) {
            Some(best) => format!("`{file}` matches no template; did you mean `{best}`?"),
            None => format!("`{file}` matches no template"),
        })
        .collect();
    Error::Template {
        name: dir.display().to_string(),
        message: format!(
            "{} (an override replaces the embedded template of the same relative path: {}; a \
             new partial under partials/ is allowed where a template includes it)",
            each.join("; "),
            template_files().join(", ")
        ),
    }
}

fn register(registry: &mut Handlebars<'static>, name: &str, text: &str) -> Result<(), Error> {
    registry
        .register_template_string(name, text)
        .map_err(|e| Error::Template {
            name: name.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_includes_are_found() {
        assert!(includes("{{> partials/mine}}\n", "partials/mine"));
        assert!(includes("{{~>partials/mine ~}}", "partials/mine"));
        assert!(!includes("{{> partials/mine2}}", "partials/mine"));
        assert!(!includes("// partials/mine", "partials/mine"));
    }

    #[test]
    fn misspelled_overrides_are_refused_and_new_included_partials_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("partials")).unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        std::fs::write(
            dir.path().join("layout.cu.hbs"),
            "{{> partials/header}}{{> partials/mine}}",
        )
        .unwrap();
        std::fs::write(dir.path().join("partials/mine.hbs"), "// mine").unwrap();
        assert!(Renderer::with_overrides(dir.path()).is_ok());
        std::fs::write(dir.path().join("layuot.cu.hbs"), "x").unwrap();
        std::fs::write(dir.path().join("partials/haeder.hbs"), "x").unwrap();
        std::fs::write(dir.path().join("ll_combine.cu"), "x").unwrap();
        let Err(e) = Renderer::with_overrides(dir.path()) else {
            panic!("misspelled overrides were accepted");
        };
        let e = e.to_string();
        for part in [
            "`layuot.cu.hbs` matches no template; did you mean `layout.cu.hbs`?",
            "`partials/haeder.hbs` matches no template; did you mean `partials/header.hbs`?",
            "`ll_combine.cu` matches no template; did you mean `ll_combine.cu.hbs`?",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains("README"), "{e}");
    }
}
