//! [`HandlerOptions`]: how a handler runs.

use std::time::Duration;

use super::lanes::KeyOf;
use crate::durable::DurableSpec;
use crate::retry::RetryPolicy;

/// How a [`Handler`](crate::Handler) runs: its name, concurrency, order and retry policy.
///
/// ```
/// use bus::{HandlerOptions, RetryPolicy};
/// let options = HandlerOptions::named("slack-sender")
///     .concurrency(8)
///     .retry(RetryPolicy::default().max_attempts(5));
/// assert_eq!(options.name(), Some("slack-sender"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerOptions {
    pub(super) name: Option<String>,
    pub(super) concurrency: usize,
    pub(super) ordered: bool,
    pub(super) retry: RetryPolicy,
    pub(super) durable: Option<String>,
    pub(super) ack_wait: Duration,
    // Effects once (the inbox).
    pub(super) dedupe: Option<Duration>,
    pub(super) dedupe_shared: bool,
    /// Order per key (see [`HandlerOptions::ordered_by_subject`]).
    pub(super) key: Option<KeyOf>,
}

/// Messages handled at once by default: enough to overlap I/O-bound handlers, few enough that
/// a burst does not start thousands of tasks.
pub const DEFAULT_CONCURRENCY: usize = 64;

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            name: None,
            concurrency: DEFAULT_CONCURRENCY,
            ordered: false,
            retry: RetryPolicy::default(),
            durable: None,
            ack_wait: crate::durable::DEFAULT_ACK_WAIT,
            dedupe: None,
            dedupe_shared: false,
            key: None,
        }
    }
}

impl HandlerOptions {
    /// Options with this handler name (what dead letters say they died in; default: the type).
    pub fn named(name: impl Into<String>) -> Self {
        HandlerOptions {
            name: Some(name.into()),
            ..HandlerOptions::default()
        }
    }

    /// The handler's name, if one was set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    setters! {
        /// At most this many messages in the handler at once (default [`DEFAULT_CONCURRENCY`];
        /// 0 counts as 1).
        fn concurrency(n: usize) => concurrency = n.max(1);
        /// Ordered processing: one message at a time, each finished (retries included) before the
        /// next starts. Implies a concurrency of 1.
        fn ordered(ordered: bool) => ordered = ordered;
        /// How failed attempts are retried (default: 3 attempts, 100 ms then 400 ms).
        fn retry(retry: RetryPolicy) => retry = retry;

        /// Durable mode: the handler takes its messages from the durable consumer `name` (see
        /// [`durable`](crate::durable)), so messages published while it was down are handled when
        /// it comes back, and with a queue group several instances share one consumer.
        ///
        /// A message is acknowledged after `Ok`; after `Err` (or a panic) it is refused with the
        /// retry policy's backoff and the broker delivers it again; the delivery count is the
        /// attempt count, so after `max_attempts` deliveries it is terminated and dead-lettered
        /// (`max_deliver` is `max_attempts`). A payload that does not decode is terminated and
        /// dead-lettered at once. In [ordered](HandlerOptions::ordered) mode the retries are made
        /// in place (telling the broker the message is in progress), so nothing overtakes it.
        ///
        /// ```
        /// use bus::HandlerOptions;
        /// let options = HandlerOptions::named("slack-sender").durable("slack-sender");
        /// assert_eq!(options.durable_name(), Some("slack-sender"));
        /// ```
        fn durable(name: impl Into<String>) => durable = Some(name.into());

        /// Durable mode: how long a delivery may stay unacknowledged before the broker delivers it
        /// again, e.g. after the process died (default 30 s). Keep it above the handler's longest
        /// run; a handler still working sends "in progress" only in ordered mode.
        fn ack_wait(wait: Duration) => ack_wait = wait.max(Duration::from_millis(1));

        // Effects once: the inbox.

        /// Deduplicates by msg id: a message whose id this handler already finished within `window`
        /// is acknowledged (durable) or dropped (plain) without running the handler again, whether
        /// it comes back as a redelivery, an outbox resend or after a restart of the process (with
        /// an outbox file), and counted in [`HandlerStats::duplicates_skipped`]. Messages without a
        /// msg id are handled as without `dedupe` and counted in
        /// [`HandlerStats::without_msg_id`]. Inside the handler, [`Envelope::publish`] queues
        /// messages in the same transaction as the completion (consume and produce as one step).
        ///
        /// Completions live in the outbox file's `inbox` table when the bus has an outbox (every
        /// NATS bus by default), pruned past `window`; otherwise in memory, at most 100,000 per
        /// handler, forgotten at a restart. The handler's name is the key: two handlers with one
        /// name share completions. See the [`inbox`](crate::handler#effects-once-the-inbox) notes.
        ///
        /// ```
        /// use std::time::Duration;
        /// use bus::HandlerOptions;
        /// let options = HandlerOptions::named("billing").dedupe(Duration::from_secs(24 * 3600));
        /// assert_eq!(options.dedupe_window(), Some(Duration::from_secs(24 * 3600)));
        /// ```
        ///
        /// [`HandlerStats::duplicates_skipped`]: crate::HandlerStats::duplicates_skipped
        /// [`HandlerStats::without_msg_id`]: crate::HandlerStats::without_msg_id
        /// [`Envelope::publish`]: crate::Envelope::publish
        fn dedupe(window: Duration) => dedupe = Some(window);
    }

    /// The durable consumer's name, in durable mode.
    pub fn durable_name(&self) -> Option<&str> {
        self.durable.as_deref()
    }

    /// [`dedupe`](HandlerOptions::dedupe) shared by every instance of the handler (a queue
    /// group spread over processes), on NATS: each message is claimed in a JetStream key-value
    /// bucket `bus_inbox_<name>` (entries kept `window`) before it runs, so two instances never
    /// both run one message; the local inbox (outbox file or memory) is kept too. A claim lasts
    /// the [ack wait](HandlerOptions::ack_wait): an instance that died mid-handler leaves a claim
    /// that another instance takes over when the message reaches it after that; a copy that
    /// reaches another instance while the claim is live waits there until it is done (then
    /// skipped) or expired. Refused on a broker without JetStream key-value.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bus::HandlerOptions;
    /// let options = HandlerOptions::named("billing")
    ///     .durable("billing")
    ///     .dedupe_shared(Duration::from_secs(24 * 3600));
    /// assert!(options.is_dedupe_shared());
    /// ```
    pub fn dedupe_shared(mut self, window: Duration) -> Self {
        self.dedupe = Some(window);
        self.dedupe_shared = true;
        self
    }

    /// Whether [`dedupe_shared`](HandlerOptions::dedupe_shared) is on.
    pub fn is_dedupe_shared(&self) -> bool {
        self.dedupe_shared && self.dedupe.is_some()
    }

    /// The ack wait of a durable handler (how long a shared inbox claim lasts).
    #[cfg(feature = "nats")]
    pub(crate) fn ack_wait_value(&self) -> Duration {
        self.ack_wait
    }

    /// The dedupe window, if [`dedupe`](HandlerOptions::dedupe) is on.
    pub fn dedupe_window(&self) -> Option<Duration> {
        self.dedupe
    }

    /// The name of a handler of `M` with these options: the one set, or the type's.
    pub(crate) fn handler_name<M: crate::incoming::Incoming>(&self) -> String {
        self.name.clone().unwrap_or_else(|| M::TYPE_NAME.to_owned())
    }

    /// The durable consumer this handler runs on: `durable` on `pattern`, max_deliver the
    /// retry policy's attempts (unlimited in ordered mode, which retries in place), a prefetch
    /// that keeps every slot busy without holding many messages while their ack wait runs.
    pub(crate) fn durable_spec(
        &self,
        durable: &str,
        pattern: String,
        queue: Option<&str>,
    ) -> DurableSpec {
        let mut spec = DurableSpec::new(durable, pattern)
            .ack_wait(self.ack_wait)
            .prefetch((self.effective_concurrency() * 4).clamp(8, 512));
        if !self.retries_in_place() {
            spec = spec.max_deliver(self.retry.max_attempts.max(1));
        }
        if let Some(q) = queue {
            spec = spec.queue(q);
        }
        spec
    }

    /// Ordered, or ordered per key: a failed attempt is retried in place, so that nothing of
    /// its order overtakes it.
    pub(super) fn retries_in_place(&self) -> bool {
        self.ordered || self.key.is_some()
    }

    pub(super) fn effective_concurrency(&self) -> usize {
        if self.ordered {
            1
        } else {
            self.concurrency
        }
    }
}

// Order per key.
impl HandlerOptions {
    setters! {
        /// Order per subject: messages on the same concrete subject (e.g. one
        /// `plugin.outbound.<channel>.<instance>`) are handled strictly in the order they arrive,
        /// each finished, retries included, before the next of its subject starts; messages on
        /// different subjects run concurrently, up to the [`concurrency`](HandlerOptions::concurrency).
        ///
        /// A failed attempt is retried in place after its backoff (its subject's later messages
        /// wait; others go on, the failed one holding no slot while it waits). On a durable
        /// consumer the broker is told the message is in progress meanwhile, so it is not
        /// delivered again and nothing of its subject overtakes it; `max_deliver` is then unlimited,
        /// as in [ordered](HandlerOptions::ordered) mode, and the retry policy's `max_attempts`
        /// still dead-letters it. Messages waiting behind a busy subject are taken from the
        /// subscription (at most four per slot, up to 512) and wait in memory; on a durable
        /// consumer each waits within its ack wait, so keep [`ack_wait`](HandlerOptions::ack_wait)
        /// above what a subject's backlog takes. [`Handler::stop`](crate::Handler::stop) handles
        /// the messages already waiting in a lane before it returns. Keys are 64-bit hashes: two
        /// subjects with the same hash share a lane (in order, only less parallel).
        /// [`ordered(true)`](HandlerOptions::ordered) wins over this (one message at a time).
        ///
        /// ```
        /// use bus::HandlerOptions;
        /// let options = HandlerOptions::named("sender").concurrency(32).ordered_by_subject();
        /// # let _ = options;
        /// ```
        fn ordered_by_subject() => key = Some(KeyOf::Subject);
    }

    /// Order per key: as [`ordered_by_subject`](HandlerOptions::ordered_by_subject), with the
    /// key `key` computes from the message (decoded once for it, before the first attempt).
    /// Messages with equal keys are handled in order, others concurrently. `M` must be the
    /// type the handler handles: starting a handler of another type with these options fails
    /// with [`Error::Config`](crate::Error::Config). A payload that does not decode is keyed by
    /// its subject (its attempt dead-letters it).
    ///
    /// ```
    /// # use bus::Message;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
    /// # #[subject("plugin.outbound.<channel>.<instance>")]
    /// # pub struct Outbound { pub channel: String, pub instance: String, pub conversation: u64 }
    /// use bus::HandlerOptions;
    /// // In order per conversation, whatever instance it goes through.
    /// let options = HandlerOptions::named("sender").ordered_by(|m: &Outbound| m.conversation);
    /// # let _ = options;
    /// ```
    pub fn ordered_by<M, K>(mut self, key: impl Fn(&M) -> K + Send + Sync + 'static) -> Self
    where
        M: std::any::Any,
        K: std::hash::Hash,
    {
        self.key = Some(KeyOf::typed(key));
        self
    }

    /// `Err` if [`ordered_by`](HandlerOptions::ordered_by) was given a key of another type
    /// than `M`, the handler's.
    pub(crate) fn check_key<M: std::any::Any>(&self) -> crate::error::Result<()> {
        let check = |key: &KeyOf| key.check::<M>().map_err(crate::error::Error::Config);
        self.key.as_ref().map_or(Ok(()), check)
    }
}
