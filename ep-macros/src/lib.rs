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
//! assert_eq!((spec.name.as_str(), spec.local_experts()), ("DeepSeekDecode", 32));
//! assert!(DeepSeekDecode::KERNELS.iter().any(|k| k.name == "ll_dispatch"));
//! ```
//!
//! ```compile_fail
//! // `hiden` is not a field (the error suggests `hidden`).
//! #[ep_macros::ep_kernel(mode = "low_latency", hiden = 7168, experts = 256, top_k = 8,
//!                        ranks = 8, max_tokens_per_rank = 128)]
//! struct Typo;
//! ```

mod args;
mod emit;

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
/// calling crate's manifest folder; the crate rebuilds when the file changes.
#[proc_macro]
pub fn ep_spec(input: TokenStream) -> TokenStream {
    let decl = parse_macro_input!(input as args::SpecFile);
    match args::spec_from_file(&decl) {
        Ok((spec, yaml, path)) => {
            let vis = &decl.vis;
            let ident = &decl.ident;
            let item: syn::DeriveInput = syn::parse_quote!(#vis struct #ident;);
            emit::kernel_spec(&item, &spec, &yaml, Some(&path)).into()
        }
        Err(e) => e.to_compile_error().into(),
    }
}
