//! stub
use proc_macro::TokenStream;
/// Derive.
#[proc_macro_derive(Message, attributes(subject, reply))]
pub fn derive_message(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
