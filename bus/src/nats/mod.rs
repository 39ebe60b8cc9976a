//! `NatsBroker`: the NATS backend on async-nats 0.35.
//!
//! What async-nats 0.35 does not do and this module adds (DESIGN.md section 6):
//! - the size check on every publish (payload plus headers against the server's max_payload);
//!   only plain `publish` checks it there, and an oversize message makes the server close the
//!   connection;
//! - drop accounting: async-nats's full subscription buffer drops with only a lossy
//!   `Event::SlowConsumer(sid)`; the SDK keeps its own buffer per subscription, fed by a pump
//!   task, and counts every drop in that subscription's `SubscriptionStats`;
//! - `confirm`, a round trip proving the server processed what was published before it.

mod convert;
mod events;
mod options;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};

pub use self::options::{NatsAuth, NatsOptions};

use self::events::{Registered, Shared};
use crate::broker::{Broker, ConnectionState, RawMessage, RawSubscription, SubscriptionStats};
use crate::{Error, Result};

/// The NATS backend: one async-nats connection, reconnecting forever.
///
/// Made by [`BusBuilder::nats`](crate::BusBuilder::nats), or directly with
/// [`NatsBroker::connect`].
///
/// # Confirmation subject
/// [`confirm`](Broker::confirm) sends an empty request to [`NatsOptions::confirm_subject`]
/// (default `_bus.confirm`). Nobody should subscribe to it: the server's immediate
/// "no responders" answer is the proof that it processed everything this connection sent
/// before. The client therefore needs **publish** permission on that subject (and, as for every
/// request, subscribe permission on `_INBOX.>`). If someone does answer, that counts as proof
/// too; a subscriber that never answers turns every confirmation into a timeout.
#[derive(Debug)]
pub struct NatsBroker {
    client: Client,
    shared: Arc<Shared>,
    request_timeout: Duration,
    confirm_subject: String,
    subscription_capacity: usize,
}

impl NatsBroker {
    /// Connects (succeeds while the server is still down; reconnects forever).
    ///
    /// Fails only on configuration errors: no or unparsable URL, unreadable credentials file,
    /// invalid confirm subject. Watch [`state`](Broker::state) to know when the server is reached.
    pub async fn connect(options: NatsOptions) -> Result<NatsBroker> {
        options.validate()?;
        let shared = Shared::new();
        let on_event = Arc::clone(&shared);
        let connect = options
            .to_connect_options()
            .await?
            .event_callback(move |event| {
                on_event.on_event(event);
                std::future::ready(())
            });
        let urls = options
            .urls
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    Error::Config(format!(
                        "invalid NATS server URL {u:?}: {e}; expected e.g. nats://host:4222"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let client = connect
            .connect(urls)
            .await
            .map_err(|e| Error::nats("connect", e))?;
        let _ = shared.client.set(client.clone());
        shared.refresh_max_payload();
        tracing::debug!(urls = ?options.urls, "NATS client started");
        Ok(NatsBroker {
            client,
            shared,
            request_timeout: options.request_timeout,
            subscription_capacity: options.effective_subscription_capacity(),
            confirm_subject: options.confirm_subject,
        })
    }

    /// Refuses a message the server would answer by closing the connection.
    #[inline]
    fn check_size(&self, msg: &RawMessage) -> Result<()> {
        let max = self.shared.max_payload.load(Ordering::Relaxed);
        let size = msg.wire_size();
        if size > max {
            return Err(Error::PayloadTooLarge {
                subject: msg.subject.clone(),
                size,
                max,
            });
        }
        Ok(())
    }

    async fn publish_inner(&self, msg: RawMessage) -> Result<()> {
        check_subject(&msg.subject)?;
        self.check_size(&msg)?;
        let RawMessage {
            subject,
            reply,
            headers,
            payload,
        } = msg;
        let result = match (reply, headers.is_empty()) {
            (None, true) => self.client.publish(subject, payload).await,
            (None, false) => {
                let h = convert::to_header_map(&headers)?;
                self.client.publish_with_headers(subject, h, payload).await
            }
            (Some(reply), true) => {
                self.client
                    .publish_with_reply(subject, reply, payload)
                    .await
            }
            (Some(reply), false) => {
                let h = convert::to_header_map(&headers)?;
                self.client
                    .publish_with_reply_and_headers(subject, reply, h, payload)
                    .await
            }
        };
        result.map_err(|e| Error::nats("publish", e))
    }

    async fn request_inner(&self, msg: RawMessage, timeout: Duration) -> Result<RawMessage> {
        check_subject(&msg.subject)?;
        self.check_size(&msg)?;
        let mut req = async_nats::Request::new()
            .payload(msg.payload)
            .timeout(Some(timeout));
        if !msg.headers.is_empty() {
            req = req.headers(convert::to_header_map(&msg.headers)?);
        }
        match self.client.send_request(msg.subject.clone(), req).await {
            Ok(reply) => Ok(convert::from_nats(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => Error::NoResponders {
                    subject: msg.subject,
                },
                RequestErrorKind::TimedOut => Error::Timeout {
                    subject: msg.subject,
                    timeout,
                },
                RequestErrorKind::Other => Error::nats("request", e),
            }),
        }
    }

    async fn confirm_inner(&self) -> Result<()> {
        let req = async_nats::Request::new().timeout(Some(self.request_timeout));
        match self
            .client
            .send_request(self.confirm_subject.clone(), req)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                // The expected answer: the server saw the request, hence everything before it.
                RequestErrorKind::NoResponders => Ok(()),
                RequestErrorKind::TimedOut => Err(Error::Timeout {
                    subject: self.confirm_subject.clone(),
                    timeout: self.request_timeout,
                }),
                RequestErrorKind::Other => Err(Error::nats("confirm", e)),
            },
        }
    }

    async fn subscribe_inner(&self, pattern: &str, queue: Option<&str>) -> Result<RawSubscription> {
        bus_subject::check_pattern(pattern).map_err(|e| Error::InvalidSubject {
            subject: pattern.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(q) = queue {
            bus_subject::check_token(q).map_err(|e| Error::InvalidSubject {
                subject: q.to_owned(),
                reason: format!("invalid queue group name: {e}"),
            })?;
        }
        let pattern_owned = pattern.to_owned();
        let sub = match queue {
            None => self.client.subscribe(pattern_owned.clone()).await,
            Some(q) => {
                self.client
                    .queue_subscribe(pattern_owned.clone(), q.to_owned())
                    .await
            }
        }
        .map_err(|e| Error::nats("subscribe", e))?;
        let stats = Arc::new(SubscriptionStats::default());
        let sid = subscriber_sid(&sub);
        match sid {
            Some(sid) => {
                self.shared.subscriptions().insert(
                    sid,
                    Registered {
                        pattern: pattern_owned.clone(),
                        stats: Arc::clone(&stats),
                    },
                );
            }
            None => tracing::error!(
                pattern,
                "cannot read the async-nats subscription id; drops inside async-nats on this subscription will not be counted"
            ),
        }
        let (tx, rx) = mpsc::channel(self.subscription_capacity);
        tokio::spawn(pump(sub, tx, Arc::clone(&stats), pattern_owned.clone()));
        let stream = NatsStream {
            rx,
            stats: Arc::clone(&stats),
            sid,
            shared: Arc::clone(&self.shared),
        };
        Ok(RawSubscription {
            pattern: pattern_owned,
            messages: Box::pin(stream),
            stats,
        })
    }
}

fn check_subject(subject: &str) -> Result<()> {
    bus_subject::check_subject(subject).map_err(|e| Error::InvalidSubject {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}

/// The subscription id (sid) async-nats 0.35 gave `sub`, the key of its `Event::SlowConsumer`.
///
/// 0.35 keeps the field private but derives `Debug` (`Subscriber { sid: 7, .. }`), so the id is
/// read from there; exact, because the sid is the first field. A test in this module fails if
/// a future async-nats changes that.
fn subscriber_sid(sub: &async_nats::Subscriber) -> Option<u64> {
    let debug = format!("{sub:?}");
    let rest = debug.split_once("sid: ")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Moves one subscription's messages from async-nats's buffer into ours, counting every message
/// our full buffer refuses.
///
/// Why a task and not async-nats's buffer alone: async-nats reports each drop only as an
/// `Event::SlowConsumer` on an event channel of 128 that itself drops events, so a burst of drops
/// was undercounted by half in tests. Here every drop is counted exactly. async-nats's own buffer
/// is several times larger (see `options.rs`) and this loop never waits on the subscriber, so it
/// only overflows if this task is starved; those drops are still counted from the events.
async fn pump(
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<async_nats::Message>,
    stats: Arc<SubscriptionStats>,
    pattern: String,
) {
    let closed = tx.closed();
    tokio::pin!(closed);
    let mut dropped_in_burst = 0u64;
    loop {
        tokio::select! {
            biased;
            msg = sub.next() => match msg {
                Some(msg) => match tx.try_send(msg) {
                    Ok(()) => {
                        if dropped_in_burst > 0 {
                            tracing::warn!(%pattern, dropped = dropped_in_burst, "NATS slow consumer: messages dropped");
                            dropped_in_burst = 0;
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        stats.add_dropped(1);
                        dropped_in_burst += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                },
                // The client was dropped; the subscriber sees the end of its stream.
                None => break,
            },
            // The subscriber dropped its stream: dropping `sub` unsubscribes.
            () = &mut closed => break,
        }
    }
}

/// The message stream of one subscription; unregisters its sid when dropped (the pump then
/// ends and unsubscribes).
struct NatsStream {
    rx: mpsc::Receiver<async_nats::Message>,
    stats: Arc<SubscriptionStats>,
    sid: Option<u64>,
    shared: Arc<Shared>,
}

impl Stream for NatsStream {
    type Item = RawMessage;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawMessage>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => {
                self.stats.add_delivered(1);
                Poll::Ready(Some(convert::from_nats(msg)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for NatsStream {
    fn drop(&mut self) {
        if let Some(sid) = self.sid {
            self.shared.subscriptions().remove(&sid);
        }
    }
}

impl Broker for NatsBroker {
    fn publish(&self, msg: RawMessage) -> BoxFuture<'_, Result<()>> {
        self.publish_inner(msg).boxed()
    }

    /// A request to the confirm subject (see [`NatsBroker`]): the server's no-responders answer
    /// (or any reply) proves it processed everything published before on this connection.
    /// Fails with [`Error::Timeout`] after the request timeout when the server is unreachable.
    fn confirm(&self) -> BoxFuture<'_, Result<()>> {
        self.confirm_inner().boxed()
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> BoxFuture<'_, Result<RawSubscription>> {
        let pattern = pattern.to_owned();
        let queue = queue.map(str::to_owned);
        async move { self.subscribe_inner(&pattern, queue.as_deref()).await }.boxed()
    }

    fn request(&self, msg: RawMessage, timeout: Duration) -> BoxFuture<'_, Result<RawMessage>> {
        self.request_inner(msg, timeout).boxed()
    }

    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    fn max_payload(&self) -> usize {
        self.shared.max_payload.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscriber_sid_is_readable() {
        // No server needed: with retry_on_initial_connect the client hands out subscribers
        // while it is still connecting, and sids count up from 1.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let a = client.subscribe("a").await.unwrap();
        let b = client.subscribe("b").await.unwrap();
        assert_eq!(subscriber_sid(&a), Some(1));
        assert_eq!(subscriber_sid(&b), Some(2));
    }
}
