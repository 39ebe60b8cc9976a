//! `Handler`: runs a function for every message of a subscription, with retries, bounded
//! concurrency, dead letters and a clean stop.
//!
//! Each message is attempted at most `concurrency` at once: first inline on the handler's loop,
//! then, if it has to wait, on a task of its own (so a quick handler costs no task and no
//! allocation per message). An `Err` or a panic
//! is a failed attempt: the message waits its [`RetryPolicy`](crate::RetryPolicy) backoff *without* holding a slot, so
//! a failing message never blocks the ones behind it, and after `max_attempts` it is
//! dead-lettered with its subject, headers, payload, attempts, last error and the handler's name.
//! A payload that does not decode is dead-lettered at once: retrying cannot fix it. In ordered
//! mode one message is finished (retries included) before the next starts.
//!
//! # A handler instead of a loop
//!
//! `T::handle(&bus, filter, handler)` (or [`Bus::handle`](crate::Bus::handle)) runs an async
//! function for every message instead of a loop you write over `subscribe`, on both backends;
//! [`Bus::handle_with`](crate::Bus::handle_with) takes [`HandlerOptions`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! # use bus::Message;
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
//! # #[subject("plugin.outbound.<channel>.<instance>")]
//! # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//! use bus::{HandlerOptions, RetryPolicy};
//! let bus = bus::Bus::local().await?;
//! let sender = Outbound::handle(&bus, Outbound::filter().channel("slack"), |msg| async move {
//!     if msg.text.is_empty() {
//!         return Err(format!("nothing to send for {}", msg.instance)); // a failed attempt
//!     }
//!     Ok(()) // done
//! }).await?;
//! // With options: a name (what dead letters say they died in), concurrency, ordered, retries.
//! let ordered = bus.handle_with(
//!     Outbound::filter().channel("audit"),
//!     HandlerOptions::named("auditor").ordered(true).retry(RetryPolicy::default().max_attempts(5)),
//!     |_msg| async { Ok::<_, String>(()) },
//! ).await?;
//! sender.stop().await;   // stops taking messages, waits for the ones in flight
//! ordered.stop().await;
//! # Ok(()) }
//! ```
//!
//! - **Retries**: an `Err` or a panic is retried after the [`RetryPolicy`](crate::RetryPolicy)'s backoff (default:
//!   3 attempts, 100 ms then 400 ms, 20 % jitter; the same type and default as the outbox's).
//!   After the last attempt the message is dead-lettered with `origin` `handler:<name>` and
//!   counted in [`Handler::stats`].
//! - **Concurrency** is bounded ([`HandlerOptions::concurrency`], default 64); a handler that
//!   completes without waiting runs inline, without a task. **Ordered** mode
//!   ([`HandlerOptions::ordered`]) handles one message at a time. **Order per key**
//!   ([`HandlerOptions::ordered_by_subject`], [`HandlerOptions::ordered_by`]) handles the
//!   messages of one subject (or key) in order, retries included, and different keys
//!   concurrently (see `lanes`).
//! - **Where dead letters live**: in the outbox file's dead-letter table when the bus has one
//!   (every NATS bus by default; `bus dead-letters list FILE` and the `sqlite3` shell show them
//!   next to the outbox's), otherwise in memory in the `Bus` (the local broker without an
//!   outbox: the newest 10,000, older ones counted as evicted). Both are listed, replayed and
//!   purged through [`Bus::dead_letters`](crate::Bus::dead_letters) and counted in
//!   [`Health::dead_letters`](crate::Health::dead_letters).
//! - **Stopping**: [`Handler::stop`] stops taking messages and waits for those in flight, retries
//!   included; [`Bus::close`](crate::Bus::close) does it for every handler. Dropping a `Handler`
//!   leaves it running until the bus closes.
//! - **What a handler does not fix**: a core subscription still misses what is published while
//!   no handler runs (see [`Subscription`](crate::Subscription)), and the retries of a handler
//!   are in memory: a message being retried when the process dies is gone (at most once across
//!   a crash, as core NATS is). A durable handler (a filter with `.durable(name)`, see
//!   [`durable`](crate::durable)) fixes both.
//!
//! # Effects once: the inbox
//!
//! A durable handler is at-least-once: after a crash between its work and its ack, or when an
//! outbox resend arrives whose first copy already did, it runs twice.
//! [`HandlerOptions::dedupe`] closes that: a message whose msg id the handler (by name) already
//! finished within the window is acknowledged without running again, across redeliveries,
//! outbox resends and, with an outbox file, restarts; [`Handler::stats`] counts what was
//! skipped ([`HandlerStats::duplicates_skipped`]) and the messages that carry no id and were
//! run as without dedupe ([`HandlerStats::without_msg_id`]). Completions are kept in the outbox
//! file's `inbox` table when there is one (`bus outbox stats FILE` shows its size), otherwise in
//! bounded memory (100,000 per handler; nothing survives a restart).
//!
//! **Consume and produce as one step**: in such a handler, [`Envelope::publish`] collects
//! messages; after `Ok` they are queued in the outbox in the same SQLite transaction as the
//! completion, and only then is the incoming message acknowledged. A failed attempt publishes
//! nothing; a crash after the commit is answered by the inbox when the message comes again. So
//! every output is queued exactly once, with an id derived from the incoming message's
//! (`<id>.<n>`), the same on a re-run. Without an outbox the outputs are published after `Ok`,
//! best effort.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! # use bus::Message;
//! # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
//! # #[subject("plugin.outbound.<channel>.<instance>")]
//! # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//! use std::time::Duration;
//! use bus::{Headers, HandlerOptions};
//! let bus = bus::Bus::local().await?;
//! let options = HandlerOptions::named("sender").dedupe(Duration::from_secs(600));
//! let sender = bus.handle_with(Outbound::filter(), options, |_msg| async { Ok::<_, String>(()) }).await?;
//! let msg = Outbound { channel: "slack".into(), instance: "a".into(), text: "hi".into() };
//! let mut id = Headers::new();
//! id.insert("Nats-Msg-Id", "order-17");
//! bus.publish_with_headers(&msg, id.clone()).await?;
//! bus.publish_with_headers(&msg, id).await?; // the same message again: skipped
//! sender.stop().await;
//! # Ok(()) }
//! ```
//!
//! [`Envelope::publish`]: crate::Envelope::publish

mod lanes;
mod options;
mod run;
mod slots;
mod stats;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::lanes::Lanes;
pub use self::options::{HandlerOptions, DEFAULT_CONCURRENCY};
use self::run::{Bound, Run};
pub use self::stats::HandlerStats;
use crate::dead_letter::DeadLetterSink;
use crate::durable::DurableSubscription;
use crate::envelope::Envelope;
use crate::inbox::Inbox;
use crate::incoming::Incoming;
use crate::raw::RawSubscription;
use crate::stop::{Running, StopSignal};

/// A running handler (from `T::handle` / [`Bus::handle`](crate::Bus::handle)).
///
/// Dropping it leaves it running until the bus closes; [`stop`](Handler::stop) ends it cleanly.
#[derive(Debug)]
pub struct Handler {
    name: String,
    stats: Arc<HandlerStats>,
    running: Running,
}

impl Handler {
    /// The handler's name (the type's name unless [`HandlerOptions::named`] set one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it counted so far.
    pub fn stats(&self) -> &Arc<HandlerStats> {
        &self.stats
    }

    /// Stops taking messages (unsubscribes) and waits for the ones in flight to finish, their
    /// pending retries included. Messages not yet taken stay with the broker (core NATS: gone
    /// for this subscriber; a durable consumer: kept for it, and what this handler had fetched
    /// but not started is handed back at once, to another instance or the next start).
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// [`stop`](Handler::stop), waiting at most `timeout` for the messages in flight; past it
    /// they are abandoned (their futures dropped; a durable delivery left unacknowledged is
    /// delivered again after its ack wait) and [`Error::StopTimeout`](crate::Error::StopTimeout)
    /// says how many. For a handler that may never return.
    pub async fn stop_timeout(self, timeout: Duration) -> crate::error::Result<()> {
        let what = format!("handler {:?}", self.name);
        self.running.stop_timeout(&what, timeout).await
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }
}

/// What a handler takes its messages from.
pub(crate) enum Source {
    /// A plain subscription: retries in memory.
    Plain(RawSubscription),
    /// A durable consumer: acked, naked for redelivery, terminated.
    Durable(DurableSubscription),
}

/// Starts a handler on `source`.
pub(crate) fn spawn<M, F, Fut, E>(
    source: Source,
    options: HandlerOptions,
    sink: DeadLetterSink,
    inbox: Option<Arc<Inbox>>,
    (running, closing): (tokio::sync::mpsc::Sender<()>, watch::Receiver<bool>),
    handler: F,
) -> Handler
where
    M: Incoming,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let name = options.handler_name::<M>();
    let stats = Arc::new(HandlerStats::default());
    #[cfg(feature = "testing")]
    let _ = stats.faults.name.set(name.clone());
    let run = Run::new(handler, &options, &name, Arc::clone(&stats), sink, inbox);
    let ordered = options.ordered;
    // Order per key, unless ordered (one at a time) already.
    let key = options.key.clone().filter(|_| !ordered);
    let concurrency = options.effective_concurrency();
    let running = Running::spawn(move |stopped, in_flight| async move {
        let _running = running;
        let stop = (StopSignal::watch(stopped, closing), in_flight);
        let bound = if ordered {
            Bound::Ordered
        } else {
            Bound::Slots
        };
        match (source, key) {
            (Source::Plain(raw), None) => {
                let start = Run::plain_starter();
                run.serve(raw.messages, raw.stats, raw.pattern, bound, stop, start)
                    .await
            }
            (Source::Durable(raw), None) => {
                let start = Run::durable_starter(ordered);
                run.serve(raw.deliveries, raw.stats, raw.pattern, bound, stop, start)
                    .await
            }
            (Source::Plain(raw), Some(key)) => {
                let lanes = Arc::new(Lanes::new(key, concurrency));
                let start = Run::lane_starter(Arc::clone(&lanes), |m| m, Run::plain_one);
                let bound = Bound::Taken(&lanes.taken);
                run.serve(raw.messages, raw.stats, raw.pattern, bound, stop, start)
                    .await
            }
            (Source::Durable(raw), Some(key)) => {
                let lanes = Arc::new(Lanes::new(key, concurrency));
                let start = Run::lane_starter(Arc::clone(&lanes), |d| &d.message, Run::durable_one);
                let bound = Bound::Taken(&lanes.taken);
                run.serve(raw.deliveries, raw.stats, raw.pattern, bound, stop, start)
                    .await
            }
        }
    });
    Handler {
        name,
        stats,
        running,
    }
}
