//! The trace chain of `docs/design.md`, "Operations", shared by `tests/trace.rs` (span extensions) and
//! `tests/trace_otel.rs` (OpenTelemetry): a plugin requests an agent, the agent publishes while
//! it answers, a plugin's handler receives that publish. Each hop records the trace context it
//! saw, so a test can check that one trace id runs through all of them.

use std::time::Duration;

use bus::trace::TraceContext;
use bus::{Bus, Message};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

const GUARD: Duration = Duration::from_secs(20);

/// The agent's task (plugin -> agent, a request).
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.tracer.<agent>.task")]
#[reply(bool)]
pub struct TraceTask {
    /// The agent placeholder.
    pub agent: String,
    /// Payload only.
    pub task: String,
}

/// What the agent publishes while it answers (agent -> plugin).
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>.trace.hop")]
pub struct TraceOut {
    /// The channel placeholder.
    pub channel: String,
    /// The instance placeholder.
    pub instance: String,
    /// Payload only.
    pub text: String,
}

/// The contexts each hop saw.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Current where the plugin sent its request (the root span's).
    pub root: TraceContext,
    /// The request's `traceparent`, as the agent received it.
    pub request_header: TraceContext,
    /// Current inside the agent's responder.
    pub in_serve: TraceContext,
    /// The publish's `traceparent`, as the plugin's handler received it.
    pub publish_header: TraceContext,
    /// Current inside the plugin's handler.
    pub in_handle: TraceContext,
    /// The reply's `traceparent`, as the plugin received it.
    pub reply_header: Option<TraceContext>,
}

/// A plugin's bus (no outbox) and an agent's (publishing through an outbox in `dir`, so the
/// header travels stored with the message) on the server at `url`.
pub async fn nats_pair(url: &str, dir: &std::path::Path) -> (Bus, Bus) {
    let plugin = Bus::builder()
        .nats([url])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let agent = Bus::builder()
        .nats([url])
        .outbox_path(dir.join("outbox.sqlite3"))
        .connect()
        .await
        .unwrap();
    (plugin, agent)
}

/// Runs the chain inside `root` (a span that carries a trace context, or gets one from
/// OpenTelemetry); `tag` keeps concurrent runs apart (the agent and channel names).
pub async fn plugin_agent_plugin(
    plugin: &Bus,
    agent: &Bus,
    root: tracing::Span,
    tag: &str,
) -> Chain {
    let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
    let channel = tag.to_owned();
    let agent_bus = agent.clone();
    let responder = TraceTask::serve(agent, TraceTask::filter().agent(tag), move |req| {
        let served_tx = served_tx.clone();
        let agent_bus = agent_bus.clone();
        let channel = channel.clone();
        async move {
            let _ = served_tx.send((req.trace_context(), TraceContext::current()));
            TraceOut {
                channel,
                instance: "i1".into(),
                text: req.task.clone(),
            }
            .publish(&agent_bus)
            .await?;
            Ok::<_, bus::Error>(true)
        }
    })
    .await
    .unwrap();
    let (handled_tx, mut handled_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = plugin
        .handle(TraceOut::filter().channel(tag), move |msg| {
            let handled_tx = handled_tx.clone();
            async move {
                let _ = handled_tx.send((msg.trace_context(), TraceContext::current()));
                Ok::<_, bus::Error>(())
            }
        })
        .await
        .unwrap();
    plugin.flush().await.unwrap();
    agent.flush().await.unwrap();

    let task = TraceTask {
        agent: tag.into(),
        task: "t".into(),
    };
    let (root_cx, reply) = async {
        let root_cx = TraceContext::current().expect("the root span carries no trace context");
        let reply = tokio::time::timeout(GUARD, task.request(plugin))
            .await
            .expect("no reply")
            .unwrap();
        (root_cx, reply)
    }
    .instrument(root)
    .await;
    assert!(*reply.body());
    let (request_header, in_serve) = tokio::time::timeout(GUARD, served_rx.recv())
        .await
        .unwrap()
        .unwrap();
    agent.flush().await.unwrap();
    let (publish_header, in_handle) = tokio::time::timeout(GUARD, handled_rx.recv())
        .await
        .expect("the handler got nothing")
        .unwrap();
    // Every span of the chain is closed once its task is done.
    handler.stop().await;
    responder.stop().await;
    Chain {
        root: root_cx,
        request_header: request_header.expect("the request carried no traceparent"),
        in_serve: in_serve.expect("no trace context inside the responder"),
        publish_header: publish_header.expect("the publish carried no traceparent"),
        in_handle: in_handle.expect("no trace context inside the handler"),
        reply_header: reply.trace_context(),
    }
}

impl Chain {
    /// One trace id throughout, and each hop's parent the hop before it.
    pub fn assert_one_trace(&self) {
        let trace = self.root.trace_id();
        for (what, cx) in [
            ("request header", self.request_header),
            ("inside serve", self.in_serve),
            ("publish header", self.publish_header),
            ("inside handle", self.in_handle),
        ] {
            assert_eq!(cx.trace_id(), trace, "{what}: another trace: {self:#?}");
        }
        assert_eq!(self.reply_header.map(|c| c.trace_id()), Some(trace));
        // The agent published from inside its responder's span.
        assert_eq!(self.publish_header.span_id(), self.in_serve.span_id());
        // Each receiving span is a span of its own, not its parent.
        assert_ne!(self.in_serve.span_id(), self.request_header.span_id());
        assert_ne!(self.in_handle.span_id(), self.publish_header.span_id());
        assert_ne!(self.request_header.span_id(), self.root.span_id());
    }
}
