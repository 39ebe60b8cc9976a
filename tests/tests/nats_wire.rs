//! The wire format, seen from a foreign peer: plain async-nats plus a MessagePack map, as a
//! Python or Go client would send, using only what docs/wire-format.md says.

use std::collections::BTreeMap;
use std::time::Duration;

use bus::{Bus, ConnectionState, Message, WireHeaders};
use bus_tests::msgs::Delegate;
use bus_tests::server::NatsServer;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

const GUARD: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
struct Outbound {
    channel: String,
    instance: String,
    text: String,
    retries: u32,
}

/// What a foreign peer builds: a map from field name to value, any key order.
#[derive(Serialize)]
struct PeerOutbound<'a> {
    text: &'a str,
    retries: u32,
    instance: &'a str,
    channel: &'a str,
}

/// A round trip through the server on the peer's connection, so that its subscriptions are in
/// place before another connection publishes (`flush` only writes to the socket).
async fn sync(peer: &async_nats::Client) {
    let r = peer.request("_peer.sync", bytes::Bytes::new()).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "{r:?}"
    );
}

async fn bus(url: &str) -> Bus {
    connected(Bus::builder().nats([url]).no_outbox()).await
}

async fn connected(builder: bus::BusBuilder) -> Bus {
    let bus = builder.connect().await.unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
    bus
}

#[tokio::test]
async fn a_foreign_peer_publishes_and_the_typed_subscriber_decodes() {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await;
    let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("slack"))
        .await
        .unwrap();
    bus.broker().confirm().await.unwrap();

    let peer = async_nats::connect(server.url()).await.unwrap();
    let payload = rmp_serde::to_vec_named(&PeerOutbound {
        text: "hi from python",
        retries: 2,
        instance: "a1",
        channel: "slack",
    })
    .unwrap();
    // Headers are optional for a peer.
    peer.publish("plugin.outbound.slack.a1", payload.into())
        .await
        .unwrap();
    peer.flush().await.unwrap();

    let env = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(env.subject(), "plugin.outbound.slack.a1");
    assert_eq!(env.text, "hi from python");
    assert_eq!(env.retries, 2);
}

#[tokio::test]
async fn a_foreign_peer_decodes_what_the_sdk_publishes_with_full_headers() {
    let server = NatsServer::start();
    let bus = connected(
        Bus::builder()
            .nats([server.url()])
            .no_outbox()
            .wire_headers(WireHeaders::Full),
    )
    .await;
    let peer = async_nats::connect(server.url()).await.unwrap();
    let mut sub = peer.subscribe("plugin.outbound.>").await.unwrap();
    sync(&peer).await;
    Outbound {
        channel: "irc".into(),
        instance: "b2".into(),
        text: "hello".into(),
        retries: 0,
    }
    .publish(&bus)
    .await
    .unwrap();
    let msg = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), "plugin.outbound.irc.b2");
    let h = msg.headers.expect("WireHeaders::Full sends headers");
    assert_eq!(h.iter().map(|(_, v)| v.len()).sum::<usize>(), 3, "{h:?}");
    assert_eq!(
        h.get("Content-Type").unwrap().as_str(),
        "application/msgpack"
    );
    assert_eq!(h.get("Bus-Type").unwrap().as_str(), "Outbound");
    // One id header: the standard `Nats-Msg-Id` (async-nats files it under its own constant).
    assert!(
        h.get(async_nats::header::NATS_MESSAGE_ID).is_some(),
        "{h:?}"
    );
    assert!(h.get("Bus-Msg-Id").is_none(), "{h:?}");
    // A generic msgpack decoder sees a map keyed by field names.
    let map: BTreeMap<String, rmpv_like::Value> = rmp_serde::from_slice(&msg.payload).unwrap();
    assert_eq!(
        map.keys().map(String::as_str).collect::<Vec<_>>(),
        ["channel", "instance", "retries", "text"]
    );
    assert_eq!(map["text"], rmpv_like::Value::Str("hello".into()));
}

/// The default policy (`WireHeaders::Minimal`) as a peer sees it: nothing but the payload on a
/// direct publish; through the outbox, the two id headers a deduplicating consumer needs.
#[tokio::test]
async fn minimal_wire_headers_as_a_foreign_peer_sees_them() {
    let server = NatsServer::start();
    let direct = bus(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let durable = connected(
        Bus::builder()
            .nats([server.url()])
            .outbox_path(dir.path().join("outbox.sqlite3")),
    )
    .await;
    let peer = async_nats::connect(server.url()).await.unwrap();
    let mut sub = peer.subscribe("plugin.outbound.>").await.unwrap();
    sync(&peer).await;
    let msg = |instance: &str| Outbound {
        channel: "irc".into(),
        instance: instance.into(),
        text: "hello".into(),
        retries: 0,
    };

    msg("direct").publish(&direct).await.unwrap();
    let got = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject.as_str(), "plugin.outbound.irc.direct");
    assert!(
        got.headers.as_ref().is_none_or(|h| h.is_empty()),
        "a direct publish sends no header: {:?}",
        got.headers
    );
    let body: Outbound = rmp_serde::from_slice(&got.payload).unwrap();
    assert_eq!(body, msg("direct"));

    msg("queued").publish(&durable).await.unwrap();
    durable.flush().await.unwrap();
    let got = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject.as_str(), "plugin.outbound.irc.queued");
    let h = got.headers.expect("the outbox sends the id header");
    let names: Vec<String> = h.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names, ["Nats-Msg-Id"]);
    // A NUID: 22 characters of [0-9A-Za-z].
    let id = h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str();
    assert_eq!(id.len(), 22, "{id:?}");
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id:?}");
}

#[tokio::test]
async fn a_foreign_peer_answers_a_typed_request() {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await;
    let peer = async_nats::connect(server.url()).await.unwrap();
    let mut requests = peer.subscribe("agent.route.planner").await.unwrap();
    sync(&peer).await;
    let responder = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let body: BTreeMap<String, String> = rmp_serde::from_slice(&req.payload).unwrap();
        let correlation = req
            .headers
            .as_ref()
            .and_then(|h| h.get("Bus-Correlation-Id"))
            .map(|v| v.as_str().to_string())
            .expect("requests carry Bus-Correlation-Id");
        let mut h = async_nats::HeaderMap::new();
        h.insert("Bus-Correlation-Id", correlation.as_str());
        h.insert("Content-Type", "application/msgpack");
        let mut reply = BTreeMap::new();
        reply.insert("accepted", body["task"] == "plan");
        peer.publish_with_headers(
            req.reply.unwrap(),
            h,
            rmp_serde::to_vec_named(&reply).unwrap().into(),
        )
        .await
        .unwrap();
        peer.flush().await.unwrap();
        correlation
    });
    let reply = Delegate {
        agent: "planner".into(),
        task: "plan".into(),
    }
    .request(&bus)
    .await
    .unwrap();
    assert!(reply.accepted);
    let sent = responder.await.unwrap();
    assert_eq!(reply.correlation_id(), Some(sent.as_str()));
}

#[tokio::test]
async fn a_foreign_peer_reports_an_error_with_bus_error() {
    let server = NatsServer::start();
    let bus = bus(&server.url()).await;
    let peer = async_nats::connect(server.url()).await.unwrap();
    let mut requests = peer.subscribe("agent.route.failing").await.unwrap();
    sync(&peer).await;
    tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Bus-Error", "cannot plan today");
        peer.publish_with_headers(req.reply.unwrap(), h, bytes::Bytes::new())
            .await
            .unwrap();
        peer.flush().await.unwrap();
    });
    let err = Delegate {
        agent: "failing".into(),
        task: "x".into(),
    }
    .request(&bus)
    .await
    .unwrap_err();
    assert!(
        matches!(err, bus::Error::Remote { ref message, .. } if message == "cannot plan today"),
        "{err}"
    );
}

/// Just enough of a dynamic msgpack value to look at a decoded map without its Rust type.
mod rmpv_like {
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    pub enum Value {
        Int(i64),
        Str(String),
        Bool(bool),
    }
}
