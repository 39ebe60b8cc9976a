//! The one responder: how every request is answered, whoever registered the handler
//! (`T::serve`, [`Bus::serve`](crate::Bus::serve), [`Service::serve`](crate::service::Service::serve)).
//!
//! [`Responder::answer`] decodes the request, checks its subject fields when the bus asks for it,
//! runs the handler with its panics caught, turns an `Err` or a panic into the error text the
//! requester receives as [`Error::Remote`](crate::Error::Remote), counts it, and sends the reply
//! inside the request's trace span. Only the last step differs between transports: a reply
//! message on the broker ([`serve`]), or the NATS service API's own response.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::broker::Broker;
use crate::codec;
use crate::envelope::{Delivered, Envelope};
use crate::error::Result;
use crate::headers::{self, Headers, WireHeaders};
use crate::incoming::check_subject_fields;
use crate::message::Request;
use crate::metrics::Receive;
use crate::raw::{RawMessage, RawSubscription};
use crate::stop::{Running, StopSignal};

/// A request handler and how its requests are taken apart: shared by every request it answers.
pub(crate) struct Responder<M, F> {
    handler: F,
    /// Whether a request's body must agree with its subject (the bus's subject/body check).
    check: bool,
    received: Receive,
    _type: std::marker::PhantomData<fn() -> M>,
}

impl<M, F, Fut, E> Responder<M, F>
where
    M: Request,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    pub(crate) fn new(handler: F, check: bool) -> Self {
        Responder {
            handler,
            check,
            received: Receive::of::<M>(),
            _type: std::marker::PhantomData,
        }
    }

    /// Answers `msg`: the encoded reply, or the error text the requester gets, handed to
    /// `reply`, all inside the request's span (so the reply carries its trace context).
    pub(crate) async fn answer<R, RFut>(&self, msg: RawMessage, reply: R)
    where
        R: FnOnce(std::result::Result<Bytes, String>) -> RFut,
        RFut: Future<Output = ()>,
    {
        self.received.delivered();
        let span = crate::trace::receive_span(
            crate::trace::Receive::Serve,
            M::TYPE_NAME,
            M::SUBJECT,
            &msg.subject,
            &msg.headers,
        )
        .unwrap_or_else(|| tracing::trace_span!("serve", type_name = M::TYPE_NAME));
        async move {
            let outcome = self.outcome(msg).await;
            reply(outcome).await;
        }
        .instrument(span)
        .await
    }

    /// What the handler made of `msg`: its reply encoded, or why there is none.
    async fn outcome(&self, msg: RawMessage) -> std::result::Result<Bytes, String> {
        let body = match codec::decode::<M>(&msg.payload) {
            Ok(body) => body,
            Err(e) => {
                self.received.decode_error();
                return Err(format!("cannot decode request as `{}`: {e}", M::TYPE_NAME));
            }
        };
        if self.check {
            check_subject_fields(&body, &msg.subject).map_err(|e| e.to_string())?;
        }
        let env = Envelope::of_message(body, msg, Delivered::Plain, None);
        // A panic is answered like an error: a requester must never wait for its timeout
        // because a handler panicked.
        match AssertUnwindSafe((self.handler)(env)).catch_unwind().await {
            Ok(Ok(reply)) => {
                codec::encode(&reply, std::any::type_name::<M::Reply>()).map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(crate::panic::describe(&*panic)),
        }
    }
}

/// Answers the requests of `raw` with `responder`, each on a task of its own, replying through
/// `broker`, until the returned handle is stopped or `closing` turns true.
pub(crate) fn serve<M, F, Fut, E>(
    raw: RawSubscription,
    broker: std::sync::Arc<dyn Broker>,
    wire: WireHeaders,
    responder: Responder<M, F>,
    (running, closing): (tokio::sync::mpsc::Sender<()>, watch::Receiver<bool>),
) -> ServeHandle
where
    M: Request,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let responder = std::sync::Arc::new(responder);
    let running = Running::spawn(move |stopped, in_flight| async move {
        let _running = running;
        let mut messages = raw.messages;
        let stopping = StopSignal::watch(stopped, closing);
        while let Some(Some(msg)) = stopping.next(&mut messages).await {
            let Some(reply_to) = msg.reply.clone() else {
                tracing::debug!(subject = %msg.subject, "request without reply subject ignored");
                continue;
            };
            let correlation = msg
                .headers
                .get(headers::CORRELATION_ID)
                .or_else(|| headers::msg_id(&msg.headers))
                .map(str::to_owned);
            let broker = broker.clone();
            let responder = responder.clone();
            let mut answer = Box::pin(async move {
                responder
                    .answer(msg, |outcome| async move {
                        let reply = reply_message(reply_to, correlation, outcome, wire);
                        if let Err(e) = broker.publish(reply).await {
                            tracing::warn!(error = %e, "cannot send reply");
                        }
                    })
                    .await
            });
            // Polled once here: a handler that answers without waiting is answered on this
            // task, with no task of its own to schedule (what keeps the tail short under
            // concurrent requests); one that waits goes on on a task of its own.
            if answer.as_mut().now_or_never().is_none() {
                in_flight.spawn(answer);
            }
        }
        // Unsubscribe first (no new requests), then answer the ones in flight.
        drop(messages);
        in_flight.wait().await;
    });
    ServeHandle {
        what: format!("responder for `{}`", M::TYPE_NAME),
        running,
    }
}

/// The reply to a request: the encoded reply, or the error in a `Bus-Error` header.
fn reply_message(
    reply_to: String,
    correlation: Option<String>,
    outcome: std::result::Result<Bytes, String>,
    wire: WireHeaders,
) -> RawMessage {
    let mut h = Headers::with_capacity(2);
    if let Some(c) = correlation {
        h.append(headers::CORRELATION_ID, c);
    }
    crate::trace::inject(&mut h);
    let payload = match outcome {
        Ok(bytes) => {
            if wire == WireHeaders::Full {
                h.append(headers::CONTENT_TYPE, headers::MSGPACK);
            }
            bytes
        }
        Err(message) => {
            h.append(headers::ERROR, error_header(&message));
            Bytes::new()
        }
    };
    RawMessage {
        subject: reply_to,
        reply: None,
        headers: h,
        payload,
    }
}

/// The longest `Bus-Error` text sent, in bytes: far under any server's max_payload, so the
/// error reply always goes out.
pub(crate) const MAX_ERROR_LEN: usize = 1024;

/// A handler's error text as a header value: CR, LF and other control characters (which a
/// header cannot carry) become spaces, and a text over [`MAX_ERROR_LEN`] bytes is cut at a
/// character boundary and marked with `…`.
fn error_header(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_ERROR_LEN));
    for c in message.chars() {
        if out.len() + c.len_utf8() > MAX_ERROR_LEN - '…'.len_utf8() {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A running responder (from `T::serve` or [`Bus::serve`](crate::Bus::serve)).
///
/// Dropping it leaves it running until the bus closes; [`stop`](ServeHandle::stop) ends it.
#[derive(Debug)]
pub struct ServeHandle {
    what: String,
    running: Running,
}

impl ServeHandle {
    /// Stops answering (unsubscribes at once) and waits until every request already taken was
    /// answered.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// [`stop`](ServeHandle::stop), waiting at most `timeout` for the requests already taken;
    /// past it they are abandoned (their requesters time out) and the error says how many.
    pub async fn stop_timeout(self, timeout: Duration) -> Result<()> {
        self.running.stop_timeout(&self.what, timeout).await
    }

    /// Whether the responder is still running.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }
}
