//! Trace propagation across processes: the W3C [`traceparent`](https://www.w3.org/TR/trace-context/)
//! header (`docs/design.md`, "Operations").
//!
//! # What is sent
//!
//! A publish, a request and a reply carry a [`TRACEPARENT`] header when, and only when, the
//! span current where they are sent carries a trace context ([`TraceContext::current`]); without
//! one nothing is added, so the header-free fast path of a direct publish stays header-free. A
//! message that already has a `traceparent` (set by you, or a dead letter replayed) keeps it. A
//! message queued in the outbox keeps the header it was published with, so a trace goes on
//! after an outage.
//!
//! # What is received
//!
//! A message that arrives with a valid `traceparent` runs its handler ([`Bus::handle`]) or
//! responder ([`Bus::serve`]) inside an INFO span (`handle`, resp. `serve`) whose parent is the
//! remote context, with the OpenTelemetry semantic-convention fields `otel.kind` (`consumer`,
//! resp. `server`), `otel.name`, `messaging.operation`, `messaging.destination.name` (the
//! concrete subject), `messaging.destination.template` (the type's subject template) and
//! `bus.type`. A typed [`Subscription`](crate::Subscription) hands you the message instead:
//! [`Envelope::trace_span`] makes the same span (`receive`) for you to enter. A request sent
//! inside a trace runs in an INFO `request` span (`otel.kind = "client"`), the parent of the
//! responder's span. Messages without the header get none of these spans (a span per message
//! would cost the hot path more than the rest of a local delivery).
//!
//! The spans are INFO: an `EnvFilter` above INFO for target `bus` disables them, and a trace
//! then stops at this process.
//!
//! # Where the context of a span comes from
//!
//! - With the `opentelemetry` feature and a [`tracing-opentelemetry`] layer installed, from
//!   OpenTelemetry: the context of the current span (`OpenTelemetrySpanExt::context`), and a
//!   received context becomes the span's remote parent (`set_parent`). Your own spans, the
//!   trace's root among them, are ordinary `tracing` spans; the OTel tracer gives them ids.
//! - Without it, from a span *extension* this module defines: [`TraceContext::attach`] stores a
//!   context in a span, and the current span (or its nearest ancestor) that has one is what is
//!   sent. The spans this module creates on receive get the remote trace id and a fresh span id,
//!   so what a handler publishes continues the trace. Start a trace with
//!   `TraceContext::new_root().attach(&span)`.
//!
//! Why an extension and not a span field (`info_span!("job", traceparent = %ctx)`): `tracing`
//! gives a library no way to read a field's value back, only a subscriber sees it; reading it
//! would take a layer of ours in your subscriber, one more thing to install. An extension lives
//! in the span store of `tracing-subscriber`'s `Registry`, which this module reaches through the
//! current dispatcher, so it works with any `Registry`-based subscriber (`tracing_subscriber::fmt`,
//! `registry().with(…)`), and the context rides with the span wherever `tracing` takes it (a task
//! spawned with `.instrument(span)`, say) with no layer to install. On a subscriber that is not
//! built on `Registry`, `attach` returns `false` and nothing is propagated without the
//! `opentelemetry` feature.
//!
//! # Starting a trace
//!
//! Without OpenTelemetry, attach a context to the root span of a trace; the spans `bus` makes
//! inside it continue it, and one trace runs plugin -> agent -> plugin:
//!
//! ```
//! use bus::trace::TraceContext;
//! use tracing::Instrument;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), bus::Error> {
//! # let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
//! # #[derive(serde::Serialize, serde::Deserialize, bus::Message)]
//! # #[subject("plugin.outbound.<channel>.<instance>")]
//! # pub struct Outbound { pub channel: String, pub instance: String, pub text: String }
//! let bus = bus::Bus::local().await?;
//! let job = tracing::info_span!("job");
//! TraceContext::new_root().attach(&job);
//! let msg = Outbound { channel: "slack".into(), instance: "a1".into(), text: "hi".into() };
//! msg.publish(&bus).instrument(job).await?; // carries traceparent: 00-<trace>-<span>-01
//! # Ok(()) }
//! ```
//!
//! With the feature `opentelemetry` (off by default, outside the default dependency tree) the
//! context comes from, and goes to, OpenTelemetry: every span of yours has ids from the OTel
//! tracer, and a received context becomes the span's remote parent. The set-up is
//! OpenTelemetry's own:
//!
//! ```text
//! # Cargo.toml: bus = { version = "0.1", features = ["opentelemetry"] }
//! let tracer = provider.tracer("my-service");
//! tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer)).init();
//! ```
//!
//! The repository's `tests/tests/trace.rs` (extensions, local and NATS, through an outbox) and
//! `tests/tests/trace_otel.rs` (OpenTelemetry SDK, in-memory exporter: one trace id, each span
//! the child of the one before; `tests/run.sh` runs it with `--features opentelemetry`) check
//! all of this.
//!
//! [`Bus::handle`]: crate::Bus::handle
//! [`Bus::serve`]: crate::Bus::serve
//! [`tracing-opentelemetry`]: https://docs.rs/tracing-opentelemetry

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::Span;
use tracing_subscriber::registry::LookupSpan;

use crate::envelope::Envelope;
use crate::headers::Headers;
pub use crate::headers::TRACEPARENT;
use crate::message::Message;

/// A W3C trace context: the trace id, the id of the span a message was sent from, and the
/// trace flags (bit 0: sampled).
///
/// ```
/// use bus::trace::TraceContext;
/// let cx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(cx.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert_eq!(cx.span_id(), 0x00f067aa0ba902b7);
/// assert!(cx.is_sampled());
/// assert_eq!(cx.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// let child = cx.child();
/// assert_eq!(child.trace_id(), cx.trace_id());
/// assert_ne!(child.span_id(), cx.span_id());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// A span's trace context, as this module stores it in the span's extensions.
#[derive(Debug, Clone, Copy)]
struct Carried(TraceContext);

impl TraceContext {
    /// A context from its parts; `None` when an id is zero (invalid in W3C).
    pub fn new(trace_id: u128, span_id: u64, sampled: bool) -> Option<TraceContext> {
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags: u8::from(sampled),
        })
    }

    /// The root of a new trace (random ids, sampled).
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: (u128::from(random_id()) << 64) | u128::from(random_id()),
            span_id: random_id(),
            flags: 1,
        }
    }

    /// A context for a span under this one: the same trace and flags, a new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random_id(),
            ..*self
        }
    }

    /// Reads a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not zero.
    /// A later version (not `ff`) is read by the same first four fields, as the W3C text asks.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let b = value.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = (hex(&b[3..19])? << 64) | hex(&b[19..35])?;
        let span_id = hex(&b[36..52])? as u64;
        let flags = hex(&b[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id (16 bytes, big-endian as sent).
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The id of the span this context was sent from (the receiver's parent).
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace context of the current span: with the `opentelemetry` feature, its
    /// OpenTelemetry context when it has a valid one; else the context [attached](Self::attach)
    /// to it or to its nearest ancestor. `None` outside any span, and in spans that carry none.
    ///
    /// ```
    /// use bus::trace::TraceContext;
    ///
    /// let subscriber = tracing_subscriber::registry();
    /// tracing::subscriber::with_default(subscriber, || {
    ///     assert_eq!(TraceContext::current(), None);
    ///     let span = tracing::info_span!("job");
    ///     let root = TraceContext::new_root();
    ///     assert!(root.attach(&span));
    ///     let _in = span.enter();
    ///     let inner = tracing::info_span!("step");
    ///     let _in = inner.enter();
    ///     assert_eq!(TraceContext::current(), Some(root));
    /// });
    /// ```
    pub fn current() -> Option<TraceContext> {
        #[cfg(feature = "opentelemetry")]
        if let Some(cx) = otel::current() {
            return Some(cx);
        }
        tracing::dispatcher::get_default(|dispatch| {
            let current = dispatch.current_span();
            let id = current.id()?;
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            span.scope()
                .find_map(|s| s.extensions().get::<Carried>().map(|c| c.0))
        })
    }

    /// Stores this context in `span`, so that what is sent inside it (or inside its children)
    /// carries it. Returns `false` when it cannot: the span is disabled, or the subscriber is
    /// not built on `tracing_subscriber::Registry`.
    pub fn attach(self, span: &Span) -> bool {
        span.with_subscriber(|(id, dispatch)| {
            let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
                return false;
            };
            let span = registry.span(id);
            span.map(|s| s.extensions_mut().replace(Carried(self)))
                .is_some()
        })
        .unwrap_or(false)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (trace_id, span_id, flags) = (self.trace_id, self.span_id, self.flags);
        write!(f, "00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
    }
}

/// Up to 32 lower-case hex digits as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = char::from(d)
            .to_digit(16)
            .filter(|_| !d.is_ascii_uppercase())?;
        Some((n << 4) | u128::from(v))
    })
}

/// A random, non-zero 64-bit id: a counter through SipHash keyed once per process by the OS.
fn random_id() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let id = h.finish();
        if id != 0 {
            return id;
        }
    }
}

/// Adds the current span's `traceparent` to `headers`, unless they have one or there is none.
#[inline]
pub(crate) fn inject(headers: &mut Headers) {
    // Outside any span (the usual hot path) this is one check of the current dispatcher.
    if tracing::dispatcher::get_default(|d| d.current_span().id().is_none())
        || headers.get(TRACEPARENT).is_some()
    {
        return;
    }
    if let Some(cx) = TraceContext::current() {
        headers.append(TRACEPARENT, cx.to_string());
    }
}

/// What a received message is for, which names its span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Receive {
    /// A handler's message (`handle`, consumer).
    Handle,
    /// A request to a responder (`serve`, server).
    Serve,
    /// A message of a typed subscription (`receive`, consumer).
    Subscription,
}

/// The span a received message is processed in, when it carries a valid `traceparent`: an INFO
/// span with the remote context as its parent.
#[inline]
pub(crate) fn receive_span(
    kind: Receive,
    type_name: &'static str,
    template: &'static str,
    subject: &str,
    headers: &Headers,
) -> Option<Span> {
    // Most messages carry no headers at all: no call, no search.
    if headers.is_empty() {
        return None;
    }
    traced_span(kind, type_name, template, subject, headers)
}

/// [`receive_span`] of a message with headers.
fn traced_span(
    kind: Receive,
    type_name: &'static str,
    template: &'static str,
    subject: &str,
    headers: &Headers,
) -> Option<Span> {
    let value = headers.get(TRACEPARENT)?;
    let Some(remote) = TraceContext::parse(value) else {
        tracing::debug!(
            subject,
            traceparent = value,
            "invalid traceparent header ignored"
        );
        return None;
    };
    // A span's name and its `otel.kind` must be literals: one arm per kind.
    macro_rules! span {
        ($name:literal, $kind:literal, $operation:literal) => {
            tracing::info_span!(
                $name,
                otel.kind = $kind,
                otel.name = %format_args!("{} {template}", $operation),
                messaging.operation = $operation,
                messaging.destination.name = subject,
                messaging.destination.template = template,
                bus.type = type_name,
            )
        };
    }
    let span = match kind {
        Receive::Handle => span!("handle", "consumer", "process"),
        Receive::Serve => span!("serve", "server", "process"),
        Receive::Subscription => span!("receive", "consumer", "receive"),
    };
    // `remote` is the parent: in OpenTelemetry (with the feature), and as the extension (a
    // child context: same trace, a span id of its own).
    #[cfg(feature = "opentelemetry")]
    otel::set_parent(&span, remote);
    remote.child().attach(&span);
    Some(span)
}

/// The span of a request of type `template` to `subject`: an INFO client span when the request
/// is sent inside a trace, else the TRACE span it always had.
pub(crate) fn request_span(template: &'static str, subject: &str) -> Span {
    match TraceContext::current() {
        Some(cx) => {
            let span = tracing::info_span!(
                "request",
                otel.kind = "client",
                otel.name = %format_args!("send {template}"),
                messaging.operation = "send",
                messaging.destination.name = subject,
                messaging.destination.template = template,
            );
            cx.child().attach(&span);
            span
        }
        None => tracing::trace_span!("request", subject),
    }
}

impl<T> Envelope<T> {
    /// The trace context this message was sent with (its `traceparent` header), if any.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.headers()
            .get(TRACEPARENT)
            .and_then(TraceContext::parse)
    }

    /// A span to process this message in, continuing the sender's trace: an INFO `receive`
    /// span whose parent is the remote context (see [`crate::trace`]); [`Span::none`] when the
    /// message carries no valid `traceparent`. Handlers and responders get theirs without asking.
    ///
    /// ```no_run
    /// # use bus::{Bus, Message};
    /// # use futures::StreamExt;
    /// # #[derive(serde::Serialize, serde::Deserialize, Message)]
    /// # #[subject("plugin.inbound.<channel>")]
    /// # struct Inbound { channel: String, text: String }
    /// # async fn run(bus: &Bus) -> Result<(), bus::Error> {
    /// let mut sub = Inbound::subscribe(bus, Inbound::filter()).await?;
    /// while let Some(Ok(env)) = sub.next().await {
    ///     let _in = env.trace_span().entered();
    ///     tracing::info!(text = %env.text, "got");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn trace_span(&self) -> Span
    where
        T: Message,
    {
        receive_span(
            Receive::Subscription,
            T::TYPE_NAME,
            T::SUBJECT,
            self.subject(),
            self.headers(),
        )
        .unwrap_or_else(Span::none)
    }
}

/// The OpenTelemetry side, through `tracing-opentelemetry`.
#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// The OpenTelemetry context of the current span, when it has a valid one.
    pub(super) fn current() -> Option<TraceContext> {
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// Makes `remote` the OpenTelemetry parent of `span` (a no-op without the OTel layer).
    pub(super) fn set_parent(span: &tracing::Span, remote: TraceContext) {
        let sc = SpanContext::new(
            TraceId::from_bytes(remote.trace_id.to_be_bytes()),
            SpanId::from_bytes(remote.span_id.to_be_bytes()),
            TraceFlags::new(remote.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}
