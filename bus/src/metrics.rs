//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (`docs/design.md`, "Operations").
//!
//! `bus` records; the application picks the exporter (Prometheus, StatsD, OpenTelemetry, …) by
//! installing a `metrics` recorder, and nothing is recorded until it does. Every name has the
//! `bus_` prefix; labels stay low-cardinality: a message's type name and its subject
//! *template* (`plugin.outbound.<channel>.<instance>`), never a concrete subject.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `bus_published_total` | counter | `type`, `subject` | typed publishes accepted (committed to the outbox, or handed to the broker without one); raw ones count as `type="raw"`, `subject="raw"` |
//! | `bus_confirmed_total` | counter | | outbox messages the broker confirmed |
//! | `bus_dead_lettered_total` | counter | `origin` | messages given up on: `outbox`, or `handler:<name>` |
//! | `bus_outbox_depth` | gauge | `outbox` (the file) | messages queued, not yet confirmed |
//! | `bus_outbox_oldest_age_seconds` | gauge | `outbox` | age of the oldest of them (0 when empty) |
//! | `bus_scheduled_total` | counter | | messages published for later (`publish_at`, `publish_after`), counted when accepted (also in `bus_published_total`) |
//! | `bus_outbox_scheduled` | gauge | `outbox` | messages published for later waiting in the outbox file, not due yet (not in `bus_outbox_depth` until due) |
//! | `bus_delivered_total` | counter | `type`, `subject` | messages received by a typed subscription, handler or responder (each delivery, undecodable ones included) |
//! | `bus_decode_errors_total` | counter | `type`, `subject` | received payloads that did not decode as the type |
//! | `bus_slow_consumer_drops_total` | counter | `type`, `subject` | messages the broker dropped because a subscription or handler fell behind |
//! | `bus_handler_attempts_total` | counter | `handler`, `type` | runs of a handler on a message (retries included) |
//! | `bus_handler_failures_total` | counter | `handler`, `type` | runs that returned `Err` or panicked |
//! | `bus_handler_duplicates_total` | counter | `handler`, `type` | messages a deduplicating handler skipped (finished within its window, or a copy in progress) |
//! | `bus_handler_without_msg_id_total` | counter | `handler`, `type` | messages a deduplicating handler ran without dedupe: they carry no msg id |
//! | `bus_request_duration_seconds` | histogram | `type`, `subject`, `outcome` | request round trips; `outcome` is `ok`, `timeout`, `remote_error` or `error` |
//!
//! # When a recorder is installed
//!
//! Install it before building the [`Bus`](crate::Bus): a bus resolves its metric handles once
//! (per message type on the first publish, per subscription, handler and responder when it
//! starts) and keeps them, so that a message costs an atomic add and no lookup. Handles resolved
//! before a recorder existed stay no-ops. The outbox gauges are refreshed every
//! [`OUTBOX_GAUGE_INTERVAL`] and by every [`Bus::health`](crate::Bus::health) call.
//!
//! Without a recorder every handle is a no-op: the hot paths pay a branch (callgrind,
//! `bus-bench`'s `local_pubsub_typed`, bus side: +39 instructions per message on about 2,400,
//! +1.6 %). The `metrics` cargo feature (default) can be turned off to drop the dependency
//! altogether; these functions then compile to nothing.
//!
//! # Exporting them
//!
//! `cargo run --example metrics_prometheus` prints them in the Prometheus text format
//! (`-- --serve 127.0.0.1:9898` serves them on `/metrics`), with `metrics-exporter-prometheus`
//! without its default features (no hyper, no TLS):
//!
//! ```text
//! bus_published_total{type="Outbound",subject="plugin.outbound.<channel>.<instance>"} 3
//! bus_handler_attempts_total{handler="slack-sender",type="Outbound"} 4
//! bus_handler_failures_total{handler="slack-sender",type="Outbound"} 2
//! bus_dead_lettered_total{origin="handler:slack-sender"} 1
//! bus_request_duration_seconds_count{type="Delegate",subject="agent.route.<agent>",outcome="ok"} 2
//! ```
//!
//! The repository's `tests/tests/metrics.rs` reads every metric back with `metrics-util`'s
//! `DebuggingRecorder`, exact counts on the local bus and on nats-server.

#[cfg(feature = "metrics")]
pub(crate) use imp::*;
#[cfg(not(feature = "metrics"))]
pub(crate) use noop::*;

/// How often a bus with an outbox refreshes the `bus_outbox_depth` and
/// `bus_outbox_oldest_age_seconds` gauges.
pub const OUTBOX_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The `outcome` labels of a finished request.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
const OUTCOMES: [&str; 4] = ["ok", "timeout", "remote_error", "error"];

/// The `outcome` of a finished request, as its index in [`OUTCOMES`].
pub(crate) fn request_outcome<T>(result: &crate::error::Result<T>) -> usize {
    match result {
        Ok(_) => 0,
        Err(crate::error::Error::Timeout { .. }) => 1,
        Err(crate::error::Error::Remote { .. }) => 2,
        Err(_) => 3,
    }
}

/// Methods that count one event: `name => field` adds 1 to the counter `field` (without the
/// `metrics` feature, `name` does nothing).
macro_rules! count_one {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub(crate) fn $name(&self) {
            #[cfg(feature = "metrics")]
            self.$field.increment(1);
        }
    )*};
}

#[cfg(feature = "metrics")]
mod imp {
    use std::any::TypeId;
    use std::sync::OnceLock;
    use std::time::Duration;

    #[cfg(feature = "outbox")]
    use ::metrics::gauge;
    use ::metrics::{counter, histogram, Counter, Histogram, Unit};

    use crate::message::Message;

    /// Message types whose handles a bus keeps; a bus publishing more types than this resolves
    /// the handles of the others on each publish (correct, only slower).
    const TYPE_SLOTS: usize = 64;

    /// The counters' and gauges' names, units and HELP texts.
    #[rustfmt::skip]
    const DESCRIBED: [(&str, Unit, &str); 12] = [
        ("bus_published_total", Unit::Count, "Publishes accepted by the bus (committed to the outbox, or handed to the broker)"),
        ("bus_confirmed_total", Unit::Count, "Outbox messages the broker confirmed"),
        ("bus_dead_lettered_total", Unit::Count, "Messages given up on, by origin (outbox, handler:<name>)"),
        ("bus_outbox_depth", Unit::Count, "Messages queued in the outbox, not yet confirmed"),
        ("bus_outbox_oldest_age_seconds", Unit::Seconds, "Age of the oldest message queued in the outbox"),
        ("bus_scheduled_total", Unit::Count, "Messages published for later (publish_at, publish_after)"),
        ("bus_outbox_scheduled", Unit::Count, "Messages published for later waiting in the outbox, not due yet"),
        ("bus_delivered_total", Unit::Count, "Messages received by typed subscriptions, handlers and responders"),
        ("bus_decode_errors_total", Unit::Count, "Received payloads that did not decode as their type"),
        ("bus_slow_consumer_drops_total", Unit::Count, "Messages the broker dropped because a subscriber fell behind"),
        ("bus_handler_attempts_total", Unit::Count, "Handler runs on a message, retries included"),
        ("bus_handler_failures_total", Unit::Count, "Handler runs that returned Err or panicked"),
    ];

    /// Names every metric once for the recorder (its HELP text), when a bus is made.
    pub(crate) fn describe() {
        for (name, unit, help) in DESCRIBED {
            if name.ends_with("_total") {
                ::metrics::describe_counter!(name, unit, help);
            } else {
                ::metrics::describe_gauge!(name, unit, help);
            }
        }
        ::metrics::describe_histogram!(
            "bus_request_duration_seconds",
            Unit::Seconds,
            "Request round trips, by outcome"
        );
    }

    /// What one bus keeps: the `bus_published_total` handle of each message type it published.
    ///
    /// A fixed table of write-once slots, scanned from the start: the first publish of a type
    /// fills a free slot, every later one reads it with plain loads (no lock, no shared write,
    /// so concurrent publishers do not contend on it).
    pub(crate) struct BusMetrics {
        published: [OnceLock<(TypeId, Counter)>; TYPE_SLOTS],
        raw_published: OnceLock<Counter>,
        /// The `bus_request_duration_seconds` handles of each request type, one per outcome.
        requests: [OnceLock<(TypeId, [Histogram; 4])>; TYPE_SLOTS],
    }

    impl BusMetrics {
        pub(crate) fn new() -> BusMetrics {
            describe();
            BusMetrics {
                published: std::array::from_fn(|_| OnceLock::new()),
                raw_published: OnceLock::new(),
                requests: std::array::from_fn(|_| OnceLock::new()),
            }
        }

        /// One typed message of type `M` published.
        #[inline]
        pub(crate) fn published<M: Message>(&self) {
            match typed::<M, _>(&self.published, published_counter::<M>) {
                Some(counter) => counter.increment(1),
                None => published_counter::<M>().increment(1),
            }
        }

        /// A request of type `M` finished after `elapsed` with the outcome at `outcome` in
        /// `OUTCOMES` (from [`request_outcome`](super::request_outcome)).
        #[inline]
        pub(crate) fn request<M: Message>(&self, elapsed: Duration, outcome: usize) {
            let seconds = elapsed.as_secs_f64();
            match typed::<M, _>(&self.requests, request_histograms::<M>) {
                Some(histograms) => histograms[outcome].record(seconds),
                None => request_histograms::<M>()[outcome].record(seconds),
            }
        }

        /// One message published for later.
        #[inline]
        pub(crate) fn scheduled(&self) {
            counter!("bus_scheduled_total").increment(1);
        }

        /// One raw message published ([`Bus::publish_raw`](crate::Bus::publish_raw)).
        pub(crate) fn published_raw(&self) {
            self.raw_published
                .get_or_init(
                    || counter!("bus_published_total", "type" => "raw", "subject" => "raw"),
                )
                .increment(1);
        }
    }

    /// `M`'s entry in `slots`: the first free slot is filled for it; `None` once every slot
    /// holds another type.
    #[inline]
    fn typed<M: 'static, T>(
        slots: &[OnceLock<(TypeId, T)>; TYPE_SLOTS],
        make: impl Fn() -> T,
    ) -> Option<&T> {
        let id = TypeId::of::<M>();
        slots.iter().find_map(|slot| {
            let (slot_id, value) = slot.get_or_init(|| (id, make()));
            (*slot_id == id).then_some(value)
        })
    }

    fn published_counter<M: Message>() -> Counter {
        counter!("bus_published_total", "type" => M::TYPE_NAME, "subject" => M::SUBJECT)
    }

    fn request_histograms<M: Message>() -> [Histogram; 4] {
        super::OUTCOMES.map(|outcome| {
            histogram!(
                "bus_request_duration_seconds",
                "type" => M::TYPE_NAME,
                "subject" => M::SUBJECT,
                "outcome" => outcome
            )
        })
    }

    /// The handles of one typed subscription, handler or responder, resolved when it starts.
    #[derive(Debug, Clone)]
    pub(crate) struct Receive {
        delivered: Counter,
        decode_errors: Counter,
        drops: Counter,
    }

    impl Receive {
        pub(crate) fn of<M: crate::incoming::Incoming>() -> Receive {
            let labels = [("type", M::TYPE_NAME), ("subject", M::SUBJECT)];
            Receive {
                delivered: counter!("bus_delivered_total", &labels),
                decode_errors: counter!("bus_decode_errors_total", &labels),
                drops: counter!("bus_slow_consumer_drops_total", &labels),
            }
        }

        count_one! {
            delivered => delivered;
            decode_error => decode_errors;
        }

        #[inline]
        pub(crate) fn dropped(&self, n: u64) {
            self.drops.increment(n);
        }
    }

    /// The handles of one handler, resolved when it starts.
    #[derive(Debug)]
    pub(crate) struct HandlerMetrics {
        pub(crate) receive: Receive,
        attempts: Counter,
        failures: Counter,
        dead_lettered: Counter,
        duplicates: Counter,
        without_msg_id: Counter,
    }

    impl HandlerMetrics {
        /// `origin` is the dead letters' `handler:<name>`.
        pub(crate) fn of<M: crate::incoming::Incoming>(name: &str, origin: &str) -> HandlerMetrics {
            let labels = [
                ("handler", name.to_owned()),
                ("type", M::TYPE_NAME.to_owned()),
            ];
            HandlerMetrics {
                receive: Receive::of::<M>(),
                attempts: counter!("bus_handler_attempts_total", &labels),
                failures: counter!("bus_handler_failures_total", &labels),
                dead_lettered: counter!("bus_dead_lettered_total", "origin" => origin.to_owned()),
                duplicates: counter!("bus_handler_duplicates_total", &labels),
                without_msg_id: counter!("bus_handler_without_msg_id_total", &labels),
            }
        }

        count_one! {
            attempt => attempts;
            failure => failures;
            dead_lettered => dead_lettered;
            /// A deduplicating handler skipped a duplicate.
            duplicate => duplicates;
            /// A deduplicating handler ran a message without a msg id.
            without_msg_id => without_msg_id;
        }
    }

    /// `n` outbox messages confirmed by the broker (once per batch).
    #[cfg(feature = "outbox")]
    #[inline]
    pub(crate) fn confirmed(n: usize) {
        counter!("bus_confirmed_total").increment(n as u64);
    }

    /// One outbox message dead-lettered.
    #[cfg(feature = "outbox")]
    pub(crate) fn outbox_dead_lettered() {
        counter!("bus_dead_lettered_total", "origin" => "outbox").increment(1);
    }

    /// Sets the outbox gauges of the file `outbox`.
    #[cfg(feature = "outbox")]
    pub(crate) fn outbox_gauges(
        outbox: &str,
        depth: u64,
        oldest_age: Option<Duration>,
        scheduled: u64,
    ) {
        let labels = [("outbox", outbox.to_owned())];
        gauge!("bus_outbox_depth", &labels).set(depth as f64);
        gauge!("bus_outbox_scheduled", &labels).set(scheduled as f64);
        gauge!("bus_outbox_oldest_age_seconds", &labels)
            .set(oldest_age.map_or(0.0, |a| a.as_secs_f64()));
    }
}

/// The same functions, doing nothing: the `metrics` feature is off.
#[cfg(not(feature = "metrics"))]
mod noop {
    use std::time::Duration;

    use crate::message::Message;

    pub(crate) struct BusMetrics;

    impl BusMetrics {
        pub(crate) fn new() -> BusMetrics {
            BusMetrics
        }
        #[inline]
        pub(crate) fn published<M: Message>(&self) {}
        #[inline]
        pub(crate) fn published_raw(&self) {}
        #[inline]
        pub(crate) fn scheduled(&self) {}
        #[inline]
        pub(crate) fn request<M: Message>(&self, _elapsed: Duration, _outcome: usize) {}
    }

    #[derive(Debug, Clone)]
    pub(crate) struct Receive;

    impl Receive {
        // The same signature as with metrics on, where `M` names the series.
        #[allow(clippy::extra_unused_type_parameters)]
        pub(crate) fn of<M: crate::incoming::Incoming>() -> Receive {
            Receive
        }
        count_one! {
            delivered => delivered;
            decode_error => decode_errors;
        }
        #[inline]
        pub(crate) fn dropped(&self, _n: u64) {}
    }

    #[derive(Debug)]
    pub(crate) struct HandlerMetrics {
        pub(crate) receive: Receive,
    }

    impl HandlerMetrics {
        #[allow(clippy::extra_unused_type_parameters)]
        pub(crate) fn of<M: crate::incoming::Incoming>(_: &str, _: &str) -> HandlerMetrics {
            HandlerMetrics { receive: Receive }
        }
        count_one! {
            attempt => attempts;
            failure => failures;
            dead_lettered => dead_lettered;
            duplicate => duplicates;
            without_msg_id => without_msg_id;
        }
    }

    #[cfg(feature = "outbox")]
    #[inline]
    pub(crate) fn confirmed(_n: usize) {}

    #[cfg(feature = "outbox")]
    pub(crate) fn outbox_dead_lettered() {}

    #[cfg(feature = "outbox")]
    pub(crate) fn outbox_gauges(_: &str, _: u64, _: Option<Duration>, _: u64) {}
}
