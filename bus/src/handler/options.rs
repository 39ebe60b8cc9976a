//! [`HandlerOptions`]: how a handler runs.

use std::time::Duration;

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

    /// At most this many messages in the handler at once (default [`DEFAULT_CONCURRENCY`];
    /// 0 counts as 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Ordered processing: one message at a time, each finished (retries included) before the
    /// next starts. Implies a concurrency of 1.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// How failed attempts are retried (default: 3 attempts, 100 ms then 400 ms).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

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
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.durable = Some(name.into());
        self
    }

    /// The durable consumer's name, in durable mode.
    pub fn durable_name(&self) -> Option<&str> {
        self.durable.as_deref()
    }

    /// Durable mode: how long a delivery may stay unacknowledged before the broker delivers it
    /// again, e.g. after the process died (default 30 s). Keep it above the handler's longest
    /// run; a handler still working sends "in progress" only in ordered mode.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait.max(Duration::from_millis(1));
        self
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
        if !self.ordered {
            spec = spec.max_deliver(self.retry.max_attempts.max(1));
        }
        if let Some(q) = queue {
            spec = spec.queue(q);
        }
        spec
    }

    pub(super) fn effective_concurrency(&self) -> usize {
        if self.ordered {
            1
        } else {
            self.concurrency
        }
    }
}
