//! `Envelope<T>`: a received message with its subject and headers.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::durable::Acker;
use crate::error::{Error, Result};
use crate::headers::{self, Headers};
use crate::message::Message;
use crate::raw::RawMessage;

/// A typed message as received, with its subject and headers.
///
/// Derefs to the body, so `env.text` reads a field directly, whatever its name: a body field
/// called `subject`, `headers` or `reply` is `env.subject`, while the envelope's own facts are
/// methods (`env.subject()`, `env.headers()`, `env.reply_to()`).
///
/// From a durable consumer (a filter with `.durable(name)`), it also settles its delivery:
/// [`ack`](Envelope::ack), [`nak`](Envelope::nak) or [`term`](Envelope::term), once. An
/// envelope dropped unsettled (with all its clones) is delivered again at once; one left
/// unsettled past the ack wait, too. On a plain subscription there is nothing to settle and
/// these methods do nothing.
#[derive(Debug, Clone, PartialEq)]
// A tuple struct: its fields have no names, so none can hide a body field of the same name
// (`env.subject` is the body's `subject` field; `env.subject()` the subject it arrived on).
pub struct Envelope<T>(T, Arrival);

/// Where and how a message arrived: everything an envelope holds besides the body.
#[derive(Debug, Clone, PartialEq)]
struct Arrival {
    subject: String,
    reply: Option<String>,
    headers: Headers,
    settle: Settle,
}

/// How a message was delivered: what [`Envelope::delivered`] and [`Envelope::is_durable`]
/// report. Every path that hands a received message to user code says which it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// From a plain subscription: once, with nothing to settle.
    Plain,
    /// From a durable consumer, for the `n`th time (1 the first time).
    Durable(u32),
}

/// The delivery state of an envelope, and the delivery it settles (shared by its clones) when
/// it came from a durable subscription; a handler settles its deliveries itself, so its
/// envelopes carry the state only. Never part of an envelope's equality.
#[derive(Clone)]
struct Settle {
    delivered: Delivered,
    acker: Option<Arc<Mutex<Option<Acker>>>>,
    /// In a deduplicating handler: where [`Envelope::publish`] collects its messages.
    outputs: Option<Arc<Outputs>>,
}

impl Default for Settle {
    fn default() -> Self {
        Settle {
            delivered: Delivered::Plain,
            acker: None,
            outputs: None,
        }
    }
}

/// What a handler's attempt published through its envelope ([`Envelope::publish`]): committed
/// with the handler's inbox completion after `Ok`, dropped after `Err` or a panic.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    /// The incoming message's id, which the outputs' ids derive from.
    origin: Option<String>,
    msgs: Mutex<Vec<RawMessage>>,
}

impl Outputs {
    /// A collector for the attempt on the message with id `origin`.
    pub(crate) fn new(origin: Option<&str>) -> Arc<Outputs> {
        Arc::new(Outputs {
            origin: origin.map(str::to_owned),
            msgs: Mutex::default(),
        })
    }

    /// What was collected, in publish order.
    pub(crate) fn take(&self) -> Vec<RawMessage> {
        std::mem::take(&mut *self.msgs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, mut msg: RawMessage) {
        let mut msgs = self.msgs.lock().unwrap_or_else(|e| e.into_inner());
        // The n-th output of message `id` is `id.n`: a re-run that publishes the same outputs
        // in the same order gives them the same ids (a JetStream stream and a deduplicating
        // consumer drop the copies).
        let id = match &self.origin {
            Some(origin) => format!("{origin}.{}", msgs.len()),
            None => crate::msg_id::new_msg_id(),
        };
        msg.headers.insert(headers::MSG_ID, id);
        msgs.push(msg);
    }
}

impl Settle {
    fn take(&self) -> Option<Acker> {
        let acker = self.acker.as_ref()?;
        acker.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl PartialEq for Settle {
    fn eq(&self, _: &Settle) -> bool {
        true
    }
}

impl fmt::Debug for Settle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.delivered {
            Delivered::Plain => f.write_str("plain"),
            Delivered::Durable(n) => write!(f, "durable delivery {n}"),
        }
    }
}

impl<T> Envelope<T> {
    /// Wraps a body with the subject and headers it arrived with, as a plain delivery (for
    /// tests of code that takes envelopes).
    pub fn new(body: T, subject: String, reply: Option<String>, headers: Headers) -> Self {
        Envelope::received(body, subject, reply, headers, Delivered::Plain, None)
    }

    /// The one way every delivery path (subscriptions, handlers, responders, fan-in, replies)
    /// builds the envelope it hands out: the decoded body, the message's subject, reply and
    /// headers, how it was delivered, and, from a durable subscription, the delivery it settles.
    #[inline]
    pub(crate) fn received(
        body: T,
        subject: String,
        reply: Option<String>,
        headers: Headers,
        delivered: Delivered,
        acker: Option<Acker>,
    ) -> Self {
        Envelope(
            body,
            Arrival {
                subject,
                reply,
                headers,
                settle: Settle {
                    delivered,
                    acker: acker.map(|a| Arc::new(Mutex::new(Some(a)))),
                    outputs: None,
                },
            },
        )
    }

    /// [`received`](Envelope::received) with the parts of `msg` (its payload already decoded
    /// into `body`).
    #[inline]
    pub(crate) fn of_message(
        body: T,
        msg: RawMessage,
        delivered: Delivered,
        acker: Option<Acker>,
    ) -> Self {
        Envelope::received(body, msg.subject, msg.reply, msg.headers, delivered, acker)
    }

    /// Gives the envelope of a deduplicating handler's attempt the collector its
    /// [`publish`](Envelope::publish) writes to.
    pub(crate) fn with_outputs(mut self, outputs: Arc<Outputs>) -> Self {
        self.1.settle.outputs = Some(outputs);
        self
    }

    /// Publishes `msg` as part of handling this message (consume and produce as one step), in
    /// a handler with [`HandlerOptions::dedupe`](crate::HandlerOptions::dedupe).
    ///
    /// Nothing leaves at once: the message is collected, and after the handler returns `Ok`
    /// it is queued in the outbox **in the same transaction** as the handler's inbox
    /// completion; only then is the incoming message acknowledged. A handler that fails (or
    /// panics) publishes nothing, and after a crash between the commit and the ack the inbox
    /// skips the redelivered copy: every output is queued exactly once. The `n`-th message
    /// published while handling the message with id `id` gets the id `id.n`, so a re-run that
    /// publishes the same messages in the same order gives them the same ids. Without an
    /// outbox (the local broker) the outputs are published after `Ok`, one by one, best
    /// effort (see [`inbox`](crate::HandlerOptions::dedupe)).
    ///
    /// Refused with [`Error::Config`] on an envelope not from a deduplicating handler (a
    /// subscription's, or a handler's without `dedupe`): publish through the `Bus` there. Bad
    /// subjects and headers are refused here, before anything is collected.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use std::time::Duration;
    /// use bus::{HandlerOptions, Message};
    /// #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// #[subject("plugin.inbound.<channel>")]
    /// struct Task { channel: String, text: String }
    /// #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// #[subject("agent.events.<channel>")]
    /// struct Answer { channel: String, text: String }
    ///
    /// let bus = bus::Bus::local().await?;
    /// let options = HandlerOptions::named("agent").dedupe(Duration::from_secs(3600));
    /// let agent = bus.handle_with(Task::filter(), options, |task| async move {
    ///     let answer = Answer { channel: task.channel.clone(), text: task.text.to_uppercase() };
    ///     task.publish(&answer) // committed with the completion, after Ok
    /// }).await?;
    /// # agent.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn publish<N: Message>(&self, msg: &N) -> Result<()> {
        self.publish_with_headers(msg, Headers::new())
    }

    /// [`publish`](Envelope::publish) with headers.
    pub fn publish_with_headers<N: Message>(&self, msg: &N, headers: Headers) -> Result<()> {
        let Some(outputs) = &self.1.settle.outputs else {
            return Err(Error::Config(
                "Envelope::publish works only in a handler with HandlerOptions::dedupe (which \
                 commits what the handler publishes with its completion); publish through the \
                 Bus here"
                    .into(),
            ));
        };
        let subject = msg.subject()?;
        crate::raw::check_subject(&subject)?;
        headers.check()?;
        outputs.push(RawMessage {
            subject,
            reply: None,
            headers,
            payload: crate::codec::encode(msg, N::TYPE_NAME)?,
        });
        Ok(())
    }

    /// The message.
    pub fn body(&self) -> &T {
        &self.0
    }

    /// The message, without the envelope.
    pub fn into_body(self) -> T {
        self.0
    }

    /// The concrete subject it arrived on.
    pub fn subject(&self) -> &str {
        &self.1.subject
    }

    /// Its id (`Nats-Msg-Id`, or `Bus-Msg-Id` from an older peer): unique per message, stable
    /// across retries (use it to dedupe).
    ///
    /// `None` for a message sent without one: by default ([`WireHeaders::Minimal`]) only
    /// messages that went through an outbox, the ones that can arrive twice, carry an id, and
    /// with [`WireHeaders::NoId`] none does.
    ///
    /// [`WireHeaders::Minimal`]: crate::WireHeaders::Minimal
    /// [`WireHeaders::NoId`]: crate::WireHeaders::NoId
    pub fn msg_id(&self) -> Option<&str> {
        headers::msg_id(&self.1.headers)
    }

    /// Its `Bus-Correlation-Id`, on requests and their replies.
    pub fn correlation_id(&self) -> Option<&str> {
        self.1.headers.get(headers::CORRELATION_ID)
    }

    /// Every header.
    pub fn headers(&self) -> &Headers {
        &self.1.headers
    }

    /// The reply subject, on a request.
    pub fn reply_to(&self) -> Option<&str> {
        self.1.reply.as_deref()
    }

    /// Applies `f` to the body, keeping subject, headers and the delivery to settle.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope(f(self.0), self.1)
    }

    /// How many times this message was delivered, this delivery included: 1 the first time,
    /// more after a durable consumer redelivered it (in a durable handler: the attempt); always
    /// 1 on a plain subscription.
    pub fn delivered(&self) -> u32 {
        match self.1.settle.delivered {
            Delivered::Plain => 1,
            Delivered::Durable(n) => n.max(1),
        }
    }

    /// Whether it came from a durable consumer. From a durable subscription it has a delivery
    /// to settle; in a durable handler the handler settles it (ack after `Ok`).
    pub fn is_durable(&self) -> bool {
        matches!(self.1.settle.delivered, Delivered::Durable(_))
    }

    /// Done: a durable consumer never delivers it again. Does nothing on a plain subscription
    /// or once settled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), bus::Error> {
    /// use bus::{Bus, Message};
    /// use futures::StreamExt;
    /// #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// #[subject("plugin.inbound.<channel>")]
    /// struct Inbound { channel: String, text: String }
    ///
    /// let bus = Bus::local().await?;
    /// let sub = Inbound::subscribe(&bus, Inbound::filter().durable("inbox")).await?;
    /// drop(sub); // detached: the durable keeps what is published meanwhile
    /// Inbound { channel: "slack".into(), text: "hi".into() }.publish(&bus).await?;
    /// let mut sub = Inbound::subscribe(&bus, Inbound::filter().durable("inbox")).await?;
    /// let msg = sub.next().await.unwrap()?;
    /// assert_eq!((msg.text.as_str(), msg.delivered()), ("hi", 1));
    /// msg.ack().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ack(&self) -> Result<()> {
        match self.1.settle.take() {
            Some(acker) => acker.ack().await,
            None => Ok(()),
        }
    }

    /// Not done: a durable consumer delivers it again after `delay` (zero: at once), counting
    /// one more delivery. Does nothing on a plain subscription or once settled.
    pub async fn nak(&self, delay: Duration) -> Result<()> {
        match self.1.settle.take() {
            Some(acker) => acker.nak(delay).await,
            None => Ok(()),
        }
    }

    /// Never deliver it again, although it was not done (give up on it). Does nothing on a
    /// plain subscription or once settled.
    pub async fn term(&self) -> Result<()> {
        match self.1.settle.take() {
            Some(acker) => acker.term().await,
            None => Ok(()),
        }
    }

    /// Still working on it: the ack wait starts again. Does nothing on a plain subscription or
    /// once settled.
    pub async fn in_progress(&self) -> Result<()> {
        let progress = self.1.settle.acker.as_ref().and_then(|cell| {
            let acker = cell.lock().unwrap_or_else(|e| e.into_inner());
            acker.as_ref().and_then(Acker::progress)
        });
        match progress {
            Some(sent) => sent.await,
            None => Ok(()),
        }
    }
}

impl<T> Deref for Envelope<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
