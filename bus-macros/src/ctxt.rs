//! Collects every error found in one derive, so the user sees them all at once (after
//! `serde_derive::internals::ctxt`).

use std::cell::RefCell;
use std::fmt::Display;

use quote::ToTokens;

/// The errors of one derive.
#[derive(Default)]
pub struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    /// Records an error spanned at `tokens`, with a hint that says how to fix it.
    ///
    /// The hint goes on its own line as `= help:` so it reads like a rustc suggestion (rustc
    /// indents the continuation lines of a message itself).
    pub fn error(&self, tokens: impl ToTokens, message: impl Display, hint: impl Display) {
        self.errors.borrow_mut().push(syn::Error::new_spanned(
            tokens,
            format!("{message}\n= help: {hint}"),
        ));
    }

    /// Whether an error was recorded.
    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }

    /// Records an error already built (e.g. by `syn` while parsing an attribute), adding a hint.
    pub fn syn_error(&self, error: syn::Error, hint: impl Display) {
        let span = error.span();
        self.errors
            .borrow_mut()
            .push(syn::Error::new(span, format!("{error}\n= help: {hint}")));
    }

    /// The errors as `compile_error!` invocations, each at its own span.
    pub fn into_compile_errors(self) -> proc_macro2::TokenStream {
        self.errors
            .into_inner()
            .into_iter()
            .map(syn::Error::into_compile_error)
            .collect()
    }
}
