//! `Envelope<T>`: a received message with its subject and headers.

use std::ops::Deref;

use crate::headers::{self, Headers};

/// A typed message as received, with its subject and headers.
///
/// Derefs to the body, so `env.text` reads a field directly.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    body: T,
    subject: String,
    reply: Option<String>,
    headers: Headers,
}

impl<T> Envelope<T> {
    /// Wraps a body with the subject and headers it arrived with.
    pub fn new(body: T, subject: String, reply: Option<String>, headers: Headers) -> Self {
        Envelope {
            body,
            subject,
            reply,
            headers,
        }
    }

    /// The message.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// The message, without the envelope.
    pub fn into_body(self) -> T {
        self.body
    }

    /// The concrete subject it arrived on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Its `Bus-Msg-Id`: unique per message, stable across retries (use it to dedupe).
    ///
    /// `None` for a message sent without one: by default ([`WireHeaders::Minimal`]) only
    /// messages that went through an outbox, the ones that can arrive twice, carry an id.
    ///
    /// [`WireHeaders::Minimal`]: crate::WireHeaders::Minimal
    pub fn msg_id(&self) -> Option<&str> {
        self.headers.get(headers::MSG_ID)
    }

    /// Its `Bus-Correlation-Id`, on requests and their replies.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers.get(headers::CORRELATION_ID)
    }

    /// Every header.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The reply subject, on a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply.as_deref()
    }

    /// Applies `f` to the body, keeping subject and headers.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            body: f(self.body),
            subject: self.subject,
            reply: self.reply,
            headers: self.headers,
        }
    }
}

impl<T> Deref for Envelope<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}
