//! Turning macro input into a validated spec, and spec errors into spanned compile errors.

use ep_codegen::{Spec, SpecErrors};
use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Meta, Token, Visibility};

/// One `key = value` written in the attribute, as a YAML line, with where it was written.
struct Line {
    /// Dotted path (`tuning.sms`).
    path: String,
    /// Span of the argument (key and value).
    span: Span,
}

/// Parses the attribute's arguments, writes them as YAML and validates that with ep-codegen.
/// Returns the spec and its canonical YAML.
pub fn spec_from_attribute(attr: TokenStream, item: &Ident) -> syn::Result<(Spec, String)> {
    let metas = syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, attr)?;
    let mut yaml = String::new();
    let mut lines: Vec<Line> = Vec::new();
    if !metas.iter().any(|m| m.path().is_ident("name")) {
        yaml.push_str(&format!("name: {item}\n"));
        lines.push(Line {
            path: "name".into(),
            span: item.span(),
        });
    }
    for meta in &metas {
        write_meta(meta, "", &mut yaml, &mut lines)?;
    }
    match Spec::from_yaml(&yaml, None) {
        Ok(spec) => {
            let canonical = spec.to_canonical_yaml();
            Ok((spec, canonical))
        }
        Err(errors) => Err(spanned(&errors, &lines, Span::call_site(), None)),
    }
}

fn write_meta(
    meta: &Meta,
    prefix: &str,
    yaml: &mut String,
    lines: &mut Vec<Line>,
) -> syn::Result<()> {
    let key = meta
        .path()
        .get_ident()
        .ok_or_else(|| syn::Error::new_spanned(meta.path(), "expected a spec field name"))?
        .to_string();
    let indent = if prefix.is_empty() { "" } else { "  " };
    let path = if prefix.is_empty() {
        key.clone()
    } else {
        format!("{prefix}.{key}")
    };
    match meta {
        Meta::NameValue(nv) => {
            let value = match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => yaml_string(&s.value()),
                Expr::Lit(ExprLit {
                    lit: Lit::Int(i), ..
                }) => i.base10_digits().to_owned(),
                Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => match &*u.expr {
                    Expr::Lit(ExprLit {
                        lit: Lit::Int(i), ..
                    }) => format!("-{}", i.base10_digits()),
                    _ => return Err(syn::Error::new_spanned(&nv.value, "expected an integer")),
                },
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        format!("`{path}`: expected a string or an integer literal"),
                    ));
                }
            };
            yaml.push_str(&format!("{indent}{key}: {value}\n"));
            lines.push(Line {
                path,
                span: syn::spanned::Spanned::span(meta),
            });
        }
        Meta::List(list) if prefix.is_empty() => {
            yaml.push_str(&format!("{key}:\n"));
            lines.push(Line {
                path: path.clone(),
                span: syn::spanned::Spanned::span(meta),
            });
            let inner = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
            for m in &inner {
                write_meta(m, &path, yaml, lines)?;
            }
        }
        Meta::List(list) => {
            return Err(syn::Error::new_spanned(
                list,
                "groups nest one level only (fp8(...), tuning(...))",
            ));
        }
        Meta::Path(p) => {
            return Err(syn::Error::new_spanned(
                p,
                format!("`{path}` needs a value: `{key} = ...`"),
            ));
        }
    }
    Ok(())
}

/// A YAML scalar for a string argument: plain when it is a simple word YAML reads as a string,
/// else quoted, so `hidden = "7168"` stays a string (and is refused as one) instead of turning
/// into the number it spells.
fn yaml_string(s: &str) -> String {
    let word = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let keyword = matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
    );
    if word && !keyword {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

/// Spec errors as one compile error per problem, each on the argument at fault (the longest
/// written path that is a prefix of the error's path), else on `fallback`. With `file`, the
/// message starts with the file's name, line and column.
fn spanned(errors: &SpecErrors, lines: &[Line], fallback: Span, file: Option<&str>) -> syn::Error {
    let mut combined: Option<syn::Error> = None;
    for e in &errors.0 {
        let span = lines
            .iter()
            .filter(|l| e.path == l.path || e.path.starts_with(&format!("{}.", l.path)))
            .max_by_key(|l| l.path.len())
            .map_or(fallback, |l| l.span);
        let message = match file {
            Some(_) => e.to_string(),
            None if e.path.is_empty() => e.rule.clone(),
            None => format!("`{}` = {}: {}", e.path, e.value, e.rule),
        };
        let error = syn::Error::new(span, message);
        match &mut combined {
            Some(c) => c.combine(error),
            None => combined = Some(error),
        }
    }
    combined.unwrap_or_else(|| syn::Error::new(fallback, "invalid spec"))
}

/// `#[attrs] vis Name = "path/to/spec.yaml"`.
pub struct SpecFile {
    /// Outer attributes for the struct (doc comments, derives, ...).
    pub attrs: Vec<syn::Attribute>,
    /// Visibility of the struct to define.
    pub vis: Visibility,
    /// Its name.
    pub ident: Ident,
    /// The YAML file, relative to the calling crate's manifest folder.
    pub path: LitStr,
}

impl Parse for SpecFile {
    fn parse(input: ParseStream<'_>) -> syn::Result<SpecFile> {
        let attrs = input.call(syn::Attribute::parse_outer)?;
        let vis = input.parse()?;
        let ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let path = input.parse()?;
        Ok(SpecFile {
            attrs,
            vis,
            ident,
            path,
        })
    }
}

/// Reads and validates the file of an `ep_spec!`. Returns the spec, its canonical YAML and the
/// file's absolute path. The path is relative to the calling crate's manifest folder or, when
/// no file is there, to the folder of the source file that calls the macro.
pub fn spec_from_file(decl: &SpecFile) -> syn::Result<(Spec, String, String)> {
    use std::path::{Path, PathBuf};
    let relative = decl.path.value();
    // Each place to look, with how the error names it: the manifest folder by the crate's name
    // (not its absolute path, which may lie in a build folder such as trybuild's generated
    // project), the source file's folder as rustc names that file in its own diagnostics.
    let mut candidates: Vec<(PathBuf, String)> = Vec::new();
    if let Ok(base) = std::env::var("CARGO_MANIFEST_DIR") {
        let krate = std::env::var("CARGO_PKG_NAME")
            .map_or_else(|_| "the crate".to_string(), |n| format!("crate `{n}`"));
        candidates.push((
            Path::new(&base).join(&relative),
            format!("`{relative}` in the manifest folder of {krate}"),
        ));
    }
    if let Some(dir) = proc_macro::Span::call_site()
        .local_file()
        .and_then(|f| f.parent().map(Path::to_path_buf))
    {
        let path = dir.join(&relative);
        let shown = format!("`{}` beside this source file", path.display());
        candidates.push((path, shown));
    }
    let Some(path) = candidates
        .iter()
        .map(|(p, _)| p)
        .find(|p| p.is_file())
        .cloned()
    else {
        let message = if Path::new(&relative).is_absolute() {
            format!("spec file `{relative}` not found")
        } else if candidates.is_empty() {
            format!(
                "spec file `{relative}` not found (neither the crate's manifest folder nor this \
                 source file's folder is known to look in)"
            )
        } else {
            let tried: Vec<&str> = candidates.iter().map(|(_, s)| s.as_str()).collect();
            format!(
                "spec file `{relative}` not found; tried {}",
                tried.join(" and ")
            )
        };
        return Err(syn::Error::new(decl.path.span(), message));
    };
    let label = decl.path.value();
    let span = decl.path.span();
    let bytes =
        ep_codegen::read_spec_bytes(&path).map_err(|e| syn::Error::new(span, e.to_string()))?;
    let text = ep_codegen::spec_text(&bytes, &label).map_err(|e| match e {
        ep_codegen::Error::Spec(errors) => spanned(&errors, &[], span, Some(&label)),
        other => syn::Error::new(span, other.to_string()),
    })?;
    match Spec::from_yaml(text, Some(&label)) {
        Ok(spec) => {
            let canonical = spec.to_canonical_yaml();
            Ok((spec, canonical, path.display().to_string()))
        }
        Err(errors) => Err(spanned(&errors, &[], decl.path.span(), Some(&label))),
    }
}
