//! Support for generated code. Not public API: names here may change in any release.

pub use crate::message::{Filter, FilterValue, Message, Request, SubjectToken};
pub use crate::{Bus, Envelope, Error, Handler, Result, ServeHandle, Subscription};
pub use core::default::Default;
pub use core::option::Option;
pub use core::result::Result as StdResult;
pub use futures::future::BoxFuture;
pub use std::string::String;

pub use crate::catalog::Registration;
pub use crate::fan_in::{handle as fan_in_handle, subscribe as fan_in_subscribe, FanIn};
pub use crate::incoming::{decode_messages, Incoming, Messages, Undecodable, Variant, VariantOf};
pub use bus_subject::templates_overlap;
pub use inventory;

use bus_subject::check_token;

/// `Self` is `T`. Lets a generated method bound a type parameter known to be `Self` (a bound on
/// `Self` alone would be checked, and fail, where the method is written): `request` and `serve`
/// on a type without `#[reply]` require `__S: Request` with `Self: SameAs<__S>`, so a call fails
/// with `Request`'s message, which names `#[reply(T)]`.
pub trait SameAs<T> {
    /// `self`, as the `T` it is.
    fn same(&self) -> &T;
}

impl<T> SameAs<T> for T {
    #[inline]
    fn same(&self) -> &T {
        self
    }
}

/// Builds a concrete subject, checking each placeholder value as it is written.
#[derive(Debug)]
pub struct SubjectBuilder {
    out: String,
}

impl SubjectBuilder {
    /// Starts with the literal prefix (the root and any literal tokens before the first placeholder).
    #[inline]
    pub fn new(prefix: &'static str, capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity);
        out.push_str(prefix);
        SubjectBuilder { out }
    }

    /// Appends `.literal`.
    #[inline]
    pub fn literal(&mut self, literal: &'static str) {
        self.out.push('.');
        self.out.push_str(literal);
    }

    /// Appends `.value`, refusing a value that is not exactly one token.
    #[inline]
    pub fn token<T: SubjectToken + ?Sized>(
        &mut self,
        field: &'static str,
        value: &T,
    ) -> Result<()> {
        self.out.push('.');
        let start = self.out.len();
        value.write_token(&mut self.out);
        check_token(&self.out[start..]).map_err(|e| Error::InvalidSubjectToken {
            field,
            value: self.out[start..].to_string(),
            reason: e.reason(),
        })
    }

    /// The subject.
    #[inline]
    pub fn finish(self) -> String {
        self.out
    }
}

/// The state of a generated filter: one optional value per placeholder, a queue group, a
/// durable consumer's name, and the first invalid value (reported when the filter is used).
#[derive(Debug)]
pub struct FilterParts<const N: usize> {
    values: [Option<String>; N],
    queue: Option<String>,
    durable: Option<String>,
    error: Option<Error>,
}

impl<const N: usize> Default for FilterParts<N> {
    fn default() -> Self {
        FilterParts {
            values: std::array::from_fn(|_| None),
            queue: None,
            durable: None,
            error: None,
        }
    }
}

impl<const N: usize> FilterParts<N> {
    /// Sets placeholder `index` (named `field`) to `value`.
    pub fn set<T: SubjectToken + ?Sized>(&mut self, index: usize, field: &'static str, value: &T) {
        let mut s = String::new();
        value.write_token(&mut s);
        self.values[index] = self.checked(field, s);
    }

    /// Sets the queue group.
    pub fn set_queue(&mut self, name: &str) {
        self.queue = self.checked("queue", name.to_owned());
    }

    /// Sets the durable consumer's name.
    pub fn set_durable(&mut self, name: &str) {
        self.durable = self.checked("durable", name.to_owned());
    }

    /// `value` if it is one token, else `None` and the error kept for when the filter is used.
    fn checked(&mut self, field: &'static str, value: String) -> Option<String> {
        let Err(e) = check_token(&value) else {
            return Some(value);
        };
        self.error.get_or_insert(Error::InvalidSubjectToken {
            field,
            value,
            reason: e.reason(),
        });
        None
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> Option<&str> {
        self.durable.as_deref()
    }

    /// The pattern: `segments` are the template's tokens, `None` marking placeholders in order.
    pub fn pattern(&self, segments: &[Option<&'static str>]) -> Result<String> {
        if let Some(e) = &self.error {
            return Err(clone_token_error(e));
        }
        let mut out = String::with_capacity(64);
        let mut slot = 0;
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match seg {
                Some(lit) => out.push_str(lit),
                None => {
                    out.push_str(self.values[slot].as_deref().unwrap_or("*"));
                    slot += 1;
                }
            }
        }
        Ok(out)
    }

    /// The queue group.
    pub fn queue(&self) -> Option<&str> {
        self.queue.as_deref()
    }
}

fn clone_token_error(e: &Error) -> Error {
    match e {
        Error::InvalidSubjectToken {
            field,
            value,
            reason,
        } => Error::InvalidSubjectToken {
            field,
            value: value.clone(),
            reason,
        },
        other => Error::Config(other.to_string()),
    }
}
