//! What a received message decodes into (a message type, or a `#[derive(Messages)]` enum of
//! several), why a payload may not decode, and the subject/body check: shared by every path that
//! hands a received message to user code (subscriptions, handlers, responders, fan-in).

use bus_subject::{parse_template, Segment};

use crate::codec;
use crate::error::{Error, Result};
use crate::message::Message;

/// An enum whose variants each hold one message type: `#[derive(Messages)]` implements it, and
/// the inherent `subscribe(&bus, pattern)` and `handle(&bus, pattern, handler)` it generates
/// decode each message into the variant whose subject template matches the subject.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// use bus::{Bus, Message, Messages};
/// use futures::StreamExt;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// #[subject("agent.events.<agent>.started")]
/// struct Started { agent: String }
///
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// #[subject("agent.events.<agent>.stopped")]
/// struct Stopped { agent: String, code: i32 }
///
/// #[derive(Debug, Messages)]
/// enum AgentEvent { Started(Started), Stopped(Stopped) }
///
/// let bus = Bus::local().await?;
/// let mut events = AgentEvent::subscribe(&bus, "agent.events.>").await?;
/// Stopped { agent: "planner".into(), code: 0 }.publish(&bus).await?;
/// let env = events.next().await.unwrap()?;
/// assert!(matches!(env.body(), AgentEvent::Stopped(s) if s.code == 0));
/// # Ok(()) }
/// ```
///
/// The variants' templates may not overlap (checked at compile time): each subject decodes
/// into exactly one variant.
pub trait Messages: Sized + Send + Sync + 'static {
    /// The enum's name.
    const TYPE_NAME: &'static str;
    /// One entry per variant, in order: its template, type name and decoder.
    #[doc(hidden)]
    const VARIANTS: &'static [Variant<Self>];
}

/// One variant of a [`Messages`] enum. Not public API.
#[doc(hidden)]
pub struct Variant<E: 'static> {
    /// The variant's message type's template.
    pub subject: &'static str,
    /// The variant's message type's name.
    pub type_name: &'static str,
    decode: fn(&[u8]) -> std::result::Result<E, rmp_serde::decode::Error>,
}

impl<E: 'static> Variant<E> {
    /// The variant holding an `M`.
    pub const fn of<M: Message>() -> Variant<E>
    where
        E: VariantOf<M>,
    {
        Variant {
            subject: M::SUBJECT,
            type_name: M::TYPE_NAME,
            decode: decode_into::<M, E>,
        }
    }
}

fn decode_into<M: Message, E: VariantOf<M>>(
    payload: &[u8],
) -> std::result::Result<E, rmp_serde::decode::Error> {
    codec::decode::<M>(payload).map(E::wrap)
}

/// The enum has a variant holding an `M`. Not public API.
#[doc(hidden)]
pub trait VariantOf<M> {
    /// That variant, holding `message`.
    fn wrap(message: M) -> Self;
}

/// Why a payload did not become a value. Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub enum Undecodable {
    /// It is not MessagePack of the type (named).
    Payload(&'static str, rmp_serde::decode::Error),
    /// No variant's template matches the subject: why, naming the enum and its templates.
    NoVariant(String),
}

/// What a handler or subscription decodes a received message into: a message type, or a
/// [`Messages`] enum (the derive implements it). Not public API.
#[doc(hidden)]
pub trait Incoming: Sized + Send + Sync + 'static {
    /// The name errors and dead letters give.
    const TYPE_NAME: &'static str;
    /// The subject template metrics and spans are labelled with: the message type's, and empty
    /// for a [`Messages`] enum, whose variants have one each.
    const SUBJECT: &'static str = "";
    /// Decodes a message received on `subject`.
    fn decode_incoming(subject: &str, payload: &[u8]) -> std::result::Result<Self, Undecodable>;
}

impl<M: Message> Incoming for M {
    const TYPE_NAME: &'static str = M::TYPE_NAME;
    const SUBJECT: &'static str = M::SUBJECT;
    fn decode_incoming(_: &str, payload: &[u8]) -> std::result::Result<Self, Undecodable> {
        codec::decode::<M>(payload).map_err(|e| Undecodable::Payload(M::TYPE_NAME, e))
    }
}

/// [`Incoming::decode_incoming`] of a [`Messages`] enum: the variant whose template matches.
#[doc(hidden)]
pub fn decode_messages<E: Messages>(
    subject: &str,
    payload: &[u8],
) -> std::result::Result<E, Undecodable> {
    let v = E::VARIANTS
        .iter()
        .find(|v| bus_subject::template_matches(v.subject, subject))
        .ok_or_else(|| {
            Undecodable::NoVariant(format!(
                "no variant of `{}` has a subject template it fits (the variants: {})",
                E::TYPE_NAME,
                templates::<E>()
            ))
        })?;
    (v.decode)(payload).map_err(|e| Undecodable::Payload(v.type_name, e))
}

/// The templates of `E`'s variants, for error messages.
#[doc(hidden)]
pub fn templates<E: Messages>() -> String {
    let all = E::VARIANTS
        .iter()
        .map(|v| format!("`{}` ({})", v.subject, v.type_name));
    all.collect::<Vec<_>>().join(", ")
}

impl Undecodable {
    /// The error item or dead-letter reason for a message on `subject`.
    pub(crate) fn into_error(self, subject: String, msg_id: Option<String>) -> Error {
        match self {
            Undecodable::Payload(type_name, source) => Error::Decode {
                subject,
                msg_id,
                type_name,
                source: Box::new(source),
            },
            Undecodable::NoVariant(reason) => Error::InvalidSubject { subject, reason },
        }
    }

    /// The reason a handler gives when it dead-letters the message.
    pub(crate) fn reason(&self) -> String {
        match self {
            Undecodable::Payload(type_name, e) => {
                format!("cannot decode the payload as `{type_name}`: {e}")
            }
            Undecodable::NoVariant(reason) => reason.clone(),
        }
    }
}

/// The subject/body check: `Ok` when the placeholder fields of `body` rebuild `subject`.
///
/// Otherwise an [`Error::SubjectMismatch`] naming the first placeholder that disagrees, or, for a
/// subject that does not even fit `M`'s template (possible only through a raw subscription wrapped
/// by hand), an [`Error::InvalidSubject`].
pub(crate) fn check_subject_fields<M: Message>(body: &M, subject: &str) -> Result<()> {
    let rebuilt = body.subject();
    if matches!(&rebuilt, Ok(s) if s == subject) {
        return Ok(());
    }
    Err(mismatch::<M>(rebuilt, subject))
}

/// Why `subject` and the body's subject (`rebuilt`) differ.
#[cold]
fn mismatch<M: Message>(rebuilt: Result<String>, subject: &str) -> Error {
    // The derive accepted the template, so it parses; no segments rather than a panic if not.
    let segments = parse_template(M::SUBJECT).map_or_else(|_| Vec::new(), |t| t.segments);
    let received: Vec<&str> = subject.split('.').collect();
    let fits = received.len() == segments.len()
        && segments
            .iter()
            .zip(&received)
            .all(|(seg, tok)| !matches!(seg, Segment::Literal(l) if l != tok));
    if !fits {
        return Error::InvalidSubject {
            subject: subject.to_string(),
            reason: format!(
                "it does not fit the subject template of `{}`, `{}`",
                M::TYPE_NAME,
                M::SUBJECT
            ),
        };
    }
    let mut placeholders = segments
        .iter()
        .zip(&received)
        .filter_map(|(seg, tok)| match seg {
            Segment::Placeholder(name) => Some((*name, *tok)),
            Segment::Literal(_) => None,
        });
    let (field, subject_value, body_value) = match &rebuilt {
        Ok(rebuilt) => {
            // The first placeholder whose tokens differ. The rebuilt subject has the
            // template's literals, so its tokens line up with the received ones.
            let mut tokens = segments.iter().zip(&received).zip(rebuilt.split('.'));
            let first = tokens.find_map(|((seg, received), built)| match seg {
                Segment::Placeholder(field) if *received != built => {
                    Some((*field, *received, built.to_string()))
                }
                _ => None,
            });
            first.unwrap_or(("", subject, rebuilt.clone()))
        }
        // A body field that is not one token cannot match any subject.
        Err(Error::InvalidSubjectToken { field, value, .. }) => {
            let received = placeholders
                .find(|(name, _)| name == field)
                .map_or("", |(_, tok)| tok);
            (*field, received, value.clone())
        }
        Err(other) => ("", subject, other.to_string()),
    };
    Error::SubjectMismatch {
        subject: subject.to_string(),
        field,
        subject_value: subject_value.to_string(),
        body_value,
    }
}
