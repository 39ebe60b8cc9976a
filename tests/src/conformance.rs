//! The broker conformance suite: free async functions taking `&dyn Broker`, run unchanged on
//! [`LocalBroker`](bus::LocalBroker) and on a real nats-server (after object_store's
//! `integration.rs`).
//!
//! Every function uses subjects under a fresh random prefix, so several can share one server, and
//! keeps to one broker handle: NATS orders what one connection sends, so a message published
//! after `subscribe` returns is routed to that subscription without any sleep, and after
//! [`Broker::confirm`] everything published before sits in the subscriptions' buffers.
//!
//! Run them one `#[tokio::test]` each with [`conformance_tests!`](crate::conformance_tests), or
//! all at once with [`all`].

use std::time::Duration;

use bus::{Broker, ConnectionState, Error, Headers, RawMessage, RawSubscription};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

/// How long any single receive may take before the check fails instead of hanging.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend offers that the checks must know.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// The broker's per-subscription buffer, in messages.
    pub subscription_capacity: usize,
    /// Whether every dropped message is counted (local), or only most of them (NATS, whose
    /// slow-consumer events can themselves be dropped).
    pub exact_drop_count: bool,
}

impl Caps {
    /// The local broker's capabilities with these options.
    pub fn local(options: &bus::LocalOptions) -> Caps {
        Caps {
            subscription_capacity: options.subscription_capacity,
            exact_drop_count: true,
        }
    }
}

/// A broker under test and its capabilities; what [`conformance_tests!`](crate::conformance_tests)
/// set-up functions return. Holding it keeps whatever the broker needs (a server) alive.
pub trait Fixture {
    /// The broker.
    fn broker(&self) -> &dyn Broker;
    /// Its capabilities.
    fn caps(&self) -> Caps;
}

/// One conformance check, adapted to a common signature.
pub type Check = for<'a> fn(&'a dyn Broker, Caps) -> BoxFuture<'a, ()>;

/// Every check, by name. [`conformance_tests!`](crate::conformance_tests) names each of these.
pub const CHECKS: &[(&str, Check)] = &[
    ("state_connected", |b, _| state_connected(b).boxed()),
    ("exact_subjects", |b, _| exact_subjects(b).boxed()),
    ("star_wildcard", |b, _| star_wildcard(b).boxed()),
    ("full_wildcard", |b, _| full_wildcard(b).boxed()),
    ("full_wildcard_alone", |b, _| full_wildcard_alone(b).boxed()),
    ("star_star", |b, _| star_star(b).boxed()),
    ("tokens_with_dash_and_underscore", |b, _| {
        tokens_with_dash_and_underscore(b).boxed()
    }),
    ("overlapping_subscriptions", |b, _| {
        overlapping_subscriptions(b).boxed()
    }),
    ("several_subscribers_all_receive", |b, _| {
        several_subscribers_all_receive(b).boxed()
    }),
    ("queue_group_one_member_each", |b, _| {
        queue_group_one_member_each(b).boxed()
    }),
    ("queue_groups_are_independent", |b, _| {
        queue_groups_are_independent(b).boxed()
    }),
    ("headers_carried", |b, _| headers_carried(b).boxed()),
    ("request_reply", |b, _| request_reply(b).boxed()),
    ("request_first_reply_wins", |b, _| {
        request_first_reply_wins(b).boxed()
    }),
    ("no_responders_fast", |b, _| no_responders_fast(b).boxed()),
    ("request_timeout", |b, _| request_timeout(b).boxed()),
    ("oversize_refused", |b, _| oversize_refused(b).boxed()),
    ("unsubscribe_on_drop", |b, _| unsubscribe_on_drop(b).boxed()),
    ("fifo_order", |b, caps| fifo_order(b, caps).boxed()),
    ("confirm_after_burst", |b, caps| {
        confirm_after_burst(b, caps).boxed()
    }),
    ("slow_consumer_counted", |b, caps| {
        slow_consumer_counted(b, caps).boxed()
    }),
    ("invalid_subjects_refused", |b, _| {
        invalid_subjects_refused(b).boxed()
    }),
    ("invalid_headers_refused", |b, _| {
        invalid_headers_refused(b).boxed()
    }),
];

/// Runs the check called `name`; panics if there is none.
pub async fn run(name: &str, broker: &dyn Broker, caps: Caps) {
    let (_, check) = CHECKS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no conformance check named {name:?}"));
    check(broker, caps).await;
}

/// Runs every check in turn on one broker.
pub async fn all(broker: &dyn Broker, caps: Caps) {
    for (name, check) in CHECKS {
        tracing::info!(check = name, broker = broker.kind(), "conformance");
        check(broker, caps).await;
    }
}

/// One `#[tokio::test]` per conformance check. `$setup` is an `async fn() -> impl Fixture`.
///
/// ```text
/// async fn local() -> LocalFixture { .. }
/// bus_tests::conformance_tests!(local);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@each $setup;
            state_connected, exact_subjects, star_wildcard, full_wildcard, full_wildcard_alone,
            star_star, tokens_with_dash_and_underscore, overlapping_subscriptions,
            several_subscribers_all_receive, queue_group_one_member_each,
            queue_groups_are_independent, headers_carried, request_reply,
            request_first_reply_wins, no_responders_fast, request_timeout, oversize_refused,
            unsubscribe_on_drop, fifo_order, confirm_after_burst, slow_consumer_counted,
            invalid_subjects_refused, invalid_headers_refused);
        #[test]
        fn conformance_tests_cover_every_check() {
            let named: &[&str] = &[
                "state_connected", "exact_subjects", "star_wildcard", "full_wildcard",
                "full_wildcard_alone", "star_star", "tokens_with_dash_and_underscore",
                "overlapping_subscriptions", "several_subscribers_all_receive",
                "queue_group_one_member_each", "queue_groups_are_independent", "headers_carried",
                "request_reply", "request_first_reply_wins", "no_responders_fast",
                "request_timeout", "oversize_refused", "unsubscribe_on_drop", "fifo_order",
                "confirm_after_burst", "slow_consumer_counted", "invalid_subjects_refused",
                "invalid_headers_refused",
            ];
            let all: Vec<&str> = $crate::conformance::CHECKS.iter().map(|(n, _)| *n).collect();
            assert_eq!(named, &all[..], "conformance_tests! is out of date with CHECKS");
        }
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let fixture = $setup().await;
                $crate::conformance::run(
                    stringify!($name),
                    $crate::conformance::Fixture::broker(&fixture),
                    $crate::conformance::Fixture::caps(&fixture),
                )
                .await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh subject prefix `conf.<name>.<random>`, so checks never see each other's messages.
fn prefix(name: &str) -> String {
    format!("conf.{name}.c{}", bus::new_msg_id())
}

async fn sub(b: &dyn Broker, pattern: &str, queue: Option<&str>) -> RawSubscription {
    b.subscribe(pattern, queue)
        .await
        .unwrap_or_else(|e| panic!("subscribe {pattern:?} (queue {queue:?}): {e}"))
}

async fn publish(b: &dyn Broker, subject: &str, payload: impl Into<bytes::Bytes>) {
    b.publish(RawMessage::new(subject, payload))
        .await
        .unwrap_or_else(|e| panic!("publish {subject:?}: {e}"));
}

async fn confirm(b: &dyn Broker) {
    b.confirm().await.expect("confirm");
}

/// The next message, failing the check after [`RECV_TIMEOUT`].
async fn recv(s: &mut RawSubscription) -> RawMessage {
    match tokio::time::timeout(RECV_TIMEOUT, s.messages.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("subscription {:?} ended unexpectedly", s.pattern),
        Err(_) => panic!(
            "no message on {:?} within {RECV_TIMEOUT:?} (stats {:?})",
            s.pattern, s.stats
        ),
    }
}

/// Every message already buffered, without waiting. After [`Broker::confirm`] that is everything
/// published before it.
fn drain_now(s: &mut RawSubscription) -> Vec<RawMessage> {
    let mut out = Vec::new();
    // `unconstrained`: tokio's cooperative budget would otherwise report an empty channel after
    // 128 receives in one task poll.
    while let Some(Some(m)) = tokio::task::unconstrained(s.messages.next()).now_or_never() {
        out.push(m);
    }
    out
}

/// Subjects received up to and including `end`, skipping subjects outside this check's
/// namespace (a `>` subscriber on a shared server also sees other traffic).
async fn subjects_until(
    s: &mut RawSubscription,
    end: &str,
    mine: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let m = recv(s).await;
        if !mine(&m.subject) {
            continue;
        }
        let done = m.subject == end;
        out.push(m.subject);
        if done {
            return out;
        }
    }
}

fn text(m: &RawMessage) -> &str {
    std::str::from_utf8(&m.payload).expect("utf-8 payload")
}

/// Publishes each subject in order and checks that `pattern` receives exactly `expected` (in
/// order): the last subject of `publish` must match, and acts as the end marker.
async fn expect_matches(b: &dyn Broker, pattern: &str, subjects: &[&str], expected: &[&str]) {
    let mut s = sub(b, pattern, None).await;
    for subject in subjects {
        publish(b, subject, "x").await;
    }
    let end = *subjects.last().expect("at least one subject");
    assert_eq!(
        expected.last(),
        Some(&end),
        "the last subject published must be expected (it ends the check)"
    );
    let got = subjects_until(&mut s, end, |subj| subjects.contains(&subj)).await;
    assert_eq!(
        got, expected,
        "pattern {pattern:?} received the wrong subjects"
    );
}

// ---------------------------------------------------------------------------------------------
// Checks

/// The broker reports `Connected` (within [`RECV_TIMEOUT`]).
pub async fn state_connected(b: &dyn Broker) {
    let mut state = b.state();
    let wait = state.wait_for(|s| *s == ConnectionState::Connected);
    match tokio::time::timeout(RECV_TIMEOUT, wait).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("state watch closed before Connected"),
        Err(_) => panic!(
            "not Connected within {RECV_TIMEOUT:?}: {}",
            *b.state().borrow()
        ),
    }
    assert!(b.max_payload() > 0, "max_payload must be positive");
}

/// A literal pattern gets its own subject only: not a longer, shorter or sibling one.
pub async fn exact_subjects(b: &dyn Broker) {
    let p = prefix("exact");
    let exact = format!("{p}.a.b");
    let subjects = [
        format!("{p}.a"),
        format!("{p}.a.b.c"),
        format!("{p}.a.c"),
        format!("{p}.b.b"),
        exact.clone(),
    ];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(b, &exact, &subjects, &[&exact]).await;
    // Payloads and subjects arrive intact.
    let mut s = sub(b, &exact, None).await;
    publish(b, &exact, "payload-1").await;
    let m = recv(&mut s).await;
    assert_eq!(m.subject, exact);
    assert_eq!(text(&m), "payload-1");
    assert!(m.reply.is_none(), "a plain publish has no reply subject");
}

/// `a.*` matches exactly one more token: `a.b` and `a.c`, not `a` nor `a.b.c`.
pub async fn star_wildcard(b: &dyn Broker) {
    let p = prefix("star");
    let s = |t: &str| format!("{p}.{t}");
    let subjects = [s("a"), s("a.b.c"), s("b.x"), s("a.b"), s("a.c")];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(b, &s("a.*"), &subjects, &[&s("a.b"), &s("a.c")]).await;
    // A `*` in the middle.
    let subjects = [s("a.x"), s("a.x.c.d"), s("b.x.c"), s("a.x.c"), s("a.y.c")];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(b, &s("a.*.c"), &subjects, &[&s("a.x.c"), &s("a.y.c")]).await;
}

/// `a.>` matches one or more further tokens: `a.b`, `a.b.c`, never `a` itself.
pub async fn full_wildcard(b: &dyn Broker) {
    let p = prefix("full");
    let s = |t: &str| format!("{p}.{t}");
    let subjects = [s("a"), s("b.c"), s("a.b"), s("a.b.c.d"), s("a.x")];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(
        b,
        &s("a.>"),
        &subjects,
        &[&s("a.b"), &s("a.b.c.d"), &s("a.x")],
    )
    .await;
}

/// `>` alone matches every subject, single-token ones included.
pub async fn full_wildcard_alone(b: &dyn Broker) {
    // A single token unique to this run, so other traffic on a shared server is told apart.
    let single = format!("c{}", bus::new_msg_id());
    let deep = format!("{single}.x.y.z");
    let two = format!("{single}.x");
    let subjects = [single.as_str(), deep.as_str(), two.as_str()];
    expect_matches(b, ">", &subjects, &subjects).await;
}

/// `*.*` matches exactly two tokens.
pub async fn star_star(b: &dyn Broker) {
    let t = format!("c{}", bus::new_msg_id());
    let one = t.clone();
    let three = format!("{t}.x.y");
    let two = format!("{t}.x");
    let two_b = format!("{t}.y-z");
    let subjects = [one.as_str(), three.as_str(), two.as_str(), two_b.as_str()];
    expect_matches(b, "*.*", &subjects, &[&two, &two_b]).await;
    // `*` alone matches exactly one token.
    let subjects = [two.as_str(), three.as_str(), one.as_str()];
    expect_matches(b, "*", &subjects, &[&one]).await;
}

/// Tokens containing `-` and `_` are ordinary literals, matched whole.
pub async fn tokens_with_dash_and_underscore(b: &dyn Broker) {
    let p = prefix("chars");
    let s = |t: &str| format!("{p}.{t}");
    let subjects = [
        s("slack_a1"),
        s("slack"),
        s("slack-a1.x"),
        s("SLACK-A1"),
        s("slack-a"),
        s("slack-a1"),
    ];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(b, &s("slack-a1"), &subjects, &[&s("slack-a1")]).await;
    let subjects = [s("a_b-c.d_e"), s("a_b.d-e"), s("a_b-c.x-y_z")];
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    expect_matches(
        b,
        &s("a_b-c.*"),
        &subjects,
        &[&s("a_b-c.d_e"), &s("a_b-c.x-y_z")],
    )
    .await;
}

/// Several subscriptions matching one subject each get their own copy (NATS delivers once per
/// matching subscription), even on the same handle.
pub async fn overlapping_subscriptions(b: &dyn Broker) {
    let p = prefix("overlap");
    let subject = format!("{p}.a.b");
    let mut subs = Vec::new();
    for pattern in [
        subject.clone(),
        format!("{p}.a.*"),
        format!("{p}.*.b"),
        format!("{p}.>"),
    ] {
        subs.push(sub(b, &pattern, None).await);
    }
    publish(b, &subject, "one").await;
    confirm(b).await;
    for s in &mut subs {
        let got = drain_now(s);
        assert_eq!(
            got.len(),
            1,
            "{:?} got {} copies, want 1",
            s.pattern,
            got.len()
        );
        assert_eq!(text(&got[0]), "one");
    }
}

/// Every plain subscriber of a subject gets every message.
pub async fn several_subscribers_all_receive(b: &dyn Broker) {
    let subject = format!("{}.x", prefix("fanout"));
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(sub(b, &subject, None).await);
    }
    for i in 0..20 {
        publish(b, &subject, i.to_string()).await;
    }
    for s in &mut subs {
        for i in 0..20 {
            assert_eq!(text(&recv(s).await), i.to_string());
        }
        assert_eq!(s.stats.dropped(), 0);
    }
}

/// In a queue group each message goes to exactly one member; the total is exact, the load is
/// shared, and a plain subscriber alongside gets everything.
pub async fn queue_group_one_member_each(b: &dyn Broker) {
    const N: usize = 300;
    let p = prefix("queue");
    let subject = format!("{p}.work");
    let mut members = Vec::new();
    for pattern in [subject.clone(), subject.clone(), format!("{p}.*")] {
        // The third member joins through a wildcard: groups are by name, not by pattern.
        members.push(sub(b, &pattern, Some("workers")).await);
    }
    let mut plain = sub(b, &subject, None).await;
    for i in 0..N {
        publish(b, &subject, i.to_string()).await;
    }
    confirm(b).await;
    let mut seen = vec![0u32; N];
    for m in &mut members {
        let got = drain_now(m);
        assert!(
            !got.is_empty(),
            "member {:?} got none of {N} messages: the group must share the load",
            m.pattern
        );
        for msg in got {
            let i: usize = text(&msg).parse().expect("index payload");
            seen[i] += 1;
        }
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "each message must reach exactly one member; (index, copies) wrong: {wrong:?}"
    );
    let all: Vec<String> = drain_now(&mut plain)
        .iter()
        .map(|m| text(m).to_string())
        .collect();
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(
        all, want,
        "the plain subscriber must get every message in order"
    );
}

/// Two queue groups on one subject each get every message once.
pub async fn queue_groups_are_independent(b: &dyn Broker) {
    const N: usize = 50;
    let subject = format!("{}.jobs", prefix("groups"));
    let mut a = [
        sub(b, &subject, Some("a")).await,
        sub(b, &subject, Some("a")).await,
    ];
    let mut c = [
        sub(b, &subject, Some("c")).await,
        sub(b, &subject, Some("c")).await,
    ];
    for i in 0..N {
        publish(b, &subject, i.to_string()).await;
    }
    confirm(b).await;
    for (name, group) in [("a", &mut a), ("c", &mut c)] {
        let mut got: Vec<usize> = group
            .iter_mut()
            .flat_map(drain_now)
            .map(|m| text(&m).parse().expect("index payload"))
            .collect();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "group {name} must get each message exactly once"
        );
    }
}

/// Headers arrive as sent, several values of one name included, in order.
pub async fn headers_carried(b: &dyn Broker) {
    let subject = format!("{}.h", prefix("headers"));
    let mut s = sub(b, &subject, None).await;
    let mut h = Headers::new();
    h.insert("Tenant", "acme");
    h.append("X-Multi", "first");
    h.append("X-Multi", "second");
    h.append("X-Multi", "third");
    h.insert("X-Dash_Under", "a-b_c");
    b.publish(RawMessage::new(&subject, "body").with_headers(h))
        .await
        .expect("publish with headers");
    let m = recv(&mut s).await;
    assert_eq!(text(&m), "body");
    assert_eq!(m.headers.get("Tenant"), Some("acme"));
    assert_eq!(
        m.headers.get_all("X-Multi").collect::<Vec<_>>(),
        ["first", "second", "third"]
    );
    assert_eq!(m.headers.get("X-Dash_Under"), Some("a-b_c"));
    assert_eq!(m.headers.get("Missing"), None);
    // A message without headers arrives without them.
    publish(b, &subject, "plain").await;
    let m = recv(&mut s).await;
    assert_eq!(text(&m), "plain");
    assert!(m.headers.is_empty(), "unexpected headers {:?}", m.headers);
}

/// Answers one request on `s` with `f(request)`, publishing to its reply subject.
async fn answer_one(
    b: &dyn Broker,
    s: &mut RawSubscription,
    f: impl FnOnce(&RawMessage) -> RawMessage,
) -> RawMessage {
    let req = recv(s).await;
    let reply_to = req
        .reply
        .clone()
        .expect("a request carries a reply subject");
    let mut reply = f(&req);
    reply.subject = reply_to;
    b.publish(reply).await.expect("publish reply");
    req
}

/// A request reaches the responder with its headers and a reply subject; the reply comes back
/// with its own headers.
pub async fn request_reply(b: &dyn Broker) {
    let subject = format!("{}.svc", prefix("request"));
    let mut responder = sub(b, &subject, None).await;
    let mut h = Headers::new();
    h.insert("Bus-Correlation-Id", "corr-1");
    h.append("X-Multi", "1");
    h.append("X-Multi", "2");
    let req = RawMessage::new(&subject, "ping").with_headers(h);
    let (reply, seen) = tokio::join!(
        b.request(req, RECV_TIMEOUT),
        answer_one(b, &mut responder, |req| {
            let mut h = Headers::new();
            h.insert(
                "Bus-Correlation-Id",
                req.headers
                    .get("Bus-Correlation-Id")
                    .unwrap_or("none")
                    .to_owned(),
            );
            h.append("X-Echo", text(req).to_owned());
            RawMessage::new("", format!("{}-pong", text(req))).with_headers(h)
        })
    );
    assert_eq!(text(&seen), "ping");
    assert_eq!(
        seen.headers.get_all("X-Multi").collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_ne!(seen.reply.as_deref(), Some(subject.as_str()));
    let reply = reply.expect("request must get the reply");
    assert_eq!(text(&reply), "ping-pong");
    assert_eq!(reply.headers.get("Bus-Correlation-Id"), Some("corr-1"));
    assert_eq!(reply.headers.get("X-Echo"), Some("ping"));
    // Two requests in a row use distinct reply subjects.
    let (r2, seen2) = tokio::join!(
        b.request(RawMessage::new(&subject, "again"), RECV_TIMEOUT),
        answer_one(b, &mut responder, |req| RawMessage::new(
            "",
            text(req).to_uppercase()
        ))
    );
    assert_eq!(text(&r2.expect("second request")), "AGAIN");
    assert_ne!(
        seen2.reply, seen.reply,
        "each request needs its own reply subject"
    );
}

/// With two responders, the request completes with the first reply.
pub async fn request_first_reply_wins(b: &dyn Broker) {
    let subject = format!("{}.svc", prefix("first"));
    let mut r1 = sub(b, &subject, None).await;
    let mut r2 = sub(b, &subject, None).await;
    let (reply, _, _) = tokio::join!(
        b.request(RawMessage::new(&subject, "q"), RECV_TIMEOUT),
        answer_one(b, &mut r1, |_| RawMessage::new("", "one")),
        answer_one(b, &mut r2, |_| RawMessage::new("", "two")),
    );
    let reply = reply.expect("request must get a reply");
    assert!(
        ["one", "two"].contains(&text(&reply)),
        "unexpected reply {:?}",
        text(&reply)
    );
    // The broker still serves requests after the extra reply.
    let (again, _) = tokio::join!(
        b.request(RawMessage::new(&subject, "q2"), RECV_TIMEOUT),
        async {
            answer_one(b, &mut r1, |_| RawMessage::new("", "three")).await;
            answer_one(b, &mut r2, |_| RawMessage::new("", "three")).await;
        }
    );
    assert_eq!(text(&again.expect("second request")), "three");
}

/// A request nobody subscribes to fails with `NoResponders`, not with a timeout: the request
/// timeout is 30 s and the check gives up after [`RECV_TIMEOUT`].
pub async fn no_responders_fast(b: &dyn Broker) {
    let subject = format!("{}.nobody", prefix("noresp"));
    let request = b.request(
        RawMessage::new(&subject, "anyone?"),
        Duration::from_secs(30),
    );
    match tokio::time::timeout(RECV_TIMEOUT, request).await {
        Ok(Err(Error::NoResponders { subject: s })) => assert_eq!(s, subject),
        Ok(other) => panic!("want NoResponders, got {other:?}"),
        Err(_) => panic!("no-responders must fail fast, not wait for the request timeout"),
    }
}

/// A request whose responder never answers fails with `Timeout` after the request timeout.
pub async fn request_timeout(b: &dyn Broker) {
    let subject = format!("{}.silent", prefix("timeout"));
    let mut silent = sub(b, &subject, None).await;
    let timeout = Duration::from_millis(300);
    let request = b.request(RawMessage::new(&subject, "hello?"), timeout);
    match tokio::time::timeout(RECV_TIMEOUT, request).await {
        Ok(Err(Error::Timeout {
            subject: s,
            timeout: t,
        })) => {
            assert_eq!(s, subject);
            assert_eq!(t, timeout);
        }
        Ok(other) => panic!("want Timeout, got {other:?}"),
        Err(_) => panic!("the request outlived its {timeout:?} timeout"),
    }
    // The request did reach the silent responder.
    assert_eq!(text(&recv(&mut silent).await), "hello?");
}

/// A message over `max_payload` (payload plus headers) is refused with `PayloadTooLarge`,
/// nothing is delivered, and the broker keeps working.
pub async fn oversize_refused(b: &dyn Broker) {
    let subject = format!("{}.big", prefix("oversize"));
    let mut s = sub(b, &subject, None).await;
    let max = b.max_payload();
    let too_big = vec![b'x'; max + 1];
    match b.publish(RawMessage::new(&subject, too_big)).await {
        Err(Error::PayloadTooLarge {
            subject: s,
            size,
            max: m,
        }) => {
            assert_eq!(s, subject);
            assert_eq!(size, max + 1);
            assert_eq!(m, max);
        }
        other => panic!("want PayloadTooLarge, got {other:?}"),
    }
    // Headers count too: a payload that fits alone does not fit with headers.
    let mut h = Headers::new();
    h.insert("X-Pad", "0123456789");
    let msg = RawMessage::new(&subject, vec![b'y'; max - 5]).with_headers(h);
    assert!(
        matches!(b.publish(msg).await, Err(Error::PayloadTooLarge { .. })),
        "payload plus headers over max_payload must be refused"
    );
    publish(b, &subject, "small").await;
    confirm(b).await;
    let got = drain_now(&mut s);
    assert_eq!(got.len(), 1, "only the small message may arrive");
    assert_eq!(text(&got[0]), "small");
}

/// Dropping a subscription unsubscribes: its subject has no responders afterwards.
pub async fn unsubscribe_on_drop(b: &dyn Broker) {
    let subject = format!("{}.x", prefix("unsub"));
    let mut s = sub(b, &subject, None).await;
    let mut other = sub(b, &format!("{subject}.>"), None).await;
    publish(b, &subject, "before").await;
    assert_eq!(text(&recv(&mut s).await), "before");
    drop(s);
    match b
        .request(RawMessage::new(&subject, "after"), RECV_TIMEOUT)
        .await
    {
        Err(Error::NoResponders { .. }) => {}
        other => panic!("a dropped subscription must not count as a responder, got {other:?}"),
    }
    // Other subscriptions are untouched.
    publish(b, &format!("{subject}.y"), "still").await;
    assert_eq!(text(&recv(&mut other).await), "still");
}

/// One subscriber receives 10,000 messages from one publisher in publish order.
pub async fn fifo_order(b: &dyn Broker, caps: Caps) {
    const N: usize = 10_000;
    let subject = format!("{}.seq", prefix("fifo"));
    let mut s = sub(b, &subject, None).await;
    // Publish in chunks that fit the buffer, so the check never depends on reading speed.
    let chunk = (caps.subscription_capacity / 2).clamp(1, 2_000);
    let mut next = 0;
    while next < N {
        let end = (next + chunk).min(N);
        for i in next..end {
            publish(b, &subject, i.to_string()).await;
        }
        for i in next..end {
            let m = recv(&mut s).await;
            assert_eq!(text(&m), i.to_string(), "message out of order");
        }
        next = end;
    }
    assert_eq!(s.stats.dropped(), 0);
}

/// After `confirm`, every message published before it is already in the subscriber's buffer.
pub async fn confirm_after_burst(b: &dyn Broker, caps: Caps) {
    let n = caps.subscription_capacity.min(5_000);
    let subject = format!("{}.burst", prefix("confirm"));
    let mut s = sub(b, &subject, None).await;
    for i in 0..n {
        publish(b, &subject, i.to_string()).await;
    }
    confirm(b).await;
    let got = drain_now(&mut s);
    assert_eq!(
        got.len(),
        n,
        "confirm returned before every message was delivered"
    );
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, m)| text(m) == i.to_string()));
}

/// A subscriber that does not read loses what overflows its buffer, and the loss is counted
/// (not silent); the publisher is never blocked; the survivors keep their order, and the
/// subscription works afterwards.
pub async fn slow_consumer_counted(b: &dyn Broker, caps: Caps) {
    let capacity = caps.subscription_capacity;
    let total = capacity * 2 + 10;
    let subject = format!("{}.flood", prefix("slow"));
    let mut s = sub(b, &subject, None).await;
    for i in 0..total {
        // Publishing never waits for the subscriber: a blocked publish would hang here.
        publish(b, &subject, i.to_string()).await;
    }
    confirm(b).await;
    // NATS counts drops from an event task: give it time to catch up, bounded.
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while s.stats.dropped() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        s.stats.dropped() > 0,
        "{total} messages into a buffer of {capacity}: drops must be counted"
    );
    // Read one to make room, then a marker on the same subject tells where the survivors end.
    let mut survivors: Vec<usize> = vec![text(&recv(&mut s).await).parse().expect("index")];
    publish(b, &subject, "end").await;
    loop {
        let m = recv(&mut s).await;
        if text(&m) == "end" {
            break;
        }
        survivors.push(text(&m).parse().expect("index payload"));
    }
    assert!(
        survivors.windows(2).all(|w| w[0] < w[1]),
        "survivors must keep publish order"
    );
    let dropped = usize::try_from(s.stats.dropped()).expect("fits");
    if caps.exact_drop_count {
        assert_eq!(
            survivors.len() + dropped,
            total,
            "every message is either delivered or counted as dropped"
        );
        assert_eq!(
            survivors.len(),
            capacity,
            "a full buffer holds `capacity` messages"
        );
    } else {
        assert!(
            survivors.len() + dropped <= total,
            "{} survivors + {dropped} dropped > {total} published",
            survivors.len()
        );
    }
    // The subscription still works once the subscriber catches up.
    publish(b, &subject, "after").await;
    assert_eq!(text(&recv(&mut s).await), "after");
}

/// Invalid subjects and patterns are refused with `InvalidSubject`.
pub async fn invalid_subjects_refused(b: &dyn Broker) {
    for subject in [
        "", "a..b", ".a", "a.", "a.*", "a.>", "*", ">", "a b", "a\tb", "a\nb",
    ] {
        match b.publish(RawMessage::new(subject, "x")).await {
            Err(Error::InvalidSubject { subject: s, .. }) => assert_eq!(s, subject),
            other => panic!("publish to {subject:?}: want InvalidSubject, got {other:?}"),
        }
    }
    for pattern in ["", "a..b", ".a", "a.", "a.>.b", ">.a", "a b", "a\r\nb"] {
        match b.subscribe(pattern, None).await {
            Err(Error::InvalidSubject { subject: s, .. }) => assert_eq!(s, pattern),
            other => panic!(
                "subscribe to {pattern:?}: want InvalidSubject, got {:?}",
                other.map(|s| s.pattern)
            ),
        }
    }
    match b
        .request(RawMessage::new("a.*", "x"), Duration::from_secs(1))
        .await
    {
        Err(Error::InvalidSubject { .. }) => {}
        other => panic!("request to a wildcard: want InvalidSubject, got {other:?}"),
    }
}

/// Headers NATS cannot carry are refused with `InvalidHeader` before anything is delivered (a
/// CR/LF in a value would inject protocol; a name with `:`, white space or non-ASCII cannot be
/// written); what NATS can carry (unicode values, long values, `-`/`_` names) arrives intact.
pub async fn invalid_headers_refused(b: &dyn Broker) {
    let subject = format!("{}.h", prefix("badheaders"));
    let mut s = sub(b, &subject, None).await;
    let bad: &[(&str, &str)] = &[
        ("", "v"),
        ("a:b", "v"),
        ("a b", "v"),
        ("Tab\tName", "v"),
        ("Caf\u{e9}", "v"),
        ("Nul\0", "v"),
        ("X-Inject", "a\r\nPUB evil 1"),
        ("X-Lf", "a\nb"),
        ("X-Nul", "a\0b"),
    ];
    for (name, value) in bad {
        let mut h = Headers::new();
        h.insert(name.to_string(), value.to_string());
        match b
            .publish(RawMessage::new(&subject, "x").with_headers(h))
            .await
        {
            Err(Error::InvalidHeader { name: n, .. }) => assert_eq!(n, *name),
            other => panic!("header {name:?}: {value:?}: want InvalidHeader, got {other:?}"),
        }
    }
    let mut h = Headers::new();
    h.insert("X-Unicode", "h\u{e9}llo \u{1f980} \u{4e16}\u{754c}");
    h.insert("X-Long", "v".repeat(2_000));
    b.publish(RawMessage::new(&subject, "ok").with_headers(h))
        .await
        .expect("headers NATS can carry are accepted");
    confirm(b).await;
    let got = drain_now(&mut s);
    assert_eq!(got.len(), 1, "only the valid message may arrive: {got:?}");
    assert_eq!(
        got[0].headers.get("X-Unicode"),
        Some("h\u{e9}llo \u{1f980} \u{4e16}\u{754c}")
    );
    assert_eq!(got[0].headers.get("X-Long").map(str::len), Some(2_000));
}

// ---------------------------------------------------------------------------------------------
// Durable consumers (`Broker::consume`)
//
// Run on a broker whose durable consumers cover `durable.>`: on NATS, a JetStream stream on
// `durable.>` (see `tests/durable_conformance.rs`); the local broker needs nothing.

use bus::durable::{Delivery, DurableSpec, DurableSubscription};

/// The subjects every durable check publishes under: a broker under test must have durable
/// consumers available for them (on NATS, a stream covering this pattern).
pub const DURABLE_SUBJECTS: &str = "durable.>";

/// Every durable check, by name. [`durable_conformance_tests!`](crate::durable_conformance_tests)
/// names each of these.
pub const DURABLE_CHECKS: &[(&str, Check)] = &[
    ("durable_redelivery_after_nak", |b, _| {
        durable_redelivery_after_nak(b).boxed()
    }),
    ("durable_resume_after_detach", |b, _| {
        durable_resume_after_detach(b).boxed()
    }),
    ("durable_max_deliver", |b, _| durable_max_deliver(b).boxed()),
    ("durable_ack_wait_expiry", |b, _| {
        durable_ack_wait_expiry(b).boxed()
    }),
    ("durable_shared_by_pullers", |b, _| {
        durable_shared_by_pullers(b).boxed()
    }),
    ("durable_invalid_spec_refused", |b, _| {
        durable_invalid_spec_refused(b).boxed()
    }),
];

/// Runs the durable check called `name`; panics if there is none.
pub async fn run_durable(name: &str, broker: &dyn Broker, caps: Caps) {
    let (_, check) = DURABLE_CHECKS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no durable conformance check named {name:?}"));
    check(broker, caps).await;
}

/// One `#[tokio::test]` per durable check. `$setup` is an `async fn() -> impl Fixture` whose
/// broker offers durable consumers on [`DURABLE_SUBJECTS`].
#[macro_export]
macro_rules! durable_conformance_tests {
    ($setup:path) => {
        $crate::durable_conformance_tests!(@each $setup;
            durable_redelivery_after_nak, durable_resume_after_detach, durable_max_deliver,
            durable_ack_wait_expiry, durable_shared_by_pullers, durable_invalid_spec_refused);
        #[test]
        fn durable_conformance_tests_cover_every_check() {
            let named: &[&str] = &[
                "durable_redelivery_after_nak", "durable_resume_after_detach",
                "durable_max_deliver", "durable_ack_wait_expiry", "durable_shared_by_pullers",
                "durable_invalid_spec_refused",
            ];
            let all: Vec<&str> =
                $crate::conformance::DURABLE_CHECKS.iter().map(|(n, _)| *n).collect();
            assert_eq!(named, &all[..], "durable_conformance_tests! is out of date with DURABLE_CHECKS");
        }
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let fixture = $setup().await;
                $crate::conformance::run_durable(
                    stringify!($name),
                    $crate::conformance::Fixture::broker(&fixture),
                    $crate::conformance::Fixture::caps(&fixture),
                )
                .await;
            }
        )*
    };
}

/// A fresh durable check namespace: `(durable name, subject prefix)`.
fn durable_names(check: &str) -> (String, String) {
    let id = bus::new_msg_id();
    (format!("d{id}"), format!("durable.{check}.c{id}"))
}

async fn attach(b: &dyn Broker, spec: &DurableSpec) -> DurableSubscription {
    b.consume(spec)
        .await
        .unwrap_or_else(|e| panic!("consume {:?} on {:?}: {e}", spec.name, spec.pattern))
}

/// The next delivery, failing the check after [`RECV_TIMEOUT`].
async fn delivery(s: &mut DurableSubscription) -> Delivery {
    match tokio::time::timeout(RECV_TIMEOUT, s.deliveries.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("durable {:?} ended unexpectedly", s.name),
        Err(_) => panic!(
            "no delivery on durable {:?} within {RECV_TIMEOUT:?}",
            s.name
        ),
    }
}

/// Whether nothing is delivered for `window`.
async fn quiet_for(
    s: &mut DurableSubscription,
    window: Duration,
) -> std::result::Result<(), Delivery> {
    match tokio::time::timeout(window, s.deliveries.next()).await {
        Ok(Some(d)) => Err(d),
        _ => Ok(()),
    }
}

fn delivery_text(d: &Delivery) -> String {
    String::from_utf8(d.message.payload.to_vec()).expect("utf-8 payload")
}

/// A nak'ed delivery comes again (after its delay) with its count raised; once acked it never
/// comes again.
pub async fn durable_redelivery_after_nak(b: &dyn Broker) {
    let (name, prefix) = durable_names("nak");
    let spec = DurableSpec::new(&name, format!("{prefix}.*"));
    let mut s = attach(b, &spec).await;
    publish(b, &format!("{prefix}.a"), "one").await;
    confirm(b).await;
    let first = delivery(&mut s).await;
    assert_eq!(delivery_text(&first), "one");
    assert_eq!(first.delivered(), 1);
    assert!(
        first.message.reply.is_none(),
        "settling goes through the acker"
    );
    let naked = std::time::Instant::now();
    first
        .acker
        .nak(Duration::from_millis(200))
        .await
        .expect("nak");
    let second = delivery(&mut s).await;
    assert!(
        naked.elapsed() >= Duration::from_millis(150),
        "redelivered after {:?}, before the nak's delay",
        naked.elapsed()
    );
    assert_eq!(delivery_text(&second), "one");
    assert_eq!(second.delivered(), 2);
    assert_eq!(second.message.subject, format!("{prefix}.a"));
    second.acker.ack().await.expect("ack");
    if let Err(d) = quiet_for(&mut s, Duration::from_millis(500)).await {
        panic!(
            "an acked message came again: {:?} (delivery {})",
            delivery_text(&d),
            d.delivered()
        );
    }
}

/// Messages published while no puller is attached are kept for the durable, by name, and
/// delivered in order when one attaches again; what was acked before does not come back.
pub async fn durable_resume_after_detach(b: &dyn Broker) {
    let (name, prefix) = durable_names("resume");
    let spec = DurableSpec::new(&name, format!("{prefix}.>"));
    let mut s = attach(b, &spec).await;
    publish(b, &format!("{prefix}.x"), "before").await;
    confirm(b).await;
    let d = delivery(&mut s).await;
    assert_eq!(delivery_text(&d), "before");
    d.acker.ack().await.expect("ack");
    // Settled before the puller goes: give an acknowledgement sent over a network time to land.
    confirm(b).await;
    drop(s);
    for i in 0..5 {
        publish(b, &format!("{prefix}.x.y"), format!("while down {i}")).await;
    }
    confirm(b).await;
    let mut back = attach(b, &spec).await;
    for i in 0..5 {
        let d = delivery(&mut back).await;
        assert_eq!(
            delivery_text(&d),
            format!("while down {i}"),
            "in publish order"
        );
        assert_eq!(d.delivered(), 1, "first delivery of each");
        d.acker.ack().await.expect("ack");
    }
    if let Err(d) = quiet_for(&mut back, Duration::from_millis(300)).await {
        panic!(
            "unexpected delivery after the backlog: {:?}",
            delivery_text(&d)
        );
    }
}

/// A message is delivered `max_deliver` times at most; the ones behind it go on.
pub async fn durable_max_deliver(b: &dyn Broker) {
    let (name, prefix) = durable_names("maxdeliver");
    let spec = DurableSpec::new(&name, format!("{prefix}.*")).max_deliver(3);
    let mut s = attach(b, &spec).await;
    publish(b, &format!("{prefix}.a"), "poison").await;
    confirm(b).await;
    for n in 1..=3 {
        let d = delivery(&mut s).await;
        assert_eq!(delivery_text(&d), "poison");
        assert_eq!(d.delivered(), n);
        d.acker.nak(Duration::ZERO).await.expect("nak");
    }
    publish(b, &format!("{prefix}.a"), "good").await;
    confirm(b).await;
    let d = delivery(&mut s).await;
    assert_eq!(
        delivery_text(&d),
        "good",
        "no 4th delivery of the poison message"
    );
    assert_eq!(d.delivered(), 1);
    d.acker.ack().await.expect("ack");
    if let Err(d) = quiet_for(&mut s, Duration::from_millis(500)).await {
        panic!(
            "delivered again: {:?} (delivery {})",
            delivery_text(&d),
            d.delivered()
        );
    }
}

/// A delivery not settled within the ack wait is delivered again; `in_progress` restarts the
/// wait.
pub async fn durable_ack_wait_expiry(b: &dyn Broker) {
    let (name, prefix) = durable_names("ackwait");
    let wait = Duration::from_millis(400);
    let spec = DurableSpec::new(&name, format!("{prefix}.*")).ack_wait(wait);
    let mut s = attach(b, &spec).await;
    publish(b, &format!("{prefix}.a"), "slow").await;
    confirm(b).await;
    let first = delivery(&mut s).await;
    let got = std::time::Instant::now();
    assert_eq!(first.delivered(), 1);
    // Kept unsettled (a dropped acker would nak at once).
    let again = delivery(&mut s).await;
    assert!(
        got.elapsed() >= wait - Duration::from_millis(50),
        "redelivered after {:?}, before the ack wait",
        got.elapsed()
    );
    assert_eq!(delivery_text(&again), "slow");
    assert_eq!(again.delivered(), 2);
    // Working on it: progress twice, each within the wait; no redelivery meanwhile.
    for _ in 0..2 {
        tokio::time::sleep(wait / 2).await;
        again.acker.in_progress().await.expect("in progress");
    }
    confirm(b).await;
    if let Err(d) = quiet_for(&mut s, wait / 2).await {
        panic!(
            "redelivered despite in_progress: delivery {}",
            d.delivered()
        );
    }
    again.acker.ack().await.expect("ack");
    drop(first);
    if let Err(d) = quiet_for(&mut s, wait * 2).await {
        panic!("an acked message came again: delivery {}", d.delivered());
    }
}

/// Several pullers on one durable name (a queue group of instances) share its messages: each
/// is handled by exactly one of them, and both do some of the work.
pub async fn durable_shared_by_pullers(b: &dyn Broker) {
    let (name, prefix) = durable_names("shared");
    let spec = DurableSpec::new(&name, format!("{prefix}.*"))
        .queue("workers")
        .prefetch(4);
    let a = attach(b, &spec).await;
    let c = attach(b, &spec).await;
    let total = 200usize;
    for i in 0..total {
        publish(b, &format!("{prefix}.m"), i.to_string()).await;
    }
    confirm(b).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let work = |mut s: DurableSubscription, who: usize| {
        let seen = seen.clone();
        async move {
            loop {
                let done = seen.lock().expect("lock").len() >= total;
                if done {
                    return s;
                }
                let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(500), s.deliveries.next()).await
                else {
                    continue;
                };
                let i: usize = delivery_text(&d).parse().expect("index");
                seen.lock().expect("lock").push((i, who, d.delivered()));
                // A little work, so that the other puller gets its share.
                tokio::time::sleep(Duration::from_millis(1)).await;
                d.acker.ack().await.expect("ack");
            }
        }
    };
    let both = futures::future::join(work(a, 0), work(c, 1));
    let (_a, _c) = tokio::time::timeout(RECV_TIMEOUT * 3, both)
        .await
        .expect("every message handled in time");
    let seen = seen.lock().expect("lock").clone();
    let mut indexes: Vec<usize> = seen.iter().map(|(i, _, _)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..total).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        seen.iter().all(|(_, _, n)| *n == 1),
        "no redelivery was needed"
    );
    let by_a = seen.iter().filter(|(_, who, _)| *who == 0).count();
    assert!(
        by_a > 0 && by_a < total,
        "both pullers work: {by_a} of {total} went to the first"
    );
}

/// An invalid durable name or pattern is refused before anything is created.
pub async fn durable_invalid_spec_refused(b: &dyn Broker) {
    for (name, pattern) in [
        ("a.b", "durable.x"),
        ("", "durable.x"),
        ("a b", "durable.x"),
    ] {
        match b.consume(&DurableSpec::new(name, pattern)).await {
            Err(Error::Durable { name: n, .. }) => assert_eq!(n, name),
            other => panic!(
                "durable name {name:?}: want Error::Durable, got {:?}",
                other.map(|s| s.name)
            ),
        }
    }
    for pattern in ["", "durable..x", "durable.>.x"] {
        match b.consume(&DurableSpec::new("ok", pattern)).await {
            Err(Error::InvalidSubject { .. }) => {}
            other => panic!(
                "pattern {pattern:?}: want InvalidSubject, got {:?}",
                other.map(|s| s.name)
            ),
        }
    }
}
