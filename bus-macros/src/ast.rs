//! What was written: the derive input as a struct with named fields.

use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Generics, Ident, Type, Visibility};

/// The derive input.
pub struct Input<'a> {
    /// The type's name.
    pub ident: &'a Ident,
    /// The type's visibility, given to the generated filter type.
    pub vis: &'a Visibility,
    /// Its generics (refused by a check, kept for the fallback expansion).
    pub generics: &'a Generics,
    /// Its attributes, where `#[subject]` and `#[reply]` are.
    pub attrs: &'a [Attribute],
    /// What kind of item it is.
    pub shape: Shape,
    /// Its named fields (empty for anything that is not a struct with named fields).
    pub fields: Vec<Field<'a>>,
}

/// The kind of item the derive was put on.
pub enum Shape {
    /// A struct with named fields, or a unit struct (no fields): what the derive supports.
    Struct,
    /// An enum; the span of the `enum` keyword.
    Enum(proc_macro2::Span),
    /// A union; the span of the `union` keyword.
    Union(proc_macro2::Span),
    /// A tuple struct; the span of its parenthesised fields.
    Tuple(proc_macro2::Span),
}

/// One named field.
pub struct Field<'a> {
    /// The field as written (may be raw, `r#type`).
    pub ident: &'a Ident,
    /// Its name without `r#`, as a placeholder spells it.
    pub name: String,
    /// Its type.
    pub ty: &'a Type,
}

impl<'a> Input<'a> {
    /// Reads the derive input. Never fails: shapes the derive does not support are recorded in
    /// [`Shape`] and refused by `check`, so the expansion can still run.
    pub fn from_syn(input: &'a DeriveInput) -> Self {
        let (shape, fields) = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => (
                    Shape::Struct,
                    named
                        .named
                        .iter()
                        .filter_map(|f| {
                            let ident = f.ident.as_ref()?;
                            Some(Field {
                                ident,
                                name: ident.unraw().to_string(),
                                ty: &f.ty,
                            })
                        })
                        .collect(),
                ),
                Fields::Unit => (Shape::Struct, Vec::new()),
                Fields::Unnamed(unnamed) => (Shape::Tuple(unnamed.span()), Vec::new()),
            },
            Data::Enum(e) => (Shape::Enum(e.enum_token.span), Vec::new()),
            Data::Union(u) => (Shape::Union(u.union_token.span), Vec::new()),
        };
        Input {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs: &input.attrs,
            shape,
            fields,
        }
    }

    /// The field a placeholder names, if any.
    pub fn field(&self, name: &str) -> Option<&Field<'a>> {
        self.fields.iter().find(|f| f.name == name)
    }
}
