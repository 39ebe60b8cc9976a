//! Publishes through JetStream: each one's PubAck kept, and awaited together by a confirmation.

use std::borrow::Cow;
use std::sync::Arc;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;

use super::{js_error_text, JetStream, PendingAck, Unproven};
use crate::error::{Error, Rejection, Result};
use crate::headers;
use crate::raw::RawMessage;

/// Pending acks kept before a publish settles the oldest ones itself: memory stays bounded for a
/// publisher that never confirms.
const MAX_PENDING_ACKS: usize = 65_536;

impl JetStream {
    /// Sends `msg` through JetStream, keeping its ack future for the next confirmation.
    pub(crate) async fn publish(
        &self,
        msg: Cow<'_, RawMessage>,
        headers: Option<HeaderMap>,
    ) -> Result<()> {
        let msg_id = headers::msg_id(&msg.headers).map(str::to_owned);
        let (subject, payload) = match msg {
            Cow::Owned(m) => (m.subject, m.payload),
            Cow::Borrowed(m) => (m.subject.clone(), m.payload.clone()),
        };
        let mut publish = jetstream::context::Publish::build().payload(payload);
        if let Some(h) = headers {
            publish = publish.headers(h);
        }
        let ack = self
            .context
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| Error::nats("publish", e))?;
        let full = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.push(PendingAck {
                subject,
                msg_id,
                ack,
            });
            pending.len() >= MAX_PENDING_ACKS
        };
        if full {
            // Nobody confirms: settle the oldest half now, keep what it found for `confirm`.
            let oldest: Vec<PendingAck> = {
                let mut pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = pending.len() / 2;
                pending.drain(..n).collect()
            };
            let (rejections, unproven) = self.settle(oldest).await;
            let mut s = self
                .settled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.rejections.extend(rejections);
            s.unproven = s.unproven.or(unproven);
        }
        Ok(())
    }

    /// Awaits every ack pending now (all at once). `Ok(rejections)`: every message was either
    /// stored (a duplicate counts as stored) or refused for the reason given; `Err`: some acks
    /// are missing, nothing is proven.
    pub(crate) async fn confirm(&self) -> Result<Vec<Rejection>> {
        let pending = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let (mut rejections, mut unproven) = self.settle(pending).await;
        {
            let mut s = self
                .settled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut earlier = std::mem::take(&mut s.rejections);
            earlier.append(&mut rejections);
            rejections = earlier;
            unproven = s.unproven.take().or(unproven);
        }
        match unproven {
            None => Ok(rejections),
            Some(Unproven::Timeout) => Err(Error::Timeout {
                subject: "JetStream PubAck".to_owned(),
                timeout: self.request_timeout,
            }),
            Some(Unproven::ConnectionLost) => Err(Error::ConnectionLost {
                op: "the JetStream PubAck",
            }),
        }
    }
}

impl JetStream {
    /// Awaits `acks` together: the rejections, and whether some acks are missing.
    ///
    /// "No responders" for a declared stream is a rejection only if the stream is really gone:
    /// in a cluster it also means the stream has no leader for a moment (a node died), and
    /// then the messages are sent again without counting an attempt.
    async fn settle(&self, acks: Vec<PendingAck>) -> (Vec<Rejection>, Option<Unproven>) {
        if acks.is_empty() {
            return (Vec::new(), None);
        }
        let mut rejections = Vec::new();
        let mut unproven = None;
        let mut unanswered = Vec::new();
        // In order, one after the other: acks arrive in publish order, so once the first is
        // in, the others mostly are too and complete on their first poll (no timer armed, no
        // waker registered per ack, as awaiting them all at once does). A missing ack ends it:
        // the confirmation as a whole is unproven, and the batch is sent again.
        for p in acks {
            let Err(e) = p.ack.await else { continue };
            let (subject, msg_id) = (p.subject, p.msg_id);
            let reason = match e.kind() {
                PublishErrorKind::TimedOut => {
                    unproven = unproven.or(Some(Unproven::Timeout));
                    break;
                }
                PublishErrorKind::BrokenPipe => {
                    unproven = Some(Unproven::ConnectionLost);
                    break;
                }
                PublishErrorKind::StreamNotFound => {
                    unanswered.push((subject, msg_id));
                    continue;
                }
                _ if cluster_busy(&e) => {
                    tracing::debug!(subject, error = %e, "JetStream cluster busy; the message is sent again");
                    unproven = unproven.or(Some(Unproven::Timeout));
                    continue;
                }
                _ => publish_error_text(&e),
            };
            rejections.push(Rejection::new(subject, reason).with_msg_id(msg_id));
        }
        let mut gone: Vec<(Arc<str>, bool)> = Vec::new();
        for (subject, msg_id) in unanswered {
            let stream = self.route(&subject);
            let missing = match &stream {
                None => true,
                Some(name) => match gone.iter().find(|(n, _)| n == name) {
                    Some((_, missing)) => *missing,
                    None => {
                        let missing = self.stream_missing(name).await;
                        gone.push((name.clone(), missing));
                        missing
                    }
                },
            };
            if missing {
                let reason = match stream {
                    Some(name) => format!("no JetStream stream answered for {subject:?}: stream {name:?} does not exist"),
                    None => format!("no JetStream stream answered for {subject:?}"),
                };
                rejections.push(Rejection::new(subject, reason).with_msg_id(msg_id));
            } else {
                tracing::debug!(
                    subject,
                    stream = stream.as_deref(),
                    "JetStream stream without a leader right now; the message is sent again"
                );
                unproven = unproven.or(Some(Unproven::Timeout));
            }
        }
        (rejections, unproven)
    }

    /// Whether the server says stream `name` does not exist (not: cannot tell right now).
    async fn stream_missing(&self, name: &str) -> bool {
        match self.context.get_stream(name).await {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ),
        }
    }
}

/// Whether a refused publish says nothing about the message: the cluster cannot handle it right
/// now (no leader, not assigned yet, temporarily unavailable). It is sent again, uncounted.
fn cluster_busy(e: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| {
            let code = js.error_code();
            code == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
                || code == jetstream::ErrorCode::CLUSTER_NOT_LEADER
                || code == jetstream::ErrorCode::CLUSTER_NOT_ASSIGNED
        })
}

/// The server's words for a refused publish: `maximum messages exceeded (JetStream error
/// 10077, status 503)`.
fn publish_error_text(e: &jetstream::context::PublishError) -> String {
    use std::error::Error as _;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
    {
        Some(js) => js_error_text(js),
        None => e.to_string(),
    }
}
