//! Compile-time checked kernel specs for epc.
//!
//! `#[ep_kernel(...)]` declares a deployment in Rust; `ep_spec!` loads one from a YAML file. Both
//! validate with `ep-codegen`'s own parser and rules (one source of truth), so a wrong config
//! fails `cargo build` with the error on the argument (or the YAML line) at fault, and both emit
//! an implementation of [`ep_codegen::KernelSpec`] carrying the canonical spec and the rendered
//! CUDA sources: the program needs only NVRTC at run time.
//!
//! ```
//! use ep_codegen::KernelSpec;
//! use ep_macros::ep_kernel;
//!
//! #[ep_kernel(mode = "low_latency", hidden = 7168, dtype = "bf16", dispatch_dtype = "fp8_e4m3",
//!             fp8(scale = "ue8m0"), experts = 256, top_k = 8, ranks = 8,
//!             max_tokens_per_rank = 128, tuning(warps_per_block = 16))]
//! struct DeepSeekDecode;
//!
//! let spec = DeepSeekDecode::spec().unwrap();
//! assert_eq!((spec.name(), spec.local_experts()), ("DeepSeekDecode", 32));
//! assert!(DeepSeekDecode::KERNELS.iter().any(|k| k.name == "ll_dispatch"));
//! ```
//!
//! ```compile_fail
//! // `hiden` is not a field (the error suggests `hidden`).
//! #[ep_macros::ep_kernel(mode = "low_latency", hiden = 7168, experts = 256, top_k = 8,
//!                        ranks = 8, max_tokens_per_rank = 128)]
//! struct Typo;
//! ```
//!
//! # What the expansion names
//!
//! A proc-macro crate can export nothing but macros, so the expansion names the crates the
//! *calling* crate depends on, found in its `Cargo.toml` (any kind of dependency, renamed or
//! `workspace = true`), in this order:
//!
//! 1. `ep-codegen` (under whatever name the caller gave it): `impl <name>::KernelSpec`, as above;
//! 2. else `ep-runtime`, which re-exports ep-codegen as `ep_runtime::codegen`:
//!    `impl ep_runtime::codegen::KernelSpec`, so `LlKernels::<S>` works with `ep-runtime` and
//!    `ep-macros` as the only dependencies;
//! 3. else neither: the item gets inherent constants that use only `core`, so a crate that
//!    depends on `ep-macros` alone still builds and carries the checked spec and its sources:
//!
//! ```text
//! impl DeepSeekDecode {
//!     pub const YAML: &'static str;                          // canonical spec
//!     pub const SPEC_HASH: &'static str;                     // ep_codegen::Spec::hash()
//!     pub const KERNELS: &'static [(&'static str, &'static str)]; // (family, CUDA source)
//! }
//! ```
//!
//! Where the manifest cannot be read (a build driven without cargo), the expansion names
//! `::ep_codegen`. `ep-macros/tests/standalone` (only `ep-macros`) and
//! `ep-macros/tests/via-runtime` (`ep-macros` and a renamed `ep-runtime`) build each case.

mod args;
mod emit;
mod target;

use proc_macro::TokenStream;
use syn::parse_macro_input;

/// Declares a kernel spec on an item (usually a unit struct). Arguments are the spec's fields as
/// `key = value` (strings for names and enums, integers for sizes), with `fp8(...)` and
/// `tuning(...)` for the nested groups; `name` defaults to the item's name.
#[proc_macro_attribute]
pub fn ep_kernel(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as syn::DeriveInput);
    let attr = proc_macro2::TokenStream::from(attr);
    match args::spec_from_attribute(attr, &item.ident) {
        Ok((spec, yaml)) => emit::kernel_spec(&item, &spec, &yaml, None).into(),
        Err(e) => {
            let errors = e.to_compile_error();
            quote::quote!(#item #errors).into()
        }
    }
}

/// Loads a YAML spec file at compile time: `ep_spec!(pub QwenDecode = "specs/qwen.yaml");`
/// defines the unit struct `QwenDecode` implementing `KernelSpec`. The path is relative to the
/// calling crate's manifest folder; the crate rebuilds when the file changes. Attributes written
/// before the name (`/// docs`, `#[derive(...)]`) go on the struct; without a doc comment it
/// gets one naming the file.
#[proc_macro]
pub fn ep_spec(input: TokenStream) -> TokenStream {
    let decl = parse_macro_input!(input as args::SpecFile);
    match args::spec_from_file(&decl) {
        Ok((spec, yaml, path)) => {
            let vis = &decl.vis;
            let ident = &decl.ident;
            let attrs = &decl.attrs;
            let doc = (!attrs.iter().any(|a| a.path().is_ident("doc"))).then(|| {
                let text = format!(
                    " The kernel spec of `{}`, checked at compile time.",
                    decl.path.value()
                );
                quote::quote!(#[doc = #text])
            });
            let item: syn::DeriveInput = syn::parse_quote!(#(#attrs)* #doc #vis struct #ident;);
            emit::kernel_spec(&item, &spec, &yaml, Some(&path)).into()
        }
        Err(e) => e.to_compile_error().into(),
    }
}
