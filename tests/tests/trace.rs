//! Trace propagation without OpenTelemetry (span extensions, `bus::trace`), on the local bus and
//! on a real nats-server: a `traceparent` only from inside a span that carries a context, and
//! one trace id across plugin -> agent (request) -> plugin (publish), through the outbox too.

use std::sync::Once;
use std::time::Duration;

use bus::trace::{TraceContext, TRACEPARENT};
use bus::Bus;
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::NatsServer;
use bus_tests::trace_chain::{nats_pair, plugin_agent_plugin};
use futures::StreamExt;
use tracing::Instrument;

const GUARD: Duration = Duration::from_secs(20);

/// A `Registry` as the global subscriber: where span extensions live.
fn subscriber() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("a global subscriber is already set");
    });
}

/// A root span with a new trace context attached.
fn traced_root() -> (tracing::Span, TraceContext) {
    let span = tracing::info_span!("job");
    let cx = TraceContext::new_root();
    assert!(cx.attach(&span), "the subscriber is a Registry");
    (span, cx)
}

/// Publishes outside any span, inside an untraced span and inside a traced one; only the last
/// carries a header, and it names the trace and the span.
async fn header_only_when_traced(bus: &Bus, channel: &str) {
    let mut raw = bus
        .broker()
        .subscribe(&format!("plugin.outbound.{channel}.*"), None)
        .await
        .unwrap();
    bus.flush().await.unwrap();
    outbound(channel, "none", "x").publish(bus).await.unwrap();
    outbound(channel, "plain", "x")
        .publish(bus)
        .instrument(tracing::info_span!("untraced"))
        .await
        .unwrap();
    let (root, cx) = traced_root();
    outbound(channel, "traced", "x")
        .publish(bus)
        .instrument(root)
        .await
        .unwrap();
    bus.flush().await.unwrap();
    for instance in ["none", "plain", "traced"] {
        let msg = tokio::time::timeout(GUARD, raw.messages.next())
            .await
            .expect("nothing received")
            .unwrap();
        assert_eq!(msg.subject, format!("plugin.outbound.{channel}.{instance}"));
        if instance == "traced" {
            let header = msg.headers.get(TRACEPARENT).expect("no traceparent");
            assert_eq!(TraceContext::parse(header), Some(cx));
            assert_eq!(msg.headers.len(), 1, "{:?}", msg.headers);
        } else {
            assert!(msg.headers.is_empty(), "{instance}: {:?}", msg.headers);
        }
    }
}

#[tokio::test]
async fn local_sends_a_traceparent_only_inside_a_traced_span() {
    subscriber();
    let bus = Bus::local().await.unwrap();
    header_only_when_traced(&bus, "trlocal").await;
}

#[tokio::test]
async fn nats_sends_a_traceparent_only_inside_a_traced_span() {
    subscriber();
    let server = NatsServer::start();
    let bus = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    header_only_when_traced(&bus, "trnats").await;
}

#[tokio::test]
async fn local_one_trace_across_plugin_agent_plugin() {
    subscriber();
    let bus = Bus::local().await.unwrap();
    let (root, cx) = traced_root();
    let chain = plugin_agent_plugin(&bus, &bus, root, "trlocal2").await;
    assert_eq!(chain.root, cx);
    chain.assert_one_trace();
}

#[tokio::test]
async fn nats_one_trace_across_plugin_agent_plugin_through_the_outbox() {
    subscriber();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (plugin, agent) = nats_pair(&server.url(), dir.path()).await;
    let (root, cx) = traced_root();
    let chain = plugin_agent_plugin(&plugin, &agent, root, "trnats2").await;
    assert_eq!(chain.root, cx);
    chain.assert_one_trace();
}

#[tokio::test]
async fn a_subscription_continues_the_trace_in_its_receive_span() {
    subscriber();
    let bus = Bus::local().await.unwrap();
    let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("trsub"))
        .await
        .unwrap();
    let (root, cx) = traced_root();
    outbound("trsub", "a", "x")
        .publish(&bus)
        .instrument(root)
        .await
        .unwrap();
    let env = sub.next().await.unwrap().unwrap();
    assert_eq!(env.trace_context(), Some(cx));
    let span = env.trace_span();
    assert!(!span.is_none());
    let inside = span.in_scope(TraceContext::current).unwrap();
    assert_eq!(inside.trace_id(), cx.trace_id());
    assert_ne!(inside.span_id(), cx.span_id());
    // An invalid header makes no span and no error.
    let mut headers = bus::Headers::new();
    headers.insert(TRACEPARENT, "00-not-a-trace");
    bus.publish_with_headers(&outbound("trsub", "b", "x"), headers)
        .await
        .unwrap();
    let env = sub.next().await.unwrap().unwrap();
    assert_eq!(env.trace_context(), None);
    assert!(env.trace_span().is_none());
}
