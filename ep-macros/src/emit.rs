//! The code the macros emit: the item and its `KernelSpec` implementation, or, for a crate that
//! depends on neither `ep-codegen` nor `ep-runtime`, the item and inherent constants.

use ep_codegen::{Renderer, Spec};
use proc_macro2::TokenStream;
use quote::quote;

use crate::target::{Target, target};

/// `item` followed by what carries the canonical YAML and the rendered kernels (see the crate
/// docs); with `tracked`, an `include_str!` of that file so the crate rebuilds when it changes.
pub fn kernel_spec(
    item: &syn::DeriveInput,
    spec: &Spec,
    yaml: &str,
    tracked: Option<&str>,
) -> TokenStream {
    let ident = &item.ident;
    let (impl_generics, ty_generics, where_clause) = item.generics.split_for_impl();
    let kernels = match Renderer::new().and_then(|r| r.render(spec)) {
        Ok(k) => k,
        Err(e) => {
            let message = format!("rendering the kernels of `{}`: {e}", spec.name());
            return quote!(#item ::core::compile_error!(#message););
        }
    };
    let track = tracked.map(|path| {
        quote!(
            const _: &str = ::core::include_str!(#path);
        )
    });
    let implementation = match target() {
        Target::Codegen(codegen) => {
            let embedded = kernels.iter().map(|k| {
                let (name, source) = (&k.name, &k.source);
                quote!(#codegen::EmbeddedKernel { name: #name, source: #source })
            });
            quote! {
                impl #impl_generics #codegen::KernelSpec for #ident #ty_generics #where_clause {
                    const YAML: &'static str = #yaml;
                    const KERNELS: &'static [#codegen::EmbeddedKernel] = &[#(#embedded),*];
                }
            }
        }
        Target::Standalone => {
            let hash = spec.hash();
            let embedded = kernels.iter().map(|k| {
                let (name, source) = (&k.name, &k.source);
                quote!((#name, #source))
            });
            quote! {
                #[allow(dead_code)]
                impl #impl_generics #ident #ty_generics #where_clause {
                    /// The validated spec in canonical YAML (what `ep_codegen::Spec::from_yaml`
                    /// reads back).
                    pub const YAML: &'static str = #yaml;
                    /// SHA-256 of [`Self::YAML`] as 16 hex digits (`ep_codegen::Spec::hash`).
                    pub const SPEC_HASH: &'static str = #hash;
                    /// The kernels rendered at compile time: (family name, CUDA C++ source).
                    pub const KERNELS: &'static [(&'static str, &'static str)] =
                        &[#(#embedded),*];
                }
            }
        }
    };
    quote! {
        #item
        #implementation
        #track
    }
}
