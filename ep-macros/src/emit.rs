//! The code the macros emit: the item and its `KernelSpec` implementation.

use ep_codegen::{Renderer, Spec};
use proc_macro2::TokenStream;
use quote::quote;

/// `item` followed by `impl KernelSpec` with the canonical YAML and the rendered kernels; with
/// `tracked`, an `include_str!` of that file so the crate rebuilds when it changes.
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
            let message = format!("rendering the kernels of `{}`: {e}", spec.name);
            return quote!(#item ::core::compile_error!(#message););
        }
    };
    let embedded = kernels.iter().map(|k| {
        let (name, source) = (&k.name, &k.source);
        quote!(::ep_codegen::EmbeddedKernel { name: #name, source: #source })
    });
    let track = tracked.map(|path| {
        quote!(
            const _: &str = ::core::include_str!(#path);
        )
    });
    quote! {
        #item
        impl #impl_generics ::ep_codegen::KernelSpec for #ident #ty_generics #where_clause {
            const YAML: &'static str = #yaml;
            const KERNELS: &'static [::ep_codegen::EmbeddedKernel] = &[#(#embedded),*];
        }
        #track
    }
}
