//! Our helper attributes: `#[subject("…")]` and `#[reply(T)]`.

use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, Lit, LitStr, Meta, Token, Type};

use crate::ctxt::Ctxt;

const SUBJECT_EXAMPLE: &str = "#[subject(\"plugin.outbound.<channel>\")]";
const REPLY_EXAMPLE: &str = "#[reply(MyReply)]";

/// The helper attributes as written. Each is kept even when misused, if a value could be
/// recovered, so the fallback expansion matches what the user meant.
#[derive(Default)]
pub struct Attrs {
    /// The `#[subject]` attribute itself, to span "missing template" style errors.
    pub subject_attr: Option<Attribute>,
    /// The template literal.
    pub subject: Option<LitStr>,
    /// The reply type.
    pub reply: Option<Type>,
}

impl Attrs {
    /// Reads `#[subject]` and `#[reply]` from the item's attributes, reporting misuse.
    pub fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Attrs::default();
        for attr in attrs {
            if attr.path().is_ident("subject") {
                if out.subject_attr.is_some() {
                    cx.error(
                        attr,
                        "duplicate `#[subject]` attribute",
                        "a message has exactly one subject template; remove one of them",
                    );
                    continue;
                }
                out.subject_attr = Some(attr.clone());
                out.subject = subject(cx, attr);
            } else if attr.path().is_ident("reply") {
                if out.reply.is_some() {
                    cx.error(
                        attr,
                        "duplicate `#[reply]` attribute",
                        "a request has exactly one reply type; remove one of them",
                    );
                    continue;
                }
                out.reply = reply(cx, attr);
            }
        }
        out
    }
}

fn subject(cx: &Ctxt, attr: &Attribute) -> Option<LitStr> {
    let hint = format!("write the template as one string literal: `{SUBJECT_EXAMPLE}`");
    match &attr.meta {
        Meta::Path(_) => {
            cx.error(attr, "`#[subject]` needs a subject template", hint);
            None
        }
        Meta::NameValue(nv) => {
            cx.error(attr, "`#[subject = ...]` is not the attribute's form", hint);
            // Keep the literal so the rest of the expansion matches what was meant.
            match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.clone()),
                _ => None,
            }
        }
        Meta::List(list) => {
            let args = match list.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
                Ok(args) => args,
                Err(e) => {
                    cx.syn_error(e, hint);
                    return None;
                }
            };
            let mut args = args.into_iter();
            let Some(first) = args.next() else {
                cx.error(attr, "`#[subject()]` needs a subject template", hint);
                return None;
            };
            if let Some(second) = args.next() {
                cx.error(
                    second,
                    "`#[subject]` takes exactly one string literal",
                    "a message has one subject; put it in one template with `.`-separated tokens",
                );
            }
            match first {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s),
                other => {
                    cx.error(
                        other,
                        "the subject template must be a string literal",
                        format!("the template is checked at compile time, so write it inline: `{SUBJECT_EXAMPLE}`"),
                    );
                    None
                }
            }
        }
    }
}

fn reply(cx: &Ctxt, attr: &Attribute) -> Option<Type> {
    let hint = format!("name the reply type in parentheses: `{REPLY_EXAMPLE}`");
    match &attr.meta {
        Meta::Path(_) => {
            cx.error(attr, "`#[reply]` needs the reply type", hint);
            None
        }
        Meta::NameValue(nv) => {
            cx.error(attr, "`#[reply = ...]` is not the attribute's form", hint);
            // Rust only allows a literal there; keep the type it names, if any, so `request` and
            // `serve` call sites still resolve.
            match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => s.parse::<Type>().ok(),
                _ => None,
            }
        }
        Meta::List(list) => {
            let types = match list.parse_args_with(Punctuated::<Type, Token![,]>::parse_terminated)
            {
                Ok(types) => types,
                Err(e) => {
                    cx.syn_error(e, hint);
                    return None;
                }
            };
            let mut types = types.into_iter();
            let Some(first) = types.next() else {
                cx.error(attr, "`#[reply()]` needs the reply type", hint);
                return None;
            };
            if let Some(second) = types.next() {
                cx.error(
                    second,
                    "`#[reply]` takes exactly one type",
                    "a request has one reply type; to reply with several values, put them in one struct or enum",
                );
            }
            Some(first)
        }
    }
}
