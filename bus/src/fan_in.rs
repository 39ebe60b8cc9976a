//! Typed fan-in: one subscription receiving several message types, each decoded into the
//! variant of an enum whose template matches the subject (`#[derive(Messages)]`).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::broker::{RawSubscription, SubscriptionStats};
use crate::handler::{Handler, HandlerOptions};
use crate::message::Filter;
use crate::{codec, Bus, Envelope, Error, Message, Result};

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
    let all: Vec<String> = E::VARIANTS
        .iter()
        .map(|v| format!("`{}` ({})", v.subject, v.type_name))
        .collect();
    all.join(", ")
}

impl Undecodable {
    /// The error item or dead-letter reason for a message on `subject`.
    pub(crate) fn into_error(self, subject: String, msg_id: Option<String>) -> Error {
        match self {
            Undecodable::Payload(type_name, source) => Error::Decode {
                subject,
                msg_id,
                type_name,
                source,
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

/// A pattern, as a [`Filter`].
struct PatternFilter {
    pattern: String,
}

impl Filter for PatternFilter {
    fn pattern(&self) -> Result<String> {
        Ok(self.pattern.clone())
    }
    fn queue_group(&self) -> Option<&str> {
        None
    }
}

/// Refuses a pattern on which no variant of `E` can arrive.
fn check_pattern<E: Messages>(pattern: &str) -> Result<()> {
    if E::VARIANTS
        .iter()
        .any(|v| bus_subject::pattern_admits(pattern, v.subject))
    {
        return Ok(());
    }
    Err(Error::InvalidSubject {
        subject: pattern.to_owned(),
        reason: format!(
            "no variant of `{}` can arrive on it (the variants: {}); subscribe to a pattern that covers them, e.g. `agent.events.>`",
            E::TYPE_NAME,
            templates::<E>()
        ),
    })
}

/// What the generated `subscribe(&bus, pattern)` of a [`Messages`] enum calls.
#[doc(hidden)]
pub async fn subscribe<E: Messages + Incoming>(bus: &Bus, pattern: &str) -> Result<FanIn<E>> {
    check_pattern::<E>(pattern)?;
    let raw = bus
        .subscribe_raw(&PatternFilter {
            pattern: pattern.to_owned(),
        })
        .await?;
    Ok(FanIn {
        raw,
        reported_failure: false,
        reported_dropped: 0,
        _type: PhantomData,
    })
}

/// What the generated `handle(&bus, pattern, handler)` of a [`Messages`] enum calls: a
/// [`Handler`] with the default [`HandlerOptions`]. A message no variant fits is
/// dead-lettered at once, as an undecodable payload is.
#[doc(hidden)]
pub async fn handle<E, F, Fut, Er>(bus: &Bus, pattern: &str, handler: F) -> Result<Handler>
where
    E: Messages + Incoming,
    F: Fn(Envelope<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), Er>> + Send + 'static,
    Er: fmt::Display + Send + 'static,
{
    check_pattern::<E>(pattern)?;
    bus.handle_incoming::<E, F, Fut, Er>(
        &PatternFilter {
            pattern: pattern.to_owned(),
        },
        HandlerOptions::default(),
        handler,
    )
    .await
}

/// The stream of a [`Messages`] subscription: `Result<Envelope<E>>` items, one per message.
///
/// An item is `Err` for a message whose subject no variant's template fits
/// ([`Error::InvalidSubject`], naming it), for a payload that does not decode as the matching
/// variant's type ([`Error::Decode`]), and, as on [`Subscription`](crate::Subscription), for
/// dropped messages and the server's refusal; the stream goes on after each but the last.
pub struct FanIn<E> {
    raw: RawSubscription,
    reported_failure: bool,
    reported_dropped: u64,
    _type: PhantomData<fn() -> E>,
}

impl<E> FanIn<E> {
    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.raw.pattern
    }

    /// Delivered and dropped counts, shared with the broker.
    pub fn stats(&self) -> &std::sync::Arc<SubscriptionStats> {
        &self.raw.stats
    }
}

impl<E> fmt::Debug for FanIn<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanIn")
            .field("pattern", &self.raw.pattern)
            .field("stats", &self.raw.stats)
            .finish()
    }
}

impl<E: Incoming> Stream for FanIn<E> {
    type Item = Result<Envelope<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(status) = crate::subscription::poll_status(
            &this.raw.pattern,
            &this.raw.stats,
            &mut this.reported_failure,
            &mut this.reported_dropped,
        ) {
            return Poll::Ready(status);
        }
        let msg = match this.raw.messages.as_mut().poll_next(cx) {
            Poll::Ready(Some(msg)) => msg,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Some(match E::decode_incoming(&msg.subject, &msg.payload) {
            Ok(body) => Ok(Envelope::new(body, msg.subject, msg.reply, msg.headers)),
            Err(e) => {
                let msg_id = crate::headers::msg_id(&msg.headers).map(str::to_owned);
                let e = e.into_error(msg.subject, msg_id);
                tracing::warn!(type_name = E::TYPE_NAME, error = %e, "fan-in message refused");
                Err(e)
            }
        }))
    }
}
