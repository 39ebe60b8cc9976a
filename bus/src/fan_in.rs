//! Typed fan-in: one subscription receiving several message types, each decoded into the
//! variant of an enum whose template matches the subject (`#[derive(Messages)]`).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use crate::envelope::{Delivered, Envelope};
use crate::error::{Error, Result};
use crate::handle::Bus;
use crate::handler::{Handler, HandlerOptions};
use crate::incoming::{templates, Incoming, Messages};
use crate::message::Filter;
use crate::raw::{RawSubscription, SubscriptionStats};
use crate::subscription::poll_status;

/// A pattern, as a [`Filter`] of the enum `E`.
struct PatternFilter<E> {
    pattern: String,
    _type: PhantomData<fn() -> E>,
}

impl<E: 'static> Filter for PatternFilter<E> {
    type Message = E;

    fn pattern(&self) -> Result<String> {
        Ok(self.pattern.clone())
    }
    fn queue_group(&self) -> Option<&str> {
        None
    }
}

/// `pattern` as a filter of `E`; refused if no variant of `E` can arrive on it.
fn filter_of<E: Messages>(pattern: &str) -> Result<PatternFilter<E>> {
    let admitted = E::VARIANTS
        .iter()
        .any(|v| bus_subject::pattern_admits(pattern, v.subject));
    if admitted {
        return Ok(PatternFilter {
            pattern: pattern.to_owned(),
            _type: PhantomData,
        });
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
    let raw = bus.subscribe_raw(&filter_of::<E>(pattern)?).await?;
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
    let filter = filter_of::<E>(pattern)?;
    bus.start_handler::<E, F, Fut, Er>(&filter, HandlerOptions::default(), handler)
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
        if let Some(status) = poll_status(
            &this.raw.pattern,
            &this.raw.stats,
            &mut this.reported_failure,
            &mut this.reported_dropped,
        ) {
            return Poll::Ready(status);
        }
        let Some(msg) = std::task::ready!(this.raw.messages.as_mut().poll_next(cx)) else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some(match E::decode_incoming(&msg.subject, &msg.payload) {
            Ok(body) => Ok(Envelope::of_message(body, msg, Delivered::Plain, None)),
            Err(e) => {
                let msg_id = crate::headers::msg_id(&msg.headers).map(str::to_owned);
                let e = e.into_error(msg.subject, msg_id);
                tracing::warn!(type_name = E::TYPE_NAME, error = %e, "fan-in message refused");
                Err(e)
            }
        }))
    }
}
