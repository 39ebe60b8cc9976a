//! The `opentelemetry` feature: with a `tracing-opentelemetry` layer on an OpenTelemetry SDK
//! tracer (in-memory exporter), one trace id across plugin -> agent (request) -> plugin
//! (publish) on a real nats-server, each exported span the child of the hop before it.
//!
//! Run by tests/run.sh as `cargo test -p bus-tests --features opentelemetry --test trace_otel`.

use std::time::Duration;

use bus::trace::TraceContext;
use bus_tests::server::NatsServer;
use bus_tests::trace_chain::{nats_pair, plugin_agent_plugin};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_otel_trace_across_plugin_agent_plugin() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (plugin, agent) = nats_pair(&server.url(), dir.path()).await;
    // A plain tracing span: OpenTelemetry gives it its ids, nothing is attached by hand.
    let root = tracing::info_span!("job");
    let chain = plugin_agent_plugin(&plugin, &agent, root, "otel").await;
    chain.assert_one_trace();
    assert!(chain.root.is_sampled());
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let job = span(&spans, "job");
    let request = span(&spans, "send agent.route.tracer.<agent>.task");
    let serve = span(&spans, "process agent.route.tracer.<agent>.task");
    let handle = span(
        &spans,
        "process plugin.outbound.<channel>.<instance>.trace.hop",
    );
    let trace = job.span_context.trace_id();
    for s in [request, serve, handle] {
        assert_eq!(s.span_context.trace_id(), trace, "{s:#?}");
    }
    assert_eq!(job.parent_span_id, SpanId::INVALID);
    assert_eq!(request.parent_span_id, job.span_context.span_id());
    assert_eq!(serve.parent_span_id, request.span_context.span_id());
    assert_eq!(handle.parent_span_id, serve.span_context.span_id());
    assert!(serve.parent_span_is_remote && handle.parent_span_is_remote);
    assert_eq!(format!("{:?}", serve.span_kind), "Server");
    assert_eq!(format!("{:?}", handle.span_kind), "Consumer");
    assert_eq!(format!("{:?}", request.span_kind), "Client");
    // What the bus saw is what OpenTelemetry exported.
    let ids = |cx: TraceContext| (cx.trace_id().to_be_bytes(), cx.span_id().to_be_bytes());
    assert_eq!(
        ids(chain.root),
        (trace.to_bytes(), job.span_context.span_id().to_bytes())
    );
    assert_eq!(
        ids(chain.in_serve).1,
        serve.span_context.span_id().to_bytes()
    );
    assert_eq!(
        ids(chain.in_handle).1,
        handle.span_context.span_id().to_bytes()
    );
}
