//! Differential test: for a generated set of patterns and subjects, the deliveries through
//! `LocalBroker` equal the deliveries through a real nats-server (and both equal the reference
//! `bus_subject::matches`). Queue groups are left out: which member gets a message is the
//! broker's choice.

use std::collections::BTreeMap;
use std::time::Duration;

use bus::{Broker, ConnectionState, LocalBroker, NatsBroker, NatsOptions, RawMessage};
use bus_tests::server::NatsServer;
use futures::StreamExt;

const TOKENS: [&str; 3] = ["a", "b", "c"];

/// Every sequence of 1..=3 tokens drawn from `alphabet`.
fn sequences(alphabet: &[&str]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = alphabet.iter().map(|t| vec![t.to_string()]).collect();
    let mut last = out.clone();
    for _ in 1..3 {
        let next: Vec<Vec<String>> = last
            .iter()
            .flat_map(|s| {
                alphabet.iter().map(move |t| {
                    let mut v = s.clone();
                    v.push(t.to_string());
                    v
                })
            })
            .collect();
        out.extend(next.iter().cloned());
        last = next;
    }
    out
}

fn subjects() -> Vec<String> {
    sequences(&TOKENS)
        .into_iter()
        .map(|s| s.join("."))
        .collect()
}

/// Literal and `*` tokens at every position, and every prefix followed by `>` (including `>`
/// alone): covers `*`, `>`, `a.*` vs `a`, `a.>` vs `a`, `*.*`.
fn patterns() -> Vec<String> {
    let mut p: Vec<String> = sequences(&["a", "b", "*"])
        .into_iter()
        .map(|s| s.join("."))
        .collect();
    p.push(">".into());
    for prefix in sequences(&["a", "*"]).into_iter().filter(|s| s.len() < 3) {
        p.push(format!("{}.>", prefix.join(".")));
    }
    p
}

/// Subscribes every pattern, publishes every subject, confirms, and returns what each pattern
/// received (sorted, duplicates kept).
async fn deliveries(broker: &dyn Broker) -> BTreeMap<String, Vec<String>> {
    let mut subs = Vec::new();
    for p in patterns() {
        subs.push(broker.subscribe(&p, None).await.expect("subscribe"));
    }
    broker.confirm().await.expect("confirm after subscribing");
    for s in subjects() {
        broker
            .publish(RawMessage::new(s.clone(), s.into_bytes()))
            .await
            .expect("publish");
    }
    broker.confirm().await.expect("confirm after publishing");
    let mut out: BTreeMap<String, Vec<String>> =
        patterns().into_iter().map(|p| (p, Vec::new())).collect();
    let stats: Vec<_> = subs.iter().map(|s| s.stats.clone()).collect();
    // All subscriptions at once, each message tagged with its pattern; done when quiet.
    let mut all = futures::stream::select_all(subs.into_iter().map(|sub| {
        let pattern = sub.pattern;
        sub.messages.map(move |m| (pattern.clone(), m))
    }));
    while let Ok(Some((pattern, msg))) =
        tokio::time::timeout(Duration::from_millis(500), all.next()).await
    {
        // `>` and `*.*.*` also see the SDK's own `_bus.confirm.<id>` echoes on NATS, as any
        // wildcard subscriber sees `_INBOX` traffic; they are not part of the test.
        if msg.subject.starts_with('_') {
            continue;
        }
        assert_eq!(
            msg.payload,
            msg.subject.as_bytes(),
            "payload follows its subject"
        );
        out.get_mut(&pattern)
            .expect("known pattern")
            .push(msg.subject);
    }
    for got in out.values_mut() {
        got.sort();
    }
    assert!(stats.iter().all(|s| s.dropped() == 0));
    out
}

#[tokio::test]
async fn local_and_nats_deliver_the_same_sets() {
    let server = NatsServer::start();
    let nats = NatsBroker::connect(NatsOptions::new([server.url()]))
        .await
        .unwrap();
    let mut state = nats.state();
    tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let local = LocalBroker::new();

    let via_nats = deliveries(&nats).await;
    let via_local = deliveries(&local).await;

    let reference: BTreeMap<String, Vec<String>> = patterns()
        .into_iter()
        .map(|p| {
            let mut got: Vec<String> = subjects()
                .into_iter()
                .filter(|s| bus_subject::matches(&p, s))
                .collect();
            got.sort();
            (p, got)
        })
        .collect();

    // Guard against a vacuous pass: the edge cases really are in the set.
    assert!(reference[">"].len() == subjects().len());
    assert_eq!(
        reference["a.>"].len(),
        12,
        "a.> matches a.x and a.x.y but not a"
    );
    assert!(!reference["a.*"].contains(&"a".to_string()));
    assert_eq!(reference["*.*"].len(), 9);

    for p in patterns() {
        assert_eq!(via_nats[&p], via_local[&p], "pattern {p:?}: nats vs local");
        assert_eq!(
            via_nats[&p], reference[&p],
            "pattern {p:?}: nats vs reference"
        );
    }
}
