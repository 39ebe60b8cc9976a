//! `#[derive(Messages)]`: an enum whose variants each hold one message type (typed fan-in).
//!
//! The variants' templates are those of other derives, unknown here: the rules on them (each
//! variant holds a message type, no two templates overlap) are checked by the compiler, through
//! a bound and a `const` assertion that calls `bus_subject::templates_overlap`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::ctxt::Ctxt;
use crate::doc::type_text;

/// One usable variant: `Name(Type)`.
struct Variant<'a> {
    ident: &'a Ident,
    ty: &'a Type,
}

/// Expands `#[derive(Messages)]`: the errors found, then the items built from the variants
/// that could be understood.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let variants = variants(&cx, input);
    let items = items(input, &variants);
    let errors = cx.into_compile_errors();
    quote! {
        #errors
        #items
    }
}

fn variants<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Vec<Variant<'a>> {
    const SHAPE: &str = "each variant holds one message type: `enum AgentEvent { Started(Started), Stopped(Stopped) }`";
    let data = match &input.data {
        Data::Enum(e) => e,
        Data::Struct(s) => {
            cx.error(s.struct_token, "`#[derive(Messages)]` is for enums", SHAPE);
            return Vec::new();
        }
        Data::Union(u) => {
            cx.error(u.union_token, "`#[derive(Messages)]` is for enums", SHAPE);
            return Vec::new();
        }
    };
    if !input.generics.params.is_empty() {
        cx.error(
            &input.generics,
            "`#[derive(Messages)]` does not support generic enums",
            "name the message types of the variants: the subjects they decode are fixed at compile time",
        );
    }
    if data.variants.is_empty() {
        cx.error(&input.ident, "an empty enum receives no message", SHAPE);
    }
    let mut out: Vec<Variant<'a>> = Vec::new();
    for v in &data.variants {
        let ty = match &v.fields {
            Fields::Unnamed(f) if f.unnamed.len() == 1 => &f.unnamed[0].ty,
            _ => {
                cx.error(
                    v,
                    format!("variant `{}` must hold exactly one message type", v.ident),
                    SHAPE,
                );
                continue;
            }
        };
        let text = type_text(ty);
        if let Some(first) = out.iter().find(|o| type_text(o.ty) == text) {
            cx.error(
                ty,
                format!(
                    "`{text}` is held by two variants, `{}` and `{}`",
                    first.ident, v.ident
                ),
                "a message type decodes into one variant: remove one of them",
            );
            continue;
        }
        out.push(Variant {
            ident: &v.ident,
            ty,
        });
    }
    out
}

fn items(input: &DeriveInput, variants: &[Variant]) -> TokenStream {
    let ty = &input.ident;
    let name = ty.unraw().to_string();
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let wraps = variants.iter().map(|v| {
        let (ident, vty) = (v.ident, v.ty);
        quote! {
            #[automatically_derived]
            impl ::bus::__private::VariantOf<#vty> for #ty {
                fn wrap(message: #vty) -> Self {
                    #ty::#ident(message)
                }
            }
        }
    });
    let entries = variants.iter().map(|v| {
        let vty = v.ty;
        // Spanned at the variant's type: a type that is not a message is reported there.
        quote_spanned! {vty.span()=> ::bus::__private::Variant::of::<#vty>() }
    });
    let mut checks = Vec::new();
    for (i, a) in variants.iter().enumerate() {
        for (j, b) in variants.iter().enumerate().skip(i + 1) {
            let message = format!(
                "the subject templates of `{name}::{}` (`{}`) and `{name}::{}` (`{}`) can match the same subject, so a message on it could be either; make them differ by a literal token",
                a.ident,
                type_text(a.ty),
                b.ident,
                type_text(b.ty),
            );
            checks.push(quote_spanned! {b.ty.span()=>
                const _: () = ::core::assert!(
                    !::bus::__private::templates_overlap(
                        <#ty as ::bus::__private::Messages>::VARIANTS[#i].subject,
                        <#ty as ::bus::__private::Messages>::VARIANTS[#j].subject,
                    ),
                    #message
                );
            });
        }
    }
    let list = variants
        .iter()
        .map(|v| format!("`{}`", type_text(v.ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let subscribe_doc = format!(
        "Subscribes to `pattern` and decodes each message into the variant of `{name}` whose subject template matches its subject ({list}).\n\nA stream of `Result<Envelope<{name}>, bus::Error>`: a message whose subject no variant fits is an `Err` item (`bus::Error::InvalidSubject`, naming it), and the stream goes on. Fails at once if no variant can arrive on `pattern`.\n\nGenerated by `#[derive(Messages)]`."
    );
    let handle_doc = format!(
        "Runs `handler` for every message on `pattern`, decoded into the variant of `{name}` whose subject template matches ({list}), with the default `bus::HandlerOptions` (retries, dead letters). A message no variant fits is dead-lettered at once.\n\nGenerated by `#[derive(Messages)]`."
    );
    quote! {
        const _: () = {
            #(#wraps)*

            #[automatically_derived]
            impl ::bus::__private::Messages for #ty {
                const TYPE_NAME: &'static ::core::primitive::str = #name;
                const VARIANTS: &'static [::bus::__private::Variant<Self>] = &[#(#entries),*];
            }

            #[automatically_derived]
            impl ::bus::__private::Incoming for #ty {
                const TYPE_NAME: &'static ::core::primitive::str = #name;
                fn decode_incoming(
                    subject: &::core::primitive::str,
                    payload: &[::core::primitive::u8],
                ) -> ::bus::__private::StdResult<Self, ::bus::__private::Undecodable> {
                    ::bus::__private::decode_messages::<Self>(subject, payload)
                }
            }

            #(#checks)*

            impl #ty {
                #[doc = #subscribe_doc]
                pub async fn subscribe(
                    bus: &::bus::__private::Bus,
                    pattern: &::core::primitive::str,
                ) -> ::bus::__private::Result<::bus::__private::FanIn<Self>> {
                    ::bus::__private::fan_in_subscribe::<Self>(bus, pattern).await
                }

                #[doc = #handle_doc]
                pub async fn handle<__F, __Fut, __E>(
                    bus: &::bus::__private::Bus,
                    pattern: &::core::primitive::str,
                    handler: __F,
                ) -> ::bus::__private::Result<::bus::__private::Handler>
                where
                    __F: ::core::ops::Fn(::bus::__private::Envelope<Self>) -> __Fut
                        + ::core::marker::Send
                        + ::core::marker::Sync
                        + 'static,
                    __Fut: ::core::future::Future<Output = ::bus::__private::StdResult<(), __E>>
                        + ::core::marker::Send
                        + 'static,
                    __E: ::core::fmt::Display + ::core::marker::Send + 'static,
                {
                    ::bus::__private::fan_in_handle::<Self, __F, __Fut, __E>(bus, pattern, handler).await
                }
            }
        };
    }
}
