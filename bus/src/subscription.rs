//! `Subscription<T>`: the typed stream of a subscription.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;

use crate::codec;
use crate::durable::{AckKind, Acker, Delivery, DurableSubscription};
use crate::envelope::{Delivered, Envelope};
use crate::error::{Error, Result};
use crate::incoming::{check_subject_fields, Undecodable};
use crate::message::Message;
use crate::raw::{RawMessage, RawSubscription, SubscriptionStats};

/// A typed subscription: a [`Stream`] of `Result<Envelope<T>, Error>`.
///
/// An item is `Err` when a payload does not decode ([`Error::Decode`], with the subject and msg
/// id) or when the broker dropped messages because this subscriber fell behind
/// ([`Error::SlowConsumer`], with how many); the stream goes on after either. If the server
/// ends the subscription (a permissions violation), one [`Error::PermissionDenied`] item comes,
/// then the stream ends. Dropping the subscription unsubscribes.
///
/// # Who gets a message
///
/// Subscriptions are core NATS subscriptions (and the local broker keeps the same semantics): a
/// message goes to the subscribers that are subscribed **at the moment the server routes it**.
/// The outbox makes a publish durable up to the server, not up to a subscriber. A subscriber that
/// is not running, not subscribed yet, or reconnecting when a message passes misses it for good,
/// and nothing tells the publisher. The answer is a durable consumer (a filter with
/// `.durable(name)`, see [`durable`](crate::durable)): messages published while it was down
/// arrive when it comes back. Or use request/reply when the publisher must know someone took it
/// ([`Error::NoResponders`] says nobody did).
///
/// # The subject/body check
///
/// A peer that builds the subject and the body separately (another language, a hand-written
/// client) can send a body whose placeholder fields contradict the subject. With the check on
/// ([`check_subject_fields`](Subscription::check_subject_fields), or for every subscription of a
/// bus [`BusBuilder::check_subject_fields`](crate::BusBuilder::check_subject_fields)), each
/// received message's subject is rebuilt from its body and compared: one that disagrees is an
/// [`Error::SubjectMismatch`] item instead of a message, and `serve` answers such a request with
/// the error instead of calling the handler. It costs one subject built per received message;
/// off (the default) nothing, and a peer that builds its subjects from the same fields (every
/// `bus` publisher does) cannot disagree:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// # use bus::Message;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
/// # #[subject("plugin.outbound.<channel>.<instance>")]
/// # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
/// use futures::StreamExt;
///
/// let bus = bus::Bus::builder().check_subject_fields(true).connect().await?;
/// let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await?;
/// // What a careless peer sends: `channel: "email"` on a `slack` subject.
/// let body = Outbound { channel: "email".into(), instance: "a1".into(), text: "hi".into() };
/// let payload = rmp_serde::to_vec_named(&body).unwrap();
/// bus.publish_raw(bus::RawMessage::new("plugin.outbound.slack.a1", payload)).await?;
/// match sub.next().await.unwrap() {
///     Err(bus::Error::SubjectMismatch { field, subject_value, body_value, .. }) => {
///         assert_eq!((field, subject_value.as_str(), body_value.as_str()), ("channel", "slack", "email"));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
///
/// # Durable consumers
///
/// On a durable consumer (a filter with `.durable(name)`), each envelope is a delivery to
/// settle ([`Envelope::ack`], [`nak`](Envelope::nak), [`term`](Envelope::term)); one that does
/// not decode or fails the subject/body check is terminated (a redelivery cannot fix it) and
/// reported as its `Err` item.
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
    raw: Source,
    /// Whether the server's refusal of this subscription was reported (then the stream ends).
    reported_failure: bool,
    reported_dropped: u64,
    decode_errors: u64,
    check_subject_fields: bool,
    subject_mismatches: u64,
    /// Its metric handles, resolved at the first message (where `T: Message` is known).
    metrics: Option<crate::metrics::Receive>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// Wraps a raw subscription, with the subject/body check off.
    pub fn new(raw: RawSubscription) -> Self {
        Subscription::from_source(Source::Plain(raw))
    }

    /// Wraps a durable consumer's deliveries, with the subject/body check off.
    pub fn durable(raw: DurableSubscription) -> Self {
        Subscription::from_source(Source::Durable(raw))
    }

    fn from_source(raw: Source) -> Self {
        Subscription {
            raw,
            reported_failure: false,
            reported_dropped: 0,
            decode_errors: 0,
            check_subject_fields: false,
            subject_mismatches: 0,
            metrics: None,
            _type: PhantomData,
        }
    }

    setters! {
        /// Turns the subject/body check on or off for this subscription (it starts as the bus's
        /// [`BusBuilder::check_subject_fields`](crate::BusBuilder::check_subject_fields) says, off by
        /// default). On, each received message's subject is rebuilt from its decoded body and
        /// compared with the subject it arrived on; a message that disagrees (say, published by a
        /// peer in another language on `plugin.outbound.slack.a1` with `channel: "email"` in its
        /// body) is an [`Error::SubjectMismatch`] item naming both, never a message.
        ///
        /// It costs one subject built per message; off, nothing.
        ///
        /// ```no_run
        /// # use bus::{Bus, Message};
        /// # #[derive(serde::Serialize, serde::Deserialize, Message)]
        /// # #[subject("plugin.inbound.<channel>")]
        /// # struct Inbound { channel: String, text: String }
        /// # async fn run(bus: &Bus) -> Result<(), bus::Error> {
        /// let sub = Inbound::subscribe(bus, Inbound::filter()).await?.check_subject_fields(true);
        /// # let _ = sub; Ok(()) }
        /// ```
        fn check_subject_fields(on: bool) => check_subject_fields = on;
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        self.raw.pattern()
    }

    /// The durable consumer's name, on one.
    pub fn durable_name(&self) -> Option<&str> {
        match &self.raw {
            Source::Plain(_) => None,
            Source::Durable(d) => Some(&d.name),
        }
    }

    /// Delivered and dropped counts, shared with the broker.
    pub fn stats(&self) -> &Arc<SubscriptionStats> {
        self.raw.stats()
    }

    /// Payloads that did not decode so far.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Messages refused so far by the subject/body check ([`Error::SubjectMismatch`]).
    pub fn subject_mismatches(&self) -> u64 {
        self.subject_mismatches
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern())
            .field("durable", &self.durable_name())
            .field("stats", self.stats())
            .field("decode_errors", &self.decode_errors)
            .field("check_subject_fields", &self.check_subject_fields)
            .field("subject_mismatches", &self.subject_mismatches)
            .finish()
    }
}

impl<T: Message> Stream for Subscription<T> {
    type Item = Result<Envelope<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(status) = poll_status(
            this.raw.pattern(),
            this.raw.stats(),
            &mut this.reported_failure,
            &mut this.reported_dropped,
        ) {
            if let Some(Err(Error::SlowConsumer { dropped, .. })) = &status {
                this.metrics
                    .get_or_insert_with(crate::metrics::Receive::of::<T>)
                    .dropped(*dropped);
            }
            return Poll::Ready(status);
        }
        let Some((msg, acker)) = std::task::ready!(this.raw.poll_next(cx)) else {
            return Poll::Ready(None);
        };
        let metrics = this
            .metrics
            .get_or_insert_with(crate::metrics::Receive::of::<T>);
        metrics.delivered();
        Poll::Ready(Some(match codec::decode::<T>(&msg.payload) {
            Ok(body) => {
                if this.check_subject_fields {
                    if let Err(e) = check_subject_fields(&body, &msg.subject) {
                        this.subject_mismatches += 1;
                        let msg_id = crate::headers::msg_id(&msg.headers);
                        tracing::warn!(?msg_id, type_name = T::TYPE_NAME, error = %e, "message refused by the subject/body check");
                        if let Some(acker) = acker {
                            acker.settle_detached(AckKind::Term);
                        }
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                let delivered = acker
                    .as_ref()
                    .map_or(Delivered::Plain, |a| Delivered::Durable(a.delivered()));
                Ok(Envelope::of_message(body, msg, delivered, acker))
            }
            Err(source) => {
                metrics.decode_error();
                this.decode_errors += 1;
                let msg_id = crate::headers::msg_id(&msg.headers).map(str::to_string);
                tracing::warn!(subject = %msg.subject, ?msg_id, type_name = T::TYPE_NAME, error = %source, "undecodable payload");
                if let Some(acker) = acker {
                    acker.settle_detached(AckKind::Term);
                }
                Err(Undecodable::Payload(T::TYPE_NAME, source).into_error(msg.subject, msg_id))
            }
        }))
    }
}

/// What a subscription reports before its next message, if anything: the server's refusal
/// (once as an error, then the end of the stream) or the messages the broker dropped.
pub(crate) fn poll_status<T>(
    pattern: &str,
    stats: &SubscriptionStats,
    reported_failure: &mut bool,
    reported_dropped: &mut u64,
) -> Option<Option<Result<T>>> {
    if let Some(reason) = stats.failure() {
        // The server ended the subscription (a permissions violation after a reconnect,
        // say): say so once, then end.
        if std::mem::replace(reported_failure, true) {
            return Some(None);
        }
        return Some(Some(Err(Error::PermissionDenied {
            subject: pattern.to_owned(),
            reason: reason.to_owned(),
        })));
    }
    let dropped = stats.dropped();
    if dropped > *reported_dropped {
        let n = dropped - *reported_dropped;
        *reported_dropped = dropped;
        tracing::warn!(%pattern, dropped = n, "slow consumer: messages dropped");
        return Some(Some(Err(Error::SlowConsumer {
            pattern: pattern.to_owned(),
            dropped: n,
        })));
    }
    None
}

/// What a typed subscription takes its messages from.
enum Source {
    /// A plain subscription.
    Plain(RawSubscription),
    /// A durable consumer: every message comes with its delivery to settle.
    Durable(DurableSubscription),
}

impl Source {
    fn pattern(&self) -> &str {
        match self {
            Source::Plain(raw) => &raw.pattern,
            Source::Durable(raw) => &raw.pattern,
        }
    }

    fn stats(&self) -> &Arc<SubscriptionStats> {
        match self {
            Source::Plain(raw) => &raw.stats,
            Source::Durable(raw) => &raw.stats,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(RawMessage, Option<Acker>)>> {
        match self {
            Source::Plain(raw) => raw
                .messages
                .as_mut()
                .poll_next(cx)
                .map(|m| m.map(|m| (m, None))),
            Source::Durable(raw) => raw
                .deliveries
                .as_mut()
                .poll_next(cx)
                .map(|d| d.map(|Delivery { message, acker, .. }| (message, Some(acker)))),
        }
    }
}
