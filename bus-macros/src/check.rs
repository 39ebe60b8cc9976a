//! The rules, one function each. The subject grammar is `bus_subject::parse_template`; this file
//! only connects it to the struct (fields, types, attributes) and to spans.
//!
//! [`run`] returns a [`Plan`] even when rules fail: the expansion then still produces the items
//! call sites use, so one mistake yields one error.

use bus_subject::{nearest, parse_template, roots_list, Segment, ROOTS};
use proc_macro2::Span;
use quote::format_ident;
use syn::{GenericArgument, Ident, LitStr, PathArguments, Type};

use crate::ast::{Field, Input, Shape};
use crate::attr::Attrs;
use crate::ctxt::Ctxt;

/// What to generate, as far as it could be understood.
pub struct Plan<'a> {
    /// The template as written ("" when there is none).
    pub template: String,
    /// Every token, in order.
    pub segments: Vec<PlanSegment>,
    /// The placeholders, in order of appearance.
    pub placeholders: Vec<Placeholder<'a>>,
    /// Extra filter methods emitted only when an error was reported (see [`run`]).
    pub fallback_methods: Vec<Ident>,
    /// Whether the type's generics prevent implementing `Message` (then only the filter is emitted).
    pub generic: bool,
}

/// One token of the template.
pub enum PlanSegment {
    /// Copied as is.
    Literal(String),
    /// Index into [`Plan::placeholders`].
    Placeholder(usize),
}

/// One placeholder.
pub struct Placeholder<'a> {
    /// Its name as written in the template.
    pub name: String,
    /// The name of its filter method; `None` when it cannot be one (it is reported).
    pub method: Option<Ident>,
    /// The field filling it, when it names one whose type can be a token.
    pub field: Option<&'a Field<'a>>,
}

/// Applies every rule, reporting each failure, and returns what can still be generated.
pub fn run<'a>(cx: &Ctxt, input: &'a Input<'a>, attrs: &Attrs) -> Plan<'a> {
    shape(cx, input);
    let generic = generics(cx, input);
    subject_present(cx, input, attrs);
    let template = attrs
        .subject
        .as_ref()
        .map(LitStr::value)
        .unwrap_or_default();
    if let Some(lit) = &attrs.subject {
        template_grammar(cx, lit, &template);
    }
    let (segments, names) = segments(&template);
    let mut placeholders = Vec::with_capacity(names.len());
    for name in names {
        let field = input.field(&name);
        let mut usable = field.is_some();
        if let (Some(lit), Shape::Struct) = (&attrs.subject, &input.shape) {
            if field.is_none() {
                placeholder_names_field(cx, lit, input, &name);
            }
            usable &= placeholder_not_reserved(cx, lit, &name);
        }
        if let Some(f) = field {
            usable &= field_type_is_token(cx, f);
        }
        placeholders.push(Placeholder {
            method: method_ident(&name),
            field: field.filter(|_| usable),
            name,
        });
    }
    // Once something is reported, the placeholders may not be what the user meant (a typo, a
    // template that did not parse, no template at all). Filter methods for the other fields then
    // keep call sites such as `T::filter().channel("x")` from failing in turn; they exist only
    // in a build that fails anyway.
    let fallback_methods = if cx.has_errors() {
        input
            .fields
            .iter()
            .filter(|f| !placeholders.iter().any(|p| p.name == f.name))
            .filter_map(|f| method_ident(&f.name))
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        template,
        segments,
        placeholders,
        fallback_methods,
        generic,
    }
}

/// Structs with named fields only.
fn shape(cx: &Ctxt, input: &Input) {
    let hint = "a message is a struct with named fields that fill the subject placeholders, e.g. `struct Outbound { channel: String, text: String }`";
    let (span, what) = match input.shape {
        Shape::Struct => return,
        Shape::Enum(span) => (span, "an enum"),
        Shape::Union(span) => (span, "a union"),
        Shape::Tuple(span) => (span, "a tuple struct"),
    };
    cx.error(
        SpanTokens(span),
        format!(
            "`#[derive(Message)]` cannot be used on {what}: it needs a struct with named fields"
        ),
        hint,
    );
}

/// No generic parameters: a message type is one concrete type with one subject.
fn generics(cx: &Ctxt, input: &Input) -> bool {
    if input.generics.params.is_empty() {
        return false;
    }
    cx.error(
        input.generics,
        "`#[derive(Message)]` does not support generic parameters or lifetimes",
        "a message is deserialized into an owned, concrete type; use concrete (owned) field types, or derive on one struct per payload type",
    );
    true
}

/// `#[subject]` is required.
fn subject_present(cx: &Ctxt, input: &Input, attrs: &Attrs) {
    if attrs.subject_attr.is_none() {
        cx.error(
            input.ident,
            format!("`#[derive(Message)]` on `{}` needs a `#[subject(\"…\")]` attribute", input.ident),
            format!(
                "add the subject template under the derive, e.g. `#[subject(\"plugin.outbound.<channel>\")]`; roots are {}",
                roots_list()
            ),
        );
    }
}

/// The template against the one grammar; every independent problem is reported.
fn template_grammar(cx: &Ctxt, lit: &LitStr, template: &str) {
    if let Err(errors) = parse_template(template) {
        for e in errors {
            let message = match pointer(template, &e.span) {
                Some(pointer) => format!("{}\n{pointer}", e.message()),
                None => e.message(),
            };
            cx.error(lit, message, e.hint());
        }
    }
}

/// Two lines showing where in the template the problem is, since a span cannot point inside a
/// string literal on stable Rust. `None` when the template holds characters that would not line
/// up (control characters, wide characters), or when the problem is the whole template.
fn pointer(template: &str, span: &std::ops::Range<usize>) -> Option<String> {
    if span.start == 0 && span.end >= template.len() {
        return None;
    }
    if !template
        .chars()
        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\')
    {
        return None;
    }
    let start = span.start.min(template.len());
    let width = span.end.saturating_sub(start).max(1);
    Some(format!(
        "  \"{template}\"\n   {}{}",
        " ".repeat(start),
        "^".repeat(width)
    ))
}

/// A placeholder must name a field of the struct.
fn placeholder_names_field(cx: &Ctxt, lit: &LitStr, input: &Input, name: &str) {
    let names = input.fields.iter().map(|f| f.name.as_str());
    let hint = match nearest(name, names) {
        Some(n) => format!("did you mean `<{n}>`?"),
        None if input.fields.is_empty() => {
            format!("`{}` has no fields; add a field `{name}`", input.ident)
        }
        None => format!(
            "a placeholder names a field; the fields of `{}` are {}",
            input.ident,
            input
                .fields
                .iter()
                .map(|f| format!("`{}`", f.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    cx.error(
        lit,
        format!("placeholder `<{name}>` names no field of `{}`", input.ident),
        hint,
    );
}

/// The filter has a `queue(group)` method, so no placeholder may take that name.
fn placeholder_not_reserved(cx: &Ctxt, lit: &LitStr, name: &str) -> bool {
    if name != "queue" {
        return true;
    }
    cx.error(
        lit,
        "placeholder `<queue>` clashes with the filter's `queue(group)` method",
        "rename the field and its placeholder, e.g. `<queue_name>`",
    );
    false
}

/// Types that can obviously never be one token get a tailored message here; every other type is
/// checked by the `SubjectToken` bound in the generated `subject()`, spanned at the field type.
fn field_type_is_token(cx: &Ctxt, field: &Field) -> bool {
    let Some((problem, hint)) = obvious_non_token(field.ty) else {
        return true;
    };
    cx.error(
        field.ty,
        format!(
            "field `{}` fills placeholder `<{}>` but {problem}",
            field.name, field.name
        ),
        hint,
    );
    false
}

fn obvious_non_token(ty: &Type) -> Option<(&'static str, &'static str)> {
    const MANY: &str = "a placeholder holds one token: use one field per placeholder, or a single String; keep collections out of the subject";
    match ty {
        Type::Paren(p) => obvious_non_token(&p.elem),
        Type::Group(g) => obvious_non_token(&g.elem),
        Type::Tuple(t) if t.elems.is_empty() => Some((
            "`()` has no value to put in a subject",
            "remove the placeholder, or give the field a value type such as String",
        )),
        Type::Tuple(_) => Some((
            "a tuple is several values, and a placeholder holds one token",
            "split the tuple into one field per value, each with its own placeholder",
        )),
        Type::Array(_) | Type::Slice(_) => {
            Some(("an array or slice is several values, not one token", MANY))
        }
        Type::Reference(r) => match &*r.elem {
            Type::Path(p) if p.path.is_ident("str") => None,
            other => obvious_non_token(other),
        },
        Type::Path(p) if p.qself.is_none() => {
            let last = p.path.segments.last()?;
            let has_args = matches!(last.arguments, PathArguments::AngleBracketed(_));
            match last.ident.to_string().as_str() {
                "f32" | "f64" if !has_args => Some((
                    "a floating-point number is not a subject token: its text contains `.`, which splits it into two tokens",
                    "use an integer (e.g. a scaled value) or a String for this placeholder",
                )),
                "Option" if has_args => Some((
                    "an `Option` may be empty, and a subject token always has a value",
                    "make the field non-optional (use a default value), or use a literal token instead of this placeholder",
                )),
                "Vec" | "VecDeque" | "HashSet" | "BTreeSet" | "LinkedList" | "BinaryHeap"
                    if has_args =>
                {
                    Some(("a collection is several values, not one token", MANY))
                }
                "HashMap" | "BTreeMap" if has_args => {
                    Some(("a map is several values, not one token", MANY))
                }
                // A smart pointer is as good as what it holds.
                "Box" | "Arc" | "Rc" => match &last.arguments {
                    PathArguments::AngleBracketed(a) => match a.args.first() {
                        Some(GenericArgument::Type(inner)) => obvious_non_token(inner),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// The template's tokens, read leniently so the expansion can proceed on a template that failed
/// its check: a token is a placeholder exactly when the grammar reads it as one (asked of
/// `bus_subject` on its own, not re-implemented), and repeated placeholders are kept once.
fn segments(template: &str) -> (Vec<PlanSegment>, Vec<String>) {
    if let Ok(t) = parse_template(template) {
        let names: Vec<String> = t.placeholders().map(str::to_string).collect();
        let mut next = 0;
        let segments = t
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => PlanSegment::Literal((*l).to_string()),
                Segment::Placeholder(_) => {
                    next += 1;
                    PlanSegment::Placeholder(next - 1)
                }
            })
            .collect();
        return (segments, names);
    }
    let mut names: Vec<String> = Vec::new();
    let mut segments = Vec::new();
    if template.is_empty() {
        return (segments, names);
    }
    for token in template.split('.') {
        let probe = format!("{}.{token}", ROOTS[0]);
        let name = match parse_template(&probe) {
            Ok(t) => t.placeholders().next().map(str::to_string),
            Err(_) => None,
        };
        match name {
            Some(n) if !names.contains(&n) => {
                names.push(n);
                segments.push(PlanSegment::Placeholder(names.len() - 1));
            }
            _ => segments.push(PlanSegment::Literal(token.to_string())),
        }
    }
    (segments, names)
}

/// The filter method for a placeholder: its name, raw when it is a keyword (`<type>` fills the
/// field `r#type`). `None` for the few names that cannot be identifiers at all (`<self>`).
fn method_ident(name: &str) -> Option<Ident> {
    if name == "queue" {
        return None;
    }
    if syn::parse_str::<Ident>(name).is_ok() {
        return Some(format_ident!("{}", name));
    }
    match name {
        "self" | "Self" | "super" | "crate" | "_" => None,
        _ => Some(Ident::new_raw(name, Span::call_site())),
    }
}

/// A bare span as something `syn::Error::new_spanned` accepts.
struct SpanTokens(Span);

impl quote::ToTokens for SpanTokens {
    fn to_tokens(&self, tokens: &mut proc_macro2::TokenStream) {
        tokens.extend([proc_macro2::TokenTree::Ident(Ident::new("x", self.0))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(template: &str) -> Vec<String> {
        segments(template).1
    }

    #[test]
    fn lenient_segments_recover_placeholders_from_a_bad_template() {
        assert_eq!(names("plugin.outbound.<a>.<b>"), ["a", "b"]);
        // Unknown root, empty token, wildcard: the placeholders are still found.
        assert_eq!(names("plugin.outbond..<a>.*.<b>"), ["a", "b"]);
        // Repeated and malformed placeholders are not.
        assert_eq!(names("agent.events.<a>.<a>.x<b>.<1c>"), ["a"]);
        assert!(names("").is_empty());
        let (segs, _) = segments("agent.route.<a>.v1");
        assert!(matches!(segs[3], PlanSegment::Literal(ref l) if l == "v1"));
        assert!(matches!(segs[2], PlanSegment::Placeholder(0)));
    }

    #[test]
    fn pointer_marks_the_offending_part() {
        let p = pointer("plugin.outbond..x", &(14..14)).unwrap();
        let lines: Vec<&str> = p.lines().collect();
        assert_eq!(lines[0], "  \"plugin.outbond..x\"");
        // Three columns for the indent and the opening quote, then the offset.
        assert_eq!(lines[1].find('^'), Some(3 + 14));
        assert!(pointer("agent.route", &(0..11)).is_none());
        assert!(pointer("agent.events.a\nb", &(13..16)).is_none());
    }

    #[test]
    fn obvious_non_tokens() {
        let bad = [
            "Option<String>",
            "std::option::Option<u8>",
            "Vec<String>",
            "HashMap<String, u8>",
            "f64",
            "(u8, u8)",
            "()",
            "[u8; 4]",
            "&[u8]",
            "Box<Vec<u8>>",
        ];
        for ty in bad {
            let ty: Type = syn::parse_str(ty).unwrap();
            assert!(obvious_non_token(&ty).is_some(), "{}", quote::quote!(#ty));
        }
        let good = [
            "String",
            "&'static str",
            "u64",
            "Box<str>",
            "MyId",
            "Option",
        ];
        for ty in good {
            let ty: Type = syn::parse_str(ty).unwrap();
            assert!(obvious_non_token(&ty).is_none(), "{}", quote::quote!(#ty));
        }
    }

    #[test]
    fn method_names() {
        assert_eq!(method_ident("channel").unwrap().to_string(), "channel");
        assert_eq!(method_ident("type").unwrap().to_string(), "r#type");
        assert!(method_ident("queue").is_none());
        assert!(method_ident("self").is_none());
    }
}
