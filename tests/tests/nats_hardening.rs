//! Hardening against a real nats-server: permissions violations (publish, subscribe, the
//! confirmation subject), subjects too long for the server's protocol line, and handler errors
//! that must reach the requester as errors, never as timeouts. Each test counts what was lost
//! (printed to stderr: run with `--nocapture` to read the figures).
#![allow(clippy::print_stderr)]

use std::time::Duration;

use bus::{Broker, Bus, Error, NatsBroker, RawMessage};
use bus_tests::msgs::{outbound, Delegate, Outbound, RouteReply};
use bus_tests::server::NatsServer;
use bus_tests::support::{nats_options, wait_state};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(20);

/// A server with user `app` (denied publishing to `plugin.outbound.denied.>` and subscribing to
/// `plugin.inbound.secret.>`) and user `noconfirm` (denied the confirmation subject).
fn server() -> NatsServer {
    NatsServer::builder().config(SERVER_AUTH).start()
}

/// The users of [`server`].
const SERVER_AUTH: &str = r#"authorization {
  users = [
    { user: "app", password: "pw", permissions: {
        publish: { deny: ["plugin.outbound.denied.>"] },
        subscribe: { deny: ["plugin.inbound.secret.>"] } } }
    { user: "noconfirm", password: "pw", permissions: {
        publish: { deny: ["_bus.confirm.>"] } } }
  ]
}"#;

async fn broker(server: &NatsServer, user: &str) -> NatsBroker {
    let mut o = nats_options(&server.url(), Duration::from_secs(2));
    o.auth = bus::NatsAuth::UserPassword(user.into(), "pw".into());
    let b = NatsBroker::connect(o).await.unwrap();
    wait_state(&b, bus::ConnectionState::Connected, GUARD).await;
    b
}

async fn bus_on(server: &NatsServer, user: &str) -> Bus {
    Bus::builder()
        .nats([server.url()])
        .user_password(user, "pw")
        .reconnect_delay(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(2))
        .no_outbox()
        .connect()
        .await
        .unwrap()
}

/// Without an outbox, a publish the server refuses surfaces at `flush` (which is a round trip
/// through the server) as `Error::Rejected` naming the subject and the server's reason; the
/// allowed messages of the same run all arrive. Before: `flush` returned Ok, 3 of 7 gone.
#[tokio::test]
async fn denied_publish_is_reported_by_flush() {
    let server = server();
    let watcher = broker(&server, "app").await;
    let mut seen = watcher.subscribe("plugin.outbound.>", None).await.unwrap();
    let bus = bus_on(&server, "app").await;
    wait_state_bus(&bus).await;
    let mut denied = 0;
    for i in 0..7 {
        let channel = if i % 2 == 1 { "denied" } else { "slack" };
        if channel == "denied" {
            denied += 1;
        }
        outbound(channel, &format!("i{i}"), "x")
            .publish(&bus)
            .await
            .unwrap();
    }
    match tokio::time::timeout(GUARD, bus.flush())
        .await
        .expect("flush hung")
    {
        Err(Error::Rejected { rejections }) => {
            assert_eq!(rejections.len(), denied, "{rejections:?}");
            for r in &rejections {
                assert!(r.subject.starts_with("plugin.outbound.denied."), "{r:?}");
                assert!(r.reason.contains("Permissions Violation"), "{r:?}");
            }
        }
        other => panic!("want Rejected, got {other:?}"),
    }
    // The next flush has nothing left to report.
    bus.flush().await.unwrap();
    watcher.confirm().await.unwrap();
    let mut allowed = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(300), seen.messages.next()).await
    {
        allowed.push(m.subject);
    }
    assert_eq!(
        allowed,
        [
            "plugin.outbound.slack.i0",
            "plugin.outbound.slack.i2",
            "plugin.outbound.slack.i4",
            "plugin.outbound.slack.i6"
        ]
    );
    eprintln!("denied publish without outbox: 4 of 4 allowed delivered, {denied} refused and reported, 0 lost silently");
}

async fn wait_state_bus(bus: &Bus) {
    let mut w = bus.watch_state();
    tokio::time::timeout(GUARD, w.wait_for(|s| *s == bus::ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
}

/// Subscribing to a denied subject fails at `subscribe` with `PermissionDenied`, raw and typed;
/// an allowed subscription on the same connection keeps working.
#[tokio::test]
async fn denied_subscribe_fails() {
    let server = server();
    let b = broker(&server, "app").await;
    match b.subscribe("plugin.inbound.secret.>", None).await {
        Err(Error::PermissionDenied { subject, reason }) => {
            assert_eq!(subject, "plugin.inbound.secret.>");
            assert!(reason.contains("Permissions Violation"), "{reason}");
        }
        other => panic!("want PermissionDenied, got {:?}", other.map(|s| s.pattern)),
    }
    let mut ok = b.subscribe("plugin.inbound.open", None).await.unwrap();
    b.publish(RawMessage::new("plugin.inbound.open", "hi"))
        .await
        .unwrap();
    let m = tokio::time::timeout(GUARD, ok.messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"hi");
}

/// A denied subscription made before the connection is up (the server is not there yet) cannot
/// be refused by `subscribe`, which returns `Ok`: the typed stream's first item is the
/// `PermissionDenied`, and then it ends (as the README says). On a connected bus `subscribe`
/// itself fails (`denied_subscribe_fails`).
#[tokio::test]
async fn a_denied_subscription_made_before_the_connection_yields_the_error() {
    let port = bus_tests::server::free_port();
    let bus = Bus::builder()
        .nats([format!("nats://127.0.0.1:{port}")])
        .user_password("app", "pw")
        .reconnect_delay(Duration::from_millis(100))
        .no_outbox()
        .connect()
        .await
        .unwrap();
    assert_ne!(bus.state(), bus::ConnectionState::Connected);
    let mut sub = bus
        .subscribe::<Secret>(Secret::filter().who("x"))
        .await
        .expect("nothing to refuse it yet");
    let _server = NatsServer::builder().port(port).config(SERVER_AUTH).start();
    let first = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("no item");
    match first {
        Some(Err(Error::PermissionDenied { subject, .. })) => {
            assert_eq!(subject, "plugin.inbound.secret.x");
        }
        other => panic!("want a PermissionDenied item, got {other:?}"),
    }
    let end = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("never ended");
    assert!(end.is_none(), "ends after the error: {end:?}");
}

/// A message on a subject `app` may not subscribe to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, bus::Message)]
#[subject("plugin.inbound.secret.<who>")]
struct Secret {
    who: String,
}

/// Without permission on the confirmation subject, `flush` fails fast... at the request timeout,
/// with `PermissionDenied` naming the prefix to grant, not a bare timeout; and not transient.
#[tokio::test]
async fn denied_confirm_subject_is_a_configuration_error() {
    let server = server();
    let bus = bus_on(&server, "noconfirm").await;
    wait_state_bus(&bus).await;
    match tokio::time::timeout(GUARD, bus.flush())
        .await
        .expect("flush hung")
    {
        Err(e @ Error::PermissionDenied { .. }) => {
            assert!(!e.is_transient());
            let text = e.to_string();
            assert!(text.contains("_bus.confirm.>"), "{text}");
        }
        other => panic!("want PermissionDenied, got {other:?}"),
    }
}

/// A placeholder value or pattern longer than the server's protocol line allows is refused
/// before anything is sent; the connection stays up (no reconnect storm) and keeps working.
#[tokio::test]
async fn subjects_too_long_are_refused_before_sending() {
    let server = NatsServer::start();
    let bus = Bus::builder()
        .nats([server.url()])
        .reconnect_delay(Duration::from_millis(100))
        .no_outbox()
        .connect()
        .await
        .unwrap();
    wait_state_bus(&bus).await;
    let long = "x".repeat(5_000);
    match outbound("slack", &long, "x").publish(&bus).await {
        Err(Error::InvalidSubjectToken { field, .. }) => assert_eq!(field, "instance"),
        other => panic!("want InvalidSubjectToken, got {other:?}"),
    }
    // A subject made of many short tokens, over the limit as a whole.
    let many = format!("plugin.outbound.{}", vec!["abcdefgh"; 500].join("."));
    assert!(matches!(
        bus.publish_raw(RawMessage::new(many.clone(), "x")).await,
        Err(Error::InvalidSubject { .. })
    ));
    assert!(matches!(
        bus.broker().subscribe(&many, None).await,
        Err(Error::InvalidSubject { .. })
    ));
    assert!(
        Outbound::subscribe(&bus, Outbound::filter().channel(long.as_str()))
            .await
            .is_err()
    );
    // Just under the limit works end to end.
    let fits = "y".repeat(bus_subject::MAX_SUBJECT_LEN - "plugin.outbound.slack.".len());
    let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel("slack"))
        .await
        .unwrap();
    outbound("slack", &fits, "fits")
        .publish(&bus)
        .await
        .unwrap();
    let env = tokio::time::timeout(GUARD, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(env.text, "fits");
    bus.flush().await.unwrap();
    assert_eq!(bus.state(), bus::ConnectionState::Connected);
    let connz = server.monitor("/varz").unwrap();
    assert!(!connz.is_empty());
}

/// Handler errors and panics reach the requester as `Error::Remote`, never as a timeout: an
/// error text with CR/LF, one of 2 MiB (over max_payload) and a panic.
#[tokio::test]
async fn handler_errors_and_panics_come_back_as_errors() {
    let server = NatsServer::start();
    for bus in [
        Bus::local().await.unwrap(),
        Bus::builder()
            .nats([server.url()])
            .no_outbox()
            .request_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap(),
    ] {
        if bus.broker().kind() == "nats" {
            wait_state_bus(&bus).await;
        }
        let _serve = Delegate::serve(&bus, Delegate::filter(), |req| async move {
            match req.task.as_str() {
                "newline" => Err("line one\r\nline two\nPUB evil 1".to_string()),
                "huge" => Err("e".repeat(2 * 1024 * 1024)),
                "panic" => panic!("handler blew up on {}", req.agent),
                _ => Ok(RouteReply { accepted: true }),
            }
        })
        .await
        .unwrap();
        for (task, want) in [
            ("newline", "line one  line two PUB evil 1"),
            ("huge", "eeee"),
            ("panic", "the handler panicked: handler blew up on planner"),
        ] {
            let started = std::time::Instant::now();
            let got = Delegate {
                agent: "planner".into(),
                task: task.into(),
            }
            .request(&bus)
            .await;
            match got {
                Err(Error::Remote { message, .. }) => {
                    assert!(message.starts_with(want), "{task}: {message:?}");
                    assert!(message.len() <= 1024, "{task}: {} bytes", message.len());
                    assert!(!message.contains(['\r', '\n']));
                }
                other => panic!(
                    "{}: {task}: want Remote, got {other:?}",
                    bus.broker().kind()
                ),
            }
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{task} took the timeout"
            );
        }
        let ok = Delegate {
            agent: "planner".into(),
            task: "fine".into(),
        }
        .request(&bus)
        .await
        .unwrap();
        assert!(ok.accepted, "the responder still serves after a panic");
    }
}

fn outbox_bus_builder(server: &NatsServer, user: &str, dir: &std::path::Path) -> bus::BusBuilder {
    Bus::builder()
        .nats([server.url()])
        .user_password(user, "pw")
        .reconnect_delay(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(1))
        .outbox_path(dir.join("outbox.sqlite3"))
        .outbox_retry(
            bus::RetryPolicy::default()
                .base(Duration::from_millis(20))
                .jitter(0.0),
        )
}

/// Through the outbox, each publish the server's permissions refuse counts a failed attempt
/// and ends as a dead letter with the server's reason after 3; the allowed messages of the same
/// batches are delivered once, in order; `flush` returns and the queue is empty.
/// Before: 7 publishes and `flush` returned Ok, depth 0, 0 dead letters, 3 messages gone.
#[tokio::test]
async fn denied_publishes_through_the_outbox_become_dead_letters() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let watcher = broker(&server, "app").await;
    let mut seen = watcher.subscribe("plugin.outbound.>", None).await.unwrap();
    let bus = outbox_bus_builder(&server, "app", dir.path())
        .connect()
        .await
        .unwrap();
    wait_state_bus(&bus).await;
    let mut want = Vec::new();
    for i in 0..7 {
        let channel = if i % 2 == 1 { "denied" } else { "slack" };
        if channel == "slack" {
            want.push(format!("plugin.outbound.slack.i{i}"));
        }
        outbound(channel, &format!("i{i}"), "x")
            .publish(&bus)
            .await
            .unwrap();
    }
    tokio::time::timeout(GUARD, bus.flush())
        .await
        .expect("flush hung")
        .unwrap();
    let dead = bus.dead_letters().list().await.unwrap();
    let dead_subjects: Vec<&str> = dead.iter().map(|d| d.subject.as_str()).collect();
    assert_eq!(
        dead_subjects,
        [
            "plugin.outbound.denied.i1",
            "plugin.outbound.denied.i3",
            "plugin.outbound.denied.i5"
        ]
    );
    for d in &dead {
        assert_eq!(d.attempts, 3);
        assert!(
            d.last_error.contains("Permissions Violation"),
            "{}",
            d.last_error
        );
    }
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
    watcher.confirm().await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(300), seen.messages.next()).await
    {
        got.push(m.subject);
    }
    let duplicates = got.len() - {
        let mut g = got.clone();
        g.dedup();
        g.len()
    };
    assert_eq!(got, want, "allowed messages: lost or reordered");
    eprintln!("denied through the outbox: 4/4 allowed delivered, {duplicates} duplicated, 3/3 denied dead-lettered, 0 lost");
}

/// Without permission on the confirmation subject, the outbox reports a configuration error:
/// `flush` fails at once naming the prefix to grant, nothing is dead-lettered (the messages are
/// not at fault) and resends are bounded by a growing wait. Before: `flush` hung, the first
/// batch was resent every ~2 s forever.
#[tokio::test]
async fn an_unconfirmable_outbox_says_so_and_backs_off() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let watcher = broker(&server, "app").await;
    let mut seen = watcher.subscribe("plugin.outbound.>", None).await.unwrap();
    let bus = outbox_bus_builder(&server, "noconfirm", dir.path())
        .connect()
        .await
        .unwrap();
    wait_state_bus(&bus).await;
    outbound("slack", "seq0", "x").publish(&bus).await.unwrap();
    // The first confirmation times out (1 s), finds the violation and blocks the queue.
    let err = tokio::time::timeout(GUARD, async {
        loop {
            match bus.flush().await {
                Err(e) => return e,
                Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("flush never reported the blocked queue");
    let text = err.to_string();
    assert!(text.contains("_bus.confirm.>"), "{text}");
    // What the README says: through the outbox it is `Error::Outbox`, not `PermissionDenied`.
    assert!(matches!(err, Error::Outbox { .. }), "{err:?}");
    assert!(
        text.contains("the queue is blocked: permission denied"),
        "{text}"
    );
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert_eq!(
        bus.outbox_stats().await.unwrap().unwrap().depth,
        1,
        "the message stays queued"
    );
    // Count the resends of seq0 over 6 s: bounded by the growing wait (1, 2, 4 s …).
    let start = tokio::time::Instant::now();
    let mut copies = 0;
    while start.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), seen.messages.next()).await
        {
            copies += 1;
        }
    }
    assert!(copies <= 5, "seq0 was resent {copies} times in 6 s");
    eprintln!("unconfirmable outbox: flush failed with the fix named; seq0 resent {copies} times in 6 s (before: ~every 2 s forever), 0 dead-lettered");
}

/// In lame duck mode the server still serves the connection until its grace period ends: the
/// outbox goes on sending instead of stopping for the whole period. Before: the drainer stopped
/// for ~10 s while the connection still worked.
#[tokio::test]
async fn the_outbox_keeps_sending_during_lame_duck() {
    let server = NatsServer::builder()
        .config("lame_duck_grace_period: \"5s\"\nlame_duck_duration: \"30s\"")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let watcher = NatsBroker::connect(nats_options(&server.url(), Duration::from_secs(2)))
        .await
        .unwrap();
    wait_state(&watcher, bus::ConnectionState::Connected, GUARD).await;
    let mut seen = watcher.subscribe("plugin.outbound.>", None).await.unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .connect()
        .await
        .unwrap();
    wait_state_bus(&bus).await;
    server.lame_duck();
    let mut w = bus.watch_state();
    tokio::time::timeout(GUARD, w.wait_for(|s| *s == bus::ConnectionState::LameDuck))
        .await
        .unwrap()
        .unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..100 {
        outbound("ld", &format!("m{i}"), "x")
            .publish(&bus)
            .await
            .unwrap();
    }
    let mut got = 0;
    while got < 100 {
        match tokio::time::timeout(Duration::from_secs(3), seen.messages.next()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    let took = started.elapsed();
    assert_eq!(got, 100, "only {got} of 100 arrived during lame duck");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: the drainer waited out the grace period"
    );
    eprintln!("lame duck: 100/100 delivered in {took:?} while the server was in lame duck mode");
}
