//! `Subscription<T>`: the typed stream of a subscription.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;

use crate::broker::{RawSubscription, SubscriptionStats};
use crate::{codec, Envelope, Error, Message, Result};

/// A typed subscription: a [`Stream`] of `Result<Envelope<T>, Error>`.
///
/// An item is `Err` when a payload does not decode ([`Error::Decode`], with the subject and msg
/// id) or when the broker dropped messages because this subscriber fell behind
/// ([`Error::SlowConsumer`], with how many); the stream goes on after either. If the server
/// ends the subscription (a permissions violation), one [`Error::PermissionDenied`] item comes,
/// then the stream ends. Dropping the subscription unsubscribes.
///
/// ```no_run
/// # use bus::{Bus, Message};
/// # use futures::StreamExt;
/// # #[derive(serde::Serialize, serde::Deserialize, Message)]
/// # #[subject("plugin.inbound.<channel>")]
/// # struct Inbound { channel: String, text: String }
/// # async fn run(bus: &Bus) -> Result<(), bus::Error> {
/// let mut sub = Inbound::subscribe(bus, Inbound::filter()).await?;
/// while let Some(item) = sub.next().await {
///     match item {
///         Ok(env) => tracing::info!(subject = env.subject(), text = %env.text, "got"),
///         Err(e) => tracing::warn!(error = %e, "skipped"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscription<T> {
    raw: RawSubscription,
    /// Whether the server's refusal of this subscription was reported (then the stream ends).
    reported_failure: bool,
    reported_dropped: u64,
    decode_errors: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// Wraps a raw subscription.
    pub fn new(raw: RawSubscription) -> Self {
        Subscription {
            raw,
            reported_failure: false,
            reported_dropped: 0,
            decode_errors: 0,
            _type: PhantomData,
        }
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.raw.pattern
    }

    /// Delivered and dropped counts, shared with the broker.
    pub fn stats(&self) -> &Arc<SubscriptionStats> {
        &self.raw.stats
    }

    /// Payloads that did not decode so far.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.raw.pattern)
            .field("stats", &self.raw.stats)
            .field("decode_errors", &self.decode_errors)
            .finish()
    }
}

impl<T: Message> Stream for Subscription<T> {
    type Item = Result<Envelope<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(reason) = this.raw.stats.failure() {
            // The server ended the subscription (a permissions violation after a reconnect,
            // say): say so once, then end.
            if std::mem::replace(&mut this.reported_failure, true) {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err(Error::PermissionDenied {
                subject: this.raw.pattern.clone(),
                reason: reason.to_owned(),
            })));
        }
        let dropped = this.raw.stats.dropped();
        if dropped > this.reported_dropped {
            let n = dropped - this.reported_dropped;
            this.reported_dropped = dropped;
            tracing::warn!(pattern = %this.raw.pattern, dropped = n, "slow consumer: messages dropped");
            return Poll::Ready(Some(Err(Error::SlowConsumer {
                pattern: this.raw.pattern.clone(),
                dropped: n,
            })));
        }
        let msg = match this.raw.messages.as_mut().poll_next(cx) {
            Poll::Ready(Some(msg)) => msg,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Some(match codec::decode::<T>(&msg.payload) {
            Ok(body) => Ok(Envelope::new(body, msg.subject, msg.reply, msg.headers)),
            Err(source) => {
                this.decode_errors += 1;
                let msg_id = msg.headers.get(crate::headers::MSG_ID).map(str::to_string);
                tracing::warn!(subject = %msg.subject, ?msg_id, type_name = T::TYPE_NAME, error = %source, "undecodable payload");
                Err(Error::Decode {
                    subject: msg.subject,
                    msg_id,
                    type_name: T::TYPE_NAME,
                    source,
                })
            }
        }))
    }
}
