//! How the expansion names `ep-codegen`: the calling crate may depend on it directly (under any
//! name), reach it through `ep-runtime`'s re-export `codegen`, or have neither.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream};
use quote::quote;

/// What the calling crate can name.
pub enum Target {
    /// A path to `ep-codegen`'s root (`::ep_codegen`, `::ep_runtime::codegen`, `crate`, or
    /// the name a dependency was renamed to): the expansion implements its `KernelSpec`.
    Codegen(TokenStream),
    /// Neither `ep-codegen` nor `ep-runtime` is a dependency: the expansion is inherent
    /// constants that use only `core`.
    Standalone,
}

/// Looks up the calling crate's manifest (`CARGO_MANIFEST_DIR/Cargo.toml`, every kind of
/// dependency, renames and `workspace = true` included): `ep-codegen` first, then `ep-runtime`.
/// When the manifest cannot be read (a build without cargo), the expansion names
/// `::ep_codegen` as a crate of that name is the likeliest.
pub fn target() -> Target {
    match crate_name("ep-codegen") {
        Ok(found) => return Target::Codegen(root(found, None)),
        Err(proc_macro_crate::Error::CrateNotFound { .. }) => {}
        Err(_) => return Target::Codegen(quote!(::ep_codegen)),
    }
    match crate_name("ep-runtime") {
        Ok(found) => Target::Codegen(root(found, Some("codegen"))),
        Err(proc_macro_crate::Error::CrateNotFound { .. }) => Target::Standalone,
        Err(_) => Target::Codegen(quote!(::ep_codegen)),
    }
}

/// The path of a found crate's root, followed by `module` when given.
fn root(found: FoundCrate, module: Option<&str>) -> TokenStream {
    let base = match found {
        FoundCrate::Itself => quote!(crate),
        // Cargo keeps dependency names to letters, digits, `-` and `_` (and proc-macro-crate
        // turns `-` into `_`); anything else falls back to the crate's own name.
        FoundCrate::Name(name) if is_identifier(&name) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        FoundCrate::Name(_) => quote!(::ep_codegen),
    };
    match module {
        Some(m) => {
            let m = syn::Ident::new(m, Span::call_site());
            quote!(#base::#m)
        }
        None => base,
    }
}

/// Whether `s` is a plain identifier that `Ident::new` accepts.
fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s != "_"
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
