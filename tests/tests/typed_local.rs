//! Typed messages end to end on `Bus::local()`: the derive's publish, subscribe, filter, queue,
//! request and serve over the local broker, undecodable payloads, injection and slow consumers.

use std::time::Duration;

use bus::{headers, Bus, Envelope, Error, Headers, Message, RawMessage, Subscription, WireHeaders};
use bus_tests::msgs::{outbound, Outbound};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
struct Delegate {
    agent: String,
    task: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RouteReply {
    accepted: bool,
    by: String,
}

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

async fn next<T: Message>(sub: &mut Subscription<T>) -> bus::Result<Envelope<T>> {
    tokio::time::timeout(RECV_TIMEOUT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing on {:?} within {RECV_TIMEOUT:?}", sub.pattern()))
        .expect("subscription ended")
}

/// Items already buffered, without waiting: after `bus.flush()` on the local broker that is
/// everything published before.
fn drain<T: Message>(sub: &mut Subscription<T>) -> Vec<bus::Result<Envelope<T>>> {
    let mut out = Vec::new();
    while let Some(Some(item)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        out.push(item);
    }
    out
}

fn texts(items: Vec<bus::Result<Envelope<Outbound>>>) -> Vec<String> {
    items
        .into_iter()
        .map(|i| i.expect("a good message").into_body().text)
        .collect()
}

#[tokio::test]
async fn publish_subscribe_with_filters() {
    let bus = Bus::local().await.unwrap();
    let mut all = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    let mut slack = Outbound::subscribe(&bus, Outbound::filter().channel("slack"))
        .await
        .unwrap();
    let mut a1 = Outbound::subscribe(&bus, Outbound::filter().instance("a1"))
        .await
        .unwrap();
    let mut exact = Outbound::subscribe(
        &bus,
        Outbound::filter().channel("discord").instance("b-2_x"),
    )
    .await
    .unwrap();
    assert_eq!(slack.pattern(), "plugin.outbound.slack.*");

    outbound("slack", "a1", "1").publish(&bus).await.unwrap();
    outbound("discord", "a1", "2").publish(&bus).await.unwrap();
    outbound("slack", "b-2_x", "3").publish(&bus).await.unwrap();
    outbound("discord", "b-2_x", "4")
        .publish(&bus)
        .await
        .unwrap();
    bus.flush().await.unwrap();

    assert_eq!(texts(drain(&mut all)), ["1", "2", "3", "4"]);
    assert_eq!(texts(drain(&mut slack)), ["1", "3"]);
    assert_eq!(texts(drain(&mut a1)), ["1", "2"]);
    assert_eq!(texts(drain(&mut exact)), ["4"]);

    // The envelope carries the subject and the body; the headers are those of the bus's
    // `WireHeaders` (tested below).
    outbound("slack", "a1", "5").publish(&bus).await.unwrap();
    let env = next(&mut slack).await.unwrap();
    assert_eq!(env.subject(), "plugin.outbound.slack.a1");
    assert_eq!(*env.body(), outbound("slack", "a1", "5"));
}

/// Every header of an envelope, in order, with the id values replaced by `<id>`; the id
/// travels in one header only (`Nats-Msg-Id`), never also as the legacy `Bus-Msg-Id`.
fn header_shape<T>(env: &Envelope<T>) -> Vec<(String, String)> {
    let h = env.headers();
    assert_eq!(h.get(headers::LEGACY_MSG_ID), None, "one id header");
    h.iter()
        .map(|(n, v)| {
            let v = match n {
                headers::MSG_ID | headers::CORRELATION_ID => "<id>",
                _ => v,
            };
            (n.to_owned(), v.to_owned())
        })
        .collect()
}

fn shape(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Serves `Delegate` on `bus` and makes one request: the header shapes the responder saw, and
/// the reply.
async fn request_seen(bus: &Bus) -> (Vec<Vec<(String, String)>>, Envelope<RouteReply>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_by_handler = seen.clone();
    Delegate::serve(bus, Delegate::filter(), move |req| {
        seen_by_handler.lock().unwrap().push(header_shape(&req));
        async move {
            Ok::<_, Error>(RouteReply {
                accepted: true,
                by: req.agent.clone(),
            })
        }
    })
    .await
    .unwrap();
    let reply = Delegate {
        agent: "planner".into(),
        task: "t".into(),
    }
    .request(bus)
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, reply)
}

#[tokio::test]
async fn minimal_wire_headers_send_nothing_on_a_direct_publish() {
    let bus = Bus::local().await.unwrap();
    assert_eq!(bus.wire_headers(), WireHeaders::Minimal, "the default");
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    outbound("slack", "a1", "bare").publish(&bus).await.unwrap();
    let env = next(&mut sub).await.unwrap();
    assert_eq!(env.text, "bare");
    assert!(env.headers().is_empty(), "{:?}", env.headers());
    assert_eq!(env.msg_id(), None);

    // Headers of your own are always sent, and only they.
    let mut mine = Headers::new();
    mine.insert("Tenant", "acme");
    bus.publish_with_headers(&outbound("slack", "a1", "mine"), mine)
        .await
        .unwrap();
    let env = next(&mut sub).await.unwrap();
    assert_eq!(header_shape(&env), shape(&[("Tenant", "acme")]));

    // Requests carry their correlation id, and replies copy it, with nothing else.
    let (seen, reply) = request_seen(&bus).await;
    let correlation = shape(&[(headers::CORRELATION_ID, "<id>")]);
    assert_eq!(seen, std::slice::from_ref(&correlation));
    assert_eq!(header_shape(&reply), correlation);
    assert!(reply.correlation_id().is_some());
}

/// A local bus with an outbox file in `dir`, sending `wire` headers.
async fn local_outbox_bus(dir: &std::path::Path, wire: WireHeaders) -> Bus {
    Bus::builder()
        .local()
        .outbox_path(dir.join("o.db"))
        .wire_headers(wire)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn minimal_wire_headers_send_the_ids_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local_outbox_bus(dir.path(), WireHeaders::default()).await;
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    outbound("slack", "a1", "1").publish(&bus).await.unwrap();
    outbound("slack", "a1", "2").publish(&bus).await.unwrap();
    bus.flush().await.unwrap();
    let first = next(&mut sub).await.unwrap();
    let second = next(&mut sub).await.unwrap();
    let ids = shape(&[(headers::MSG_ID, "<id>")]);
    assert_eq!(header_shape(&first), ids);
    assert_eq!(header_shape(&second), ids);
    assert_ne!(first.msg_id(), second.msg_id(), "one id per message");
}

#[tokio::test]
async fn no_id_wire_headers_send_nothing_even_through_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local_outbox_bus(dir.path(), WireHeaders::NoId).await;
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    outbound("slack", "a1", "1").publish(&bus).await.unwrap();
    let mut mine = Headers::new();
    mine.insert("Tenant", "acme");
    bus.publish_with_headers(&outbound("slack", "a1", "2"), mine)
        .await
        .unwrap();
    bus.flush().await.unwrap();
    let first = next(&mut sub).await.unwrap();
    assert!(first.headers().is_empty(), "{:?}", first.headers());
    assert_eq!(first.msg_id(), None);
    let second = next(&mut sub).await.unwrap();
    assert_eq!(header_shape(&second), shape(&[("Tenant", "acme")]));
}

#[tokio::test]
async fn an_older_peers_bus_msg_id_is_still_read() {
    let bus = Bus::local().await.unwrap();
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    let mut h = Headers::new();
    h.insert(headers::LEGACY_MSG_ID, "from-an-old-peer");
    bus.publish_with_headers(&outbound("slack", "a1", "1"), h)
        .await
        .unwrap();
    let env = next(&mut sub).await.unwrap();
    assert_eq!(env.msg_id(), Some("from-an-old-peer"));
}

#[tokio::test]
async fn full_wire_headers_describe_every_typed_message() {
    let bus = Bus::builder()
        .local()
        .wire_headers(WireHeaders::Full)
        .connect()
        .await
        .unwrap();
    assert_eq!(bus.wire_headers(), WireHeaders::Full);
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    let mut mine = Headers::new();
    mine.insert("Tenant", "acme");
    bus.publish_with_headers(&outbound("slack", "a1", "5"), mine)
        .await
        .unwrap();
    let env = next(&mut sub).await.unwrap();
    assert!(env.msg_id().is_some());
    assert_eq!(
        header_shape(&env),
        shape(&[
            ("Tenant", "acme"),
            (headers::MSG_ID, "<id>"),
            (headers::CONTENT_TYPE, headers::MSGPACK),
            (headers::TYPE, "Outbound"),
        ])
    );

    // Requests add their correlation id; replies say what their payload is.
    let (seen, reply) = request_seen(&bus).await;
    assert_eq!(
        seen,
        [shape(&[
            (headers::MSG_ID, "<id>"),
            (headers::CONTENT_TYPE, headers::MSGPACK),
            (headers::TYPE, "Delegate"),
            (headers::CORRELATION_ID, "<id>"),
        ])]
    );
    assert_eq!(
        header_shape(&reply),
        shape(&[
            (headers::CORRELATION_ID, "<id>"),
            (headers::CONTENT_TYPE, headers::MSGPACK),
        ])
    );
}

#[tokio::test]
async fn queue_group_shares_messages() {
    const N: usize = 60;
    let bus = Bus::local().await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(
            Outbound::subscribe(&bus, Outbound::filter().channel("slack").queue("workers"))
                .await
                .unwrap(),
        );
    }
    let mut audit = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    for i in 0..N {
        outbound("slack", "a1", &i.to_string())
            .publish(&bus)
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    let mut seen: Vec<usize> = Vec::new();
    for w in &mut workers {
        let got = texts(drain(w));
        assert!(!got.is_empty(), "every worker gets a share");
        seen.extend(got.iter().map(|t| t.parse::<usize>().unwrap()));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "each message goes to exactly one worker"
    );
    assert_eq!(drain(&mut audit).len(), N, "a plain subscriber gets all");
}

#[tokio::test]
async fn request_reply_and_serve() {
    let bus = Bus::local().await.unwrap();
    let planner = Delegate::serve(
        &bus,
        Delegate::filter().agent("planner"),
        |req| async move {
            if req.task == "explode" {
                return Err(format!("cannot do {:?}", req.task));
            }
            Ok(RouteReply {
                accepted: req.task == "plan",
                by: req.agent.clone(),
            })
        },
    )
    .await
    .unwrap();

    let delegate = |agent: &str, task: &str| Delegate {
        agent: agent.into(),
        task: task.into(),
    };
    let reply = delegate("planner", "plan").request(&bus).await.unwrap();
    assert_eq!(
        *reply.body(),
        RouteReply {
            accepted: true,
            by: "planner".into()
        }
    );
    assert!(
        reply.correlation_id().is_some(),
        "the reply carries the request's correlation id"
    );
    assert!(
        !delegate("planner", "other")
            .request(&bus)
            .await
            .unwrap()
            .accepted
    );

    // A handler error surfaces at the requester with its message.
    match delegate("planner", "explode").request(&bus).await {
        Err(Error::Remote { subject, message }) => {
            assert_eq!(subject, "agent.route.planner");
            assert!(message.contains("cannot do \"explode\""), "{message}");
        }
        other => panic!("want Error::Remote, got {other:?}"),
    }

    // Nobody serves agent.route.coder: no responders, at once.
    let started = tokio::time::Instant::now();
    match bus
        .request_with_timeout(&delegate("coder", "plan"), Duration::from_secs(30))
        .await
    {
        Err(Error::NoResponders { subject }) => assert_eq!(subject, "agent.route.coder"),
        other => panic!("want NoResponders, got {other:?}"),
    }
    assert!(
        started.elapsed() < RECV_TIMEOUT,
        "no-responders must not wait"
    );

    // A stopped responder no longer answers.
    planner.stop().await;
    tokio::task::yield_now().await;
    let err = bus
        .request_with_timeout(&delegate("planner", "plan"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoResponders { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn queue_group_of_responders_answers_once() {
    let bus = Bus::local().await.unwrap();
    for name in ["one", "two"] {
        Delegate::serve(
            &bus,
            Delegate::filter().queue("planners"),
            move |_req| async move {
                Ok::<_, Error>(RouteReply {
                    accepted: true,
                    by: name.into(),
                })
            },
        )
        .await
        .unwrap();
    }
    let mut by = Vec::new();
    for i in 0..10 {
        let reply = Delegate {
            agent: format!("a{i}"),
            task: "t".into(),
        }
        .request(&bus)
        .await
        .unwrap();
        by.push(reply.into_body().by);
    }
    assert!(
        by.iter().any(|b| b == "one") && by.iter().any(|b| b == "two"),
        "{by:?}"
    );
}

#[tokio::test]
async fn undecodable_payload_is_an_error_item_and_the_stream_goes_on() {
    let bus = Bus::local().await.unwrap();
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    let mut garbage = RawMessage::new("plugin.outbound.slack.a1", vec![0xc1, 0xff, 0x00, 0x13]);
    garbage.headers.insert(headers::MSG_ID, "bad-msg-1");
    bus.publish_raw(garbage).await.unwrap();
    outbound("slack", "a1", "good").publish(&bus).await.unwrap();

    match next(&mut sub).await {
        Err(Error::Decode {
            subject,
            msg_id,
            type_name,
            ..
        }) => {
            assert_eq!(subject, "plugin.outbound.slack.a1");
            assert_eq!(msg_id.as_deref(), Some("bad-msg-1"));
            assert_eq!(type_name, "Outbound");
        }
        other => panic!("want Error::Decode, got {other:?}"),
    }
    let good = next(&mut sub).await.expect("the next good message arrives");
    assert_eq!(good.text, "good");
    assert_eq!(sub.decode_errors(), 1);

    // A well-formed MessagePack value of the wrong shape is a decode error too.
    let wrong =
        rmp_serde::to_vec_named(&std::collections::BTreeMap::from([("channel", 5)])).unwrap();
    bus.publish_raw(RawMessage::new("plugin.outbound.x.y", wrong))
        .await
        .unwrap();
    assert!(matches!(next(&mut sub).await, Err(Error::Decode { .. })));
    assert_eq!(sub.decode_errors(), 2);
}

#[tokio::test]
async fn injected_placeholder_values_are_refused() {
    let bus = Bus::local().await.unwrap();
    let mut everything = bus.broker().subscribe(">", None).await.unwrap();
    let mut typed = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    let bad_values = [
        "a.b", "*", ">", "", " ", "a b", "\t", "a\nb", "a\u{7}b", "x.>",
    ];
    for bad in bad_values {
        for (field, msg) in [
            ("channel", outbound(bad, "a1", "evil")),
            ("instance", outbound("slack", bad, "evil")),
        ] {
            match msg.publish(&bus).await {
                Err(Error::InvalidSubjectToken {
                    field: f, value, ..
                }) => {
                    assert_eq!(f, field);
                    assert_eq!(value, bad);
                }
                other => panic!(
                    "publish with {field} = {bad:?}: want InvalidSubjectToken, got {other:?}"
                ),
            }
        }
        match Outbound::subscribe(&bus, Outbound::filter().channel(bad)).await {
            Err(Error::InvalidSubjectToken { field, .. }) => assert_eq!(field, "channel"),
            other => panic!(
                "filter channel = {bad:?}: want InvalidSubjectToken, got {:?}",
                other.map(|s| s.pattern().to_string())
            ),
        }
        let request = Delegate {
            agent: bad.into(),
            task: "t".into(),
        };
        assert!(matches!(
            request.request(&bus).await,
            Err(Error::InvalidSubjectToken { field: "agent", .. })
        ));
    }
    bus.flush().await.unwrap();
    let mut leaked = Vec::new();
    while let Some(Some(m)) = everything.messages.next().now_or_never() {
        leaked.push(m.subject);
    }
    assert!(leaked.is_empty(), "nothing may be sent: {leaked:?}");
    assert!(drain(&mut typed).is_empty());
    // A valid message still goes through.
    outbound("slack", "a1", "ok").publish(&bus).await.unwrap();
    assert_eq!(next(&mut typed).await.unwrap().text, "ok");
}

#[tokio::test]
async fn slow_consumer_is_reported_on_the_typed_stream() {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(8)
        .connect()
        .await
        .unwrap();
    let mut sub = Outbound::subscribe(&bus, Outbound::filter()).await.unwrap();
    for i in 0..20 {
        // Never blocks, although nobody reads.
        outbound("slack", "a1", &i.to_string())
            .publish(&bus)
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(sub.stats().dropped(), 12);
    match next(&mut sub).await {
        Err(Error::SlowConsumer { pattern, dropped }) => {
            assert_eq!(pattern, "plugin.outbound.*.*");
            assert_eq!(dropped, 12);
        }
        other => panic!("want SlowConsumer first, got {other:?}"),
    }
    // The 8 buffered messages follow, in order, then the stream keeps working.
    let got = texts(drain(&mut sub));
    assert_eq!(got, (0..8).map(|i| i.to_string()).collect::<Vec<_>>());
    outbound("slack", "a1", "after")
        .publish(&bus)
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.unwrap().text, "after");
    assert_eq!(sub.stats().dropped(), 12, "no further drops once caught up");
}
