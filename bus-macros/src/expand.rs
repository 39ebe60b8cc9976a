//! Tokens out. Every path is absolute (`::bus::__private::…`, `::core::…`) and every item but the
//! filter type sits in `const _: () = { … };`, so user names (`struct Result;`) cannot interfere.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitStr};

use crate::ast::Input;
use crate::attr::Attrs;
use crate::check::{self, Plan, PlanSegment};
use crate::ctxt::Ctxt;
use crate::doc::{self, Docs};

/// Expands `#[derive(Message)]`: the errors found, if any, followed by the items. The items are
/// emitted even on error, built from what could be understood, so that call sites such as
/// `T::filter().channel("x")` or `msg.publish(&bus)` do not add errors of their own.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let input = Input::from_syn(input);
    let attrs = Attrs::from_attrs(&cx, input.attrs);
    let plan = check::run(&cx, &input, &attrs);
    let items = items(&input, &attrs, &plan);
    let errors = cx.into_compile_errors();
    quote! {
        #errors
        #items
    }
}

fn items(input: &Input, attrs: &Attrs, plan: &Plan) -> TokenStream {
    let ty = input.ident;
    let type_name = ty.unraw().to_string();
    let filter = format_ident!("{}Filter", type_name, span = ty.span());
    let vis = input.vis;
    let n = plan.placeholders.len() + plan.fallback_methods.len();
    let template = &plan.template;
    let docs = Docs {
        type_name: type_name.clone(),
        filter_name: filter.to_string(),
        template: template.clone(),
        wildcard: wildcard_pattern(plan),
        placeholders: plan.placeholders.iter().map(|p| p.name.clone()).collect(),
        reply: attrs.reply.as_ref().map(doc::type_text),
    };

    let filter_doc = docs.filter_struct();
    let filter_struct = quote! {
        #[doc = #filter_doc]
        #[must_use = "a filter does nothing until it is passed to `subscribe` or `serve`"]
        #vis struct #filter {
            parts: ::bus::__private::FilterParts<#n>,
        }
    };

    let message = if plan.generic {
        quote! { () }
    } else {
        quote! { #ty }
    };
    let filter_impls = filter_impls(&filter, &docs, plan, &message);
    let filter_fn_doc = docs.filter_fn();
    let filter_fn = quote! {
        #[doc = #filter_fn_doc]
        pub fn filter() -> #filter {
            <#filter as ::core::default::Default>::default()
        }
    };

    if plan.generic {
        // `Message` cannot be implemented for a generic type (the check reported it); the filter
        // keeps `T::filter()` call sites quiet.
        let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
        return quote! {
            #filter_struct
            const _: () = {
                #filter_impls
                impl #impl_generics #ty #ty_generics #where_clause {
                    #filter_fn
                }
            };
        };
    }

    let subject_fn = subject_fn(plan);
    let lit = LitStr::new(
        template,
        attrs.subject.as_ref().map_or(ty.span(), LitStr::span),
    );
    let RequestItems {
        trait_impl: request_impl,
        methods: request_methods,
    } = match &attrs.reply {
        Some(reply) => request_items(ty, &filter, &docs, reply),
        None => not_a_request_items(&docs),
    };
    let publish_doc = docs.publish();
    let publish_after_doc = docs.publish_later("`delay` from now");
    let publish_at_doc = docs.publish_later("at `when`");
    let subscribe_doc = docs.subscribe();
    let handle_doc = docs.handle();
    let registration = registration(input, attrs, &type_name, &lit);

    quote! {
        #filter_struct
        const _: () = {
            #[automatically_derived]
            impl ::bus::__private::Message for #ty {
                const SUBJECT: &'static str = #lit;
                const TYPE_NAME: &'static str = #type_name;
                type Filter = #filter;
                #subject_fn
            }

            #filter_impls

            impl #ty {
                #filter_fn

                #[doc = #publish_doc]
                pub async fn publish(
                    &self,
                    bus: &::bus::__private::Bus,
                ) -> ::bus::__private::Result<()> {
                    bus.publish(self).await
                }

                #[doc = #publish_after_doc]
                pub async fn publish_after(
                    &self,
                    bus: &::bus::__private::Bus,
                    delay: ::std::time::Duration,
                ) -> ::bus::__private::Result<()> {
                    bus.publish_after(self, delay).await
                }

                #[doc = #publish_at_doc]
                pub async fn publish_at(
                    &self,
                    bus: &::bus::__private::Bus,
                    when: ::std::time::SystemTime,
                ) -> ::bus::__private::Result<()> {
                    bus.publish_at(self, when).await
                }

                #[doc = #subscribe_doc]
                pub async fn subscribe(
                    bus: &::bus::__private::Bus,
                    filter: #filter,
                ) -> ::bus::__private::Result<::bus::__private::Subscription<Self>> {
                    bus.subscribe::<Self>(filter).await
                }

                #[doc = #handle_doc]
                pub async fn handle<F, Fut, E>(
                    bus: &::bus::__private::Bus,
                    filter: #filter,
                    handler: F,
                ) -> ::bus::__private::Result<::bus::__private::Handler>
                where
                    F: ::core::ops::Fn(::bus::__private::Envelope<Self>) -> Fut
                        + ::core::marker::Send
                        + ::core::marker::Sync
                        + 'static,
                    Fut: ::core::future::Future<Output = ::bus::__private::StdResult<(), E>>
                        + ::core::marker::Send
                        + 'static,
                    E: ::core::fmt::Display + ::core::marker::Send + 'static,
                {
                    bus.handle::<Self, F, Fut, E>(filter, handler).await
                }

                #request_methods
            }

            #request_impl

            #registration
        };
    }
}

/// The type's catalog entry: one static, collected at link time (`bus::catalog()`).
fn registration(input: &Input, attrs: &Attrs, type_name: &str, template: &LitStr) -> TokenStream {
    let fields = input.fields.iter().map(|f| {
        let name = &f.name;
        let ty = doc::type_text(f.ty);
        quote! { (#name, #ty) }
    });
    let reply = match &attrs.reply {
        Some(r) => {
            let text = doc::type_text(r);
            quote! { ::core::option::Option::Some(#text) }
        }
        None => quote! { ::core::option::Option::None },
    };
    quote! {
        ::bus::__private::inventory::submit! {
            ::bus::__private::Registration {
                type_name: #type_name,
                module_path: ::core::module_path!(),
                template: #template,
                fields: &[#(#fields),*],
                reply: #reply,
            }
        }
    }
}

/// `subject()`: the leading literals as one prefix, then each token in order. Each placeholder's
/// `token` call is spanned at its field's type: it is the compile-time check that the type
/// implements `SubjectToken`, so `SubjectToken`'s `on_unimplemented` message shows at the field.
fn subject_fn(plan: &Plan) -> TokenStream {
    let mut prefix = Vec::new();
    let mut rest = plan.segments.iter().peekable();
    while let Some(PlanSegment::Literal(l)) = rest.peek() {
        prefix.push(l.as_str());
        rest.next();
    }
    let prefix = prefix.join(".");
    let capacity = plan.template.len() + 16 * plan.placeholders.len();
    let steps = rest.map(|seg| match seg {
        PlanSegment::Literal(l) => quote! { __subject.literal(#l); },
        PlanSegment::Placeholder(i) => {
            let p = &plan.placeholders[*i];
            let name = &p.name;
            match p.field {
                Some(f) => {
                    // The whole expression carries the type's span, so the error underlines
                    // the type only.
                    let mut ident = f.ident.clone();
                    ident.set_span(f.ty.span());
                    quote_spanned! {f.ty.span()=>
                        __subject.token(#name, &self.#ident)?;
                    }
                }
                // Reported by a check; this keeps the body well-typed without a second error.
                None => quote! { __subject.literal(#name); },
            }
        }
    });
    quote! {
        fn subject(&self) -> ::bus::__private::Result<::bus::__private::String> {
            #[allow(unused_mut)]
            let mut __subject = ::bus::__private::SubjectBuilder::new(#prefix, #capacity);
            #(#steps)*
            ::core::result::Result::Ok(__subject.finish())
        }
    }
}

/// `message`: the filter's `Message` type (the derived type; `()` where the derive cannot
/// implement `Message`, so the filter still compiles and adds no error of its own).
fn filter_impls(filter: &Ident, docs: &Docs, plan: &Plan, message: &TokenStream) -> TokenStream {
    let methods = plan.placeholders.iter().enumerate().filter_map(|(i, p)| {
        let method = p.method.as_ref()?;
        let name = &p.name;
        // A filter value must stand for the field's type, so a filter can only match what the
        // type publishes. Without a usable field (reported by a check) any token is accepted, so
        // call sites add no error of their own.
        let (value_ty, doc) = match p.field {
            Some(f) => {
                let field_ty = f.ty;
                // Spanned at the field's type, so a wrong value's error points there as the
                // bound that decides.
                (
                    quote_spanned!(field_ty.span()=> impl ::bus::__private::FilterValue<#field_ty>),
                    docs.filter_method(name, &doc::type_text(field_ty)),
                )
            }
            None => (
                quote!(impl ::bus::__private::SubjectToken),
                docs.filter_method(name, "SubjectToken"),
            ),
        };
        Some(quote! {
            #[doc = #doc]
            pub fn #method(mut self, value: #value_ty) -> Self {
                self.parts.set(#i, #name, &value);
                self
            }
        })
    });
    let fallback = plan.fallback_methods.iter().enumerate().map(|(i, method)| {
        let slot = plan.placeholders.len() + i;
        let name = method.unraw().to_string();
        quote! {
            #[doc(hidden)]
            pub fn #method(mut self, value: impl ::bus::__private::SubjectToken) -> Self {
                self.parts.set(#slot, #name, &value);
                self
            }
        }
    });
    let queue_doc = docs.queue();
    let durable_doc = docs.durable();
    let pattern = plan.segments.iter().map(|s| match s {
        PlanSegment::Literal(l) => quote! { ::core::option::Option::Some(#l) },
        PlanSegment::Placeholder(_) => quote! { ::core::option::Option::None },
    });
    let debug_name = filter.to_string();
    quote! {
        impl #filter {
            #(#methods)*
            #(#fallback)*

            #[doc = #queue_doc]
            pub fn queue(mut self, group: &str) -> Self {
                self.parts.set_queue(group);
                self
            }

            #[doc = #durable_doc]
            pub fn durable(mut self, name: &str) -> Self {
                self.parts.set_durable(name);
                self
            }
        }

        #[automatically_derived]
        impl ::bus::__private::Filter for #filter {
            type Message = #message;

            fn pattern(&self) -> ::bus::__private::Result<::bus::__private::String> {
                self.parts.pattern(&[#(#pattern),*])
            }

            fn queue_group(&self) -> ::core::option::Option<&str> {
                self.parts.queue()
            }

            fn durable_name(&self) -> ::core::option::Option<&str> {
                self.parts.durable()
            }
        }

        #[automatically_derived]
        impl ::core::default::Default for #filter {
            fn default() -> Self {
                #filter { parts: ::core::default::Default::default() }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #filter {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#debug_name)
                    .field("pattern", &::bus::__private::Filter::pattern(self))
                    .field("queue", &self.parts.queue())
                    .field("durable", &self.parts.durable())
                    .finish()
            }
        }
    }
}

/// What a `#[reply(T)]` type gets: the `Request` impl, and the `request` and `serve` methods
/// (emitted inside the type's inherent impl).
struct RequestItems {
    trait_impl: TokenStream,
    methods: TokenStream,
}

fn request_items(ty: &Ident, filter: &Ident, docs: &Docs, reply: &syn::Type) -> RequestItems {
    let request_doc = docs.request();
    let serve_doc = docs.serve();
    // The reply type keeps its own span so a missing `Serialize`/`Deserialize` on it is reported
    // at `#[reply(..)]`. Signatures use `<Self as Request>::Reply` rather than the written type so
    // a reply type named like a generic parameter cannot be captured.
    let reply_assoc = quote_spanned! {reply.span()=> type Reply = #reply; };
    let trait_impl = quote! {
        #[automatically_derived]
        impl ::bus::__private::Request for #ty {
            #reply_assoc
        }
    };
    let methods = quote! {
        #[doc = #request_doc]
        pub async fn request(
            &self,
            bus: &::bus::__private::Bus,
        ) -> ::bus::__private::Result<
            ::bus::__private::Envelope<<Self as ::bus::__private::Request>::Reply>,
        > {
            bus.request(self).await
        }

        #[doc = #serve_doc]
        pub async fn serve<__F, __Fut, __E>(
            bus: &::bus::__private::Bus,
            filter: #filter,
            handler: __F,
        ) -> ::bus::__private::Result<::bus::__private::ServeHandle>
        where
            __F: ::core::ops::Fn(::bus::__private::Envelope<Self>) -> __Fut
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static,
            __Fut: ::core::future::Future<
                    Output = ::core::result::Result<
                        <Self as ::bus::__private::Request>::Reply,
                        __E,
                    >,
                > + ::core::marker::Send
                + 'static,
            __E: ::core::fmt::Display + ::core::marker::Send + 'static,
        {
            bus.serve::<Self, __F, __Fut, __E>(filter, handler).await
        }
    };
    RequestItems {
        trait_impl,
        methods,
    }
}

/// `request` and `serve` on a type without `#[reply]`. Without them a call is rustc's "no method
/// named `request`", which never mentions `#[reply]`. With them it is an unmet `Request` bound,
/// whose `on_unimplemented` message names `#[reply(T)]`. The bound is on `__S`, a parameter that
/// `Self: SameAs<__S>` makes `Self`: a bound on `Self` alone would be checked, and fail, where it
/// is written. They return a boxed future, not an `async fn`'s: the bounds of an `async fn`'s
/// future are checked again at the call and at `.await`, three errors for one mistake.
fn not_a_request_items(docs: &Docs) -> RequestItems {
    let request_doc = docs.not_a_request("request");
    let serve_doc = docs.not_a_request("serve");
    let methods = quote! {
        #[doc = #request_doc]
        #[doc(hidden)]
        pub fn request<'__a, __S, __R>(
            &'__a self,
            bus: &'__a ::bus::__private::Bus,
        ) -> ::bus::__private::BoxFuture<
            '__a,
            ::bus::__private::Result<::bus::__private::Envelope<__R>>,
        >
        where
            Self: ::bus::__private::SameAs<__S>,
            __S: ::bus::__private::Request<Reply = __R>,
        {
            ::std::boxed::Box::pin(bus.request(::bus::__private::SameAs::same(self)))
        }

        #[doc = #serve_doc]
        #[doc(hidden)]
        pub fn serve<'__a, __S, __R, __F, __Fut, __E>(
            bus: &'__a ::bus::__private::Bus,
            filter: <__S as ::bus::__private::Message>::Filter,
            handler: __F,
        ) -> ::bus::__private::BoxFuture<
            '__a,
            ::bus::__private::Result<::bus::__private::ServeHandle>,
        >
        where
            Self: ::bus::__private::SameAs<__S>,
            __S: ::bus::__private::Request<Reply = __R>,
            __F: ::core::ops::Fn(::bus::__private::Envelope<__S>) -> __Fut
                + ::core::marker::Send
                + ::core::marker::Sync
                + 'static,
            __Fut: ::core::future::Future<Output = ::core::result::Result<__R, __E>>
                + ::core::marker::Send
                + 'static,
            __E: ::core::fmt::Display + ::core::marker::Send + 'static,
        {
            ::std::boxed::Box::pin(bus.serve::<__S, __F, __Fut, __E>(filter, handler))
        }
    };
    RequestItems {
        trait_impl: TokenStream::new(),
        methods,
    }
}

fn wildcard_pattern(plan: &Plan) -> String {
    plan.segments
        .iter()
        .map(|s| match s {
            PlanSegment::Literal(l) => l.as_str(),
            PlanSegment::Placeholder(_) => "*",
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use syn::{Attribute, Expr, ImplItem, Item, Visibility};

    /// The text of an item's `#[doc = ".."]` attributes.
    fn doc(attrs: &[Attribute]) -> String {
        attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .filter_map(|a| match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Every public item the derive emits for `input`, with its rustdoc: the filter struct, and
    /// each `pub fn` of the inherent impls (those inside `const _` included).
    fn public_docs(input: &str) -> Vec<(String, String)> {
        let input: syn::DeriveInput = syn::parse_str(input).unwrap();
        let file: syn::File = syn::parse2(super::derive(&input)).unwrap();
        let mut out = Vec::new();
        let mut items: Vec<Item> = file.items;
        while let Some(item) = items.pop() {
            match item {
                Item::Struct(s) => out.push((s.ident.to_string(), doc(&s.attrs))),
                Item::Const(c) => {
                    if let Expr::Block(b) = *c.expr {
                        items.extend(b.block.stmts.into_iter().filter_map(|s| match s {
                            syn::Stmt::Item(i) => Some(i),
                            _ => None,
                        }));
                    }
                }
                Item::Impl(i) if i.trait_.is_none() => {
                    for f in i.items {
                        if let ImplItem::Fn(f) = f {
                            if matches!(f.vis, Visibility::Public(_)) {
                                out.push((f.sig.ident.to_string(), doc(&f.attrs)));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_generated_public_item_is_documented_with_the_template() {
        let plain = public_docs(
            r#"#[subject("plugin.outbound.<channel>.<instance>")]
            pub struct Outbound { channel: String, instance: String, text: String }"#,
        );
        let names: Vec<&str> = plain.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "OutboundFilter",
                "channel",
                "durable",
                "filter",
                "handle",
                "instance",
                "publish",
                "publish_after",
                "publish_at",
                "queue",
                "request",
                "serve",
                "subscribe"
            ]
        );
        for (name, text) in &plain {
            match name.as_str() {
                // Present only to say that the type needs `#[reply(T)]`.
                "request" | "serve" => assert!(text.contains("#[reply(T)]"), "{name}: {text}"),
                _ => assert!(
                    text.contains("`plugin.outbound.<channel>.<instance>`"),
                    "{name}: {text}"
                ),
            }
        }
        let request = public_docs(
            r#"#[subject("agent.route.<agent>")]
            #[reply(RouteReply)]
            pub struct Delegate { agent: String }"#,
        );
        for (name, text) in &request {
            assert!(text.contains("`agent.route.<agent>`"), "{name}: {text}");
        }
        assert!(request
            .iter()
            .any(|(n, t)| n == "request" && t.contains("`RouteReply` reply")));
    }

    #[test]
    fn a_filter_method_takes_its_fields_type() {
        let input: syn::DeriveInput = syn::parse_str(
            r#"#[subject("plugin.health.<shard>.<host>")]
            pub struct Health { shard: u32, host: std::string::String }"#,
        )
        .unwrap();
        let out = super::derive(&input).to_string().replace(' ', "");
        assert!(
            out.contains("pubfnshard(mutself,value:impl::bus::__private::FilterValue<u32>)"),
            "{out}"
        );
        assert!(out.contains(
            "pubfnhost(mutself,value:impl::bus::__private::FilterValue<std::string::String>)"
        ));
    }
}
