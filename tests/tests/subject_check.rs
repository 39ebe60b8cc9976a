//! The optional subject/body check on receive, on both backends: a message whose placeholder
//! fields disagree with the subject it arrived on is an `Err` item naming both (and a request is
//! refused), never a message; off (the default) such a message is delivered as it always was.
//!
//! A contradicting message is what a peer in another language can send: the subject and the
//! MessagePack body are built separately. Here it is published raw, as such a peer would.

use std::time::Duration;

use bus::{headers, Bus, ConnectionState, Envelope, Error, RawMessage, Subscription};
use bus_tests::msgs::{outbound, Delegate, Outbound, RouteReply};
use bus_tests::server::NatsServer;
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(10);

async fn next<T: bus::Message>(sub: &mut Subscription<T>) -> bus::Result<Envelope<T>> {
    tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing on {:?} within {GUARD:?}", sub.pattern()))
        .expect("subscription ended")
}

/// `body` published raw on `subject`, whatever its fields say.
async fn publish_on(bus: &Bus, subject: &str, body: &Outbound) {
    let payload = rmp_serde::to_vec_named(body).unwrap();
    bus.publish_raw(RawMessage::new(subject, payload))
        .await
        .unwrap();
}

/// With the check on for the whole bus: contradictions are refused, agreeing messages delivered.
async fn refused_when_on(bus: &Bus) {
    let mut sub = Outbound::subscribe(bus, Outbound::filter()).await.unwrap();
    publish_on(
        bus,
        "plugin.outbound.slack.a1",
        &outbound("email", "a1", "1"),
    )
    .await;
    // A body field that is not one token cannot match any subject.
    publish_on(
        bus,
        "plugin.outbound.slack.a1",
        &outbound("slack", "a.b", "2"),
    )
    .await;
    outbound("slack", "a1", "3").publish(bus).await.unwrap();

    match next(&mut sub).await {
        Err(e @ Error::SubjectMismatch { .. }) => {
            let text = e.to_string();
            let Error::SubjectMismatch {
                subject,
                field,
                subject_value,
                body_value,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(subject, "plugin.outbound.slack.a1");
            assert_eq!(field, "channel");
            assert_eq!(subject_value, "slack");
            assert_eq!(body_value, "email");
            for part in [
                "plugin.outbound.slack.a1",
                "`<channel>`",
                "\"slack\"",
                "\"email\"",
            ] {
                assert!(text.contains(part), "{part} missing from: {text}");
            }
        }
        other => panic!("expected SubjectMismatch, got {other:?}"),
    }
    match next(&mut sub).await {
        Err(Error::SubjectMismatch {
            field,
            subject_value,
            body_value,
            ..
        }) => {
            assert_eq!(field, "instance");
            assert_eq!(subject_value, "a1");
            assert_eq!(body_value, "a.b");
        }
        other => panic!("expected SubjectMismatch, got {other:?}"),
    }
    let good = next(&mut sub)
        .await
        .expect("an agreeing message is delivered");
    assert_eq!(good.text, "3");
    assert_eq!(sub.subject_mismatches(), 2);
    assert_eq!(sub.decode_errors(), 0);
}

/// A request whose body contradicts its subject never reaches the handler: the requester gets
/// the mismatch back as the responder's error.
async fn request_refused_when_on(bus: &Bus) {
    let handle = Delegate::serve(bus, Delegate::filter(), |req| async move {
        Ok::<_, Error>(RouteReply {
            accepted: req.agent == "planner",
        })
    })
    .await
    .unwrap();
    bus.flush().await.unwrap();
    let body = Delegate {
        agent: "critic".into(),
        task: "t".into(),
    };
    let raw = RawMessage::new(
        "agent.route.planner",
        rmp_serde::to_vec_named(&body).unwrap(),
    );
    let reply = bus.broker().request(raw, GUARD).await.unwrap();
    let error = reply.headers.get(headers::ERROR).expect("an error reply");
    assert!(error.contains("contradicts its body"), "{error}");
    assert!(error.contains("\"critic\""), "{error}");
    // An agreeing request is answered.
    let ok = Delegate {
        agent: "planner".into(),
        task: "t".into(),
    }
    .request(bus)
    .await
    .unwrap();
    assert!(ok.accepted);
    handle.stop().await;
}

/// Off (the default), the same contradiction is delivered as before; one subscription can turn
/// the check on for itself.
async fn off_by_default(bus: &Bus) {
    let mut plain = Outbound::subscribe(bus, Outbound::filter()).await.unwrap();
    let mut strict = Outbound::subscribe(bus, Outbound::filter())
        .await
        .unwrap()
        .check_subject_fields(true);
    publish_on(
        bus,
        "plugin.outbound.slack.a1",
        &outbound("email", "a1", "x"),
    )
    .await;

    let env = next(&mut plain)
        .await
        .expect("delivered with the check off");
    assert_eq!(
        (env.subject(), env.channel.as_str()),
        ("plugin.outbound.slack.a1", "email")
    );
    assert_eq!(plain.subject_mismatches(), 0);
    assert!(matches!(
        next(&mut strict).await,
        Err(Error::SubjectMismatch {
            field: "channel",
            ..
        })
    ));
}

/// On a checking bus, one subscription can turn the check off for itself.
async fn off_for_one_subscription(checked: &Bus) {
    let mut relaxed = Outbound::subscribe(checked, Outbound::filter())
        .await
        .unwrap()
        .check_subject_fields(false);
    let mut strict = Outbound::subscribe(checked, Outbound::filter())
        .await
        .unwrap();
    publish_on(
        checked,
        "plugin.outbound.slack.a1",
        &outbound("email", "a1", "x"),
    )
    .await;
    let env = next(&mut relaxed)
        .await
        .expect("this subscription turned it off");
    assert_eq!(env.channel, "email");
    assert!(matches!(
        next(&mut strict).await,
        Err(Error::SubjectMismatch { .. })
    ));
}

/// A local bus, checking or not.
async fn local(check: bool) -> Bus {
    Bus::builder()
        .check_subject_fields(check)
        .connect()
        .await
        .unwrap()
}

/// A bus on `server` (no outbox: the contradiction is published raw, once), checking or not.
async fn nats(server: &NatsServer, check: bool) -> Bus {
    let builder = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .check_subject_fields(check);
    let bus = builder.connect().await.unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("connected in time")
        .unwrap();
    bus
}

#[tokio::test]
async fn local_refuses_a_contradicting_message() {
    refused_when_on(&local(true).await).await;
}

#[tokio::test]
async fn local_refuses_a_contradicting_request() {
    request_refused_when_on(&local(true).await).await;
}

#[tokio::test]
async fn local_check_is_off_by_default_and_per_subscription() {
    off_by_default(&Bus::local().await.unwrap()).await;
    off_for_one_subscription(&local(true).await).await;
}

#[tokio::test]
async fn nats_refuses_a_contradicting_message() {
    let server = NatsServer::start();
    refused_when_on(&nats(&server, true).await).await;
}

#[tokio::test]
async fn nats_refuses_a_contradicting_request() {
    let server = NatsServer::start();
    request_refused_when_on(&nats(&server, true).await).await;
}

#[tokio::test]
async fn nats_check_is_off_by_default_and_per_subscription() {
    let server = NatsServer::start();
    off_by_default(&nats(&server, false).await).await;
    off_for_one_subscription(&nats(&server, true).await).await;
}
