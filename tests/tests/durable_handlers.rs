//! `handle` in durable mode (`HandlerOptions::durable`) on both backends: the local broker and a
//! real nats-server with JetStream (run it on both lines with `NATS_SERVER_BIN`). The fault
//! cases: a handler that fails twice then succeeds handles the message once
//! after 3 deliveries; one that always fails is dead-lettered after exactly 3 and the rest go
//! on. Also: resume after a stop, a queue group sharing one durable, ordered mode, decode
//! failures, and `subscribe` on a durable filter. Each test prints what it counted (`--nocapture`).
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream::StreamConfig;
use bus::{Bus, HandlerOptions, RawMessage};
use bus_tests::jetstream::{fast_retry, wait_until, JsServer};
use bus_tests::msgs::{outbound, Outbound};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(30);

/// A local bus, and a NATS bus (no outbox) declaring a stream on `plugin.outbound.>`.
async fn buses() -> (Vec<Bus>, JsServer) {
    let server = JsServer::start();
    let nats = Bus::builder()
        .nats([server.url()])
        .reconnect_delay(Duration::from_millis(100))
        .no_outbox()
        .stream(StreamConfig::new("OUTBOUND", ["plugin.outbound.>"]))
        .connect()
        .await
        .unwrap();
    nats.streams_ready(GUARD).await.unwrap();
    (vec![Bus::local().await.unwrap(), nats], server)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    wait_until(what, GUARD, f).await;
}

type Attempts = Arc<Mutex<HashMap<String, usize>>>;

fn count(attempts: &Attempts, key: &str) -> usize {
    let mut a = attempts.lock().unwrap();
    let n = a.entry(key.to_owned()).or_default();
    *n += 1;
    *n
}

/// Fails twice then succeeds -> handled once, 3 deliveries; always
/// fails -> dead-lettered after exactly 3 deliveries; the others are handled once each.
#[tokio::test]
async fn durable_retries_by_redelivery_then_dead_letters() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let attempts: Attempts = Arc::default();
        let seen = attempts.clone();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("dr"),
                HandlerOptions::named("flaky")
                    .durable("flaky")
                    .retry(fast_retry()),
                move |msg| {
                    let n = count(&seen, &msg.instance);
                    async move {
                        match msg.text.as_str() {
                            "twice" if n <= 2 => Err(format!("failure {n}")),
                            "never" => Err("always broken".to_string()),
                            "panic" if n == 1 => panic!("boom"),
                            _ => Ok(()),
                        }
                    }
                },
            )
            .await
            .unwrap();
        let texts = ["twice", "never", "ok", "panic", "ok"];
        for (i, text) in texts.iter().enumerate() {
            outbound("dr", &format!("m{i}"), text)
                .publish(bus)
                .await
                .unwrap();
        }
        let stats = handler.stats().clone();
        until("all handled or dead", || {
            stats.handled() + stats.dead_lettered() == 5
        })
        .await;
        // Nothing comes after: the dead one was terminated, the others acked.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = attempts.lock().unwrap().clone();
        assert_eq!(a["m0"], 3, "fails twice then succeeds: 3 deliveries");
        assert_eq!(a["m1"], 3, "always fails: exactly 3 deliveries");
        assert_eq!(a["m2"], 1);
        assert_eq!(a["m3"], 2, "a panic is a failed attempt");
        assert_eq!(a["m4"], 1);
        assert_eq!(stats.handled(), 4, "handled once each");
        assert_eq!(stats.dead_lettered(), 1);
        assert_eq!(stats.failed_attempts(), 2 + 3 + 1);
        handler.stop().await;
        let deliveries: usize = a.values().sum();
        eprintln!(
            "{} (durable): 5 published, 4 handled once (m0 after 3 deliveries), 1 dead-lettered after exactly 3, {deliveries} deliveries, 0 lost, 0 duplicated",
            bus.broker().kind()
        );
    }
}

/// Messages published while the durable handler is stopped are handled when it starts again,
/// in order, each once.
#[tokio::test]
async fn durable_handler_resumes_after_stop() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let start = |got: Arc<Mutex<Vec<String>>>| {
            bus.handle_with(
                // The durable named on the filter (`docs/design.md`'s `filter.durable(name)`).
                Outbound::filter().channel("resume").durable("resumer"),
                HandlerOptions::named("resumer").ordered(true),
                move |msg| {
                    got.lock().unwrap().push(msg.text.clone());
                    async { Ok::<_, String>(()) }
                },
            )
        };
        let first = start(got.clone()).await.unwrap();
        for i in 0..10 {
            outbound("resume", "x", &format!("{i}"))
                .publish(bus)
                .await
                .unwrap();
        }
        let stats = first.stats().clone();
        until("the first ten", || stats.handled() == 10).await;
        first.stop().await;
        for i in 10..40 {
            outbound("resume", "x", &format!("{i}"))
                .publish(bus)
                .await
                .unwrap();
        }
        bus.flush().await.unwrap();
        let second = start(got.clone()).await.unwrap();
        let stats = second.stats().clone();
        until("the thirty published while stopped", || {
            stats.handled() == 30
        })
        .await;
        second.stop().await;
        let got = got.lock().unwrap().clone();
        let want: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let lost = want.iter().filter(|w| !got.contains(w)).count();
        let duplicated = got.len() - (want.len() - lost);
        let reordered = got
            .windows(2)
            .filter(|w| w[0].parse::<u32>().unwrap() > w[1].parse::<u32>().unwrap())
            .count();
        eprintln!(
            "{} (durable resume): 40 published, 30 while stopped: lost {lost}, duplicated {duplicated}, out of order {reordered}",
            bus.broker().kind()
        );
        assert_eq!(got, want, "every message once, in order");
    }
}

/// Two handlers on one durable name in a queue group share the work: each message is handled
/// by exactly one of them.
#[tokio::test]
async fn durable_queue_group_shares_one_consumer() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let got: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
        let mut handlers = Vec::new();
        for who in 0..2 {
            let got = got.clone();
            handlers.push(
                bus.handle_with(
                    Outbound::filter().channel("shared").queue("senders"),
                    HandlerOptions::named(format!("sender-{who}"))
                        .durable("senders")
                        .concurrency(2),
                    move |msg| {
                        let got = got.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            got.lock().unwrap().push((msg.text.parse().unwrap(), who));
                            Ok::<_, String>(())
                        }
                    },
                )
                .await
                .unwrap(),
            );
        }
        let total = 200;
        for i in 0..total {
            outbound("shared", "x", &i.to_string())
                .publish(bus)
                .await
                .unwrap();
        }
        let g = got.clone();
        until("all handled", || g.lock().unwrap().len() >= total).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for h in handlers {
            h.stop().await;
        }
        let got = got.lock().unwrap().clone();
        let mut ids: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        ids.sort_unstable();
        let duplicated = ids.windows(2).filter(|w| w[0] == w[1]).count();
        let by_first = got.iter().filter(|(_, who)| *who == 0).count();
        eprintln!(
            "{} (durable queue group): {total} published, {} handled, {duplicated} duplicated, {by_first} by the first instance",
            bus.broker().kind(),
            got.len()
        );
        assert_eq!(ids, (0..total).collect::<Vec<_>>(), "each exactly once");
        assert!(by_first > 0 && by_first < total, "both instances work");
    }
}

/// Ordered durable mode: retries in place, so a failing message is not overtaken.
#[tokio::test]
async fn durable_ordered_mode_keeps_order_through_retries() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let order: Arc<Mutex<Vec<usize>>> = Arc::default();
        let running = Arc::new(AtomicUsize::new(0));
        let attempts: Attempts = Arc::default();
        let (o, r, a) = (order.clone(), running.clone(), attempts.clone());
        let handler = bus
            .handle_with(
                Outbound::filter().channel("dord"),
                HandlerOptions::named("dordered")
                    .durable("dordered")
                    .ordered(true)
                    .retry(fast_retry()),
                move |msg| {
                    let (o, r) = (o.clone(), r.clone());
                    let n = count(&a, &msg.text);
                    async move {
                        let i: usize = msg.text.parse().unwrap();
                        assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "two at once");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        r.fetch_sub(1, Ordering::SeqCst);
                        if i.is_multiple_of(10) && n <= 2 {
                            return Err("twice");
                        }
                        o.lock().unwrap().push(i);
                        Ok(())
                    }
                },
            )
            .await
            .unwrap();
        for i in 0..50 {
            outbound("dord", "x", &i.to_string())
                .publish(bus)
                .await
                .unwrap();
        }
        let stats = handler.stats().clone();
        until("50 handled", || stats.handled() == 50).await;
        handler.stop().await;
        let got = order.lock().unwrap().clone();
        let reordered = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "{reordered} reordered");
        assert_eq!(attempts.lock().unwrap()["10"], 3);
        assert_eq!(stats.dead_lettered(), 0);
    }
}

/// A payload that does not decode is dead-lettered at once (one delivery), not redelivered.
#[tokio::test]
async fn durable_decode_failure_is_dead_lettered_at_once() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("bad"),
                HandlerOptions::named("decoder").durable("decoder"),
                move |_msg| {
                    c.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, String>(()) }
                },
            )
            .await
            .unwrap();
        bus.publish_raw(RawMessage::new("plugin.outbound.bad.x", "not msgpack"))
            .await
            .unwrap();
        outbound("bad", "y", "fine").publish(bus).await.unwrap();
        let stats = handler.stats().clone();
        until("one handled, one dead", || {
            stats.handled() == 1 && stats.dead_lettered() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            stats.dead_lettered(),
            1,
            "dead-lettered once, not redelivered"
        );
        assert_eq!(
            stats.failed_attempts(),
            0,
            "a decode failure is not a handler attempt"
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        handler.stop().await;
    }
}

/// `subscribe` with `filter.durable(name)`: envelopes with their delivery count; nak brings
/// one back, ack ends it; what is published while unsubscribed arrives on return.
#[tokio::test]
async fn durable_subscribe_settles_by_hand() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let mut sub =
            Outbound::subscribe(bus, Outbound::filter().channel("manual").durable("manual"))
                .await
                .unwrap();
        assert_eq!(sub.durable_name(), Some("manual"));
        outbound("manual", "a", "one").publish(bus).await.unwrap();
        let first = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.text, "one");
        assert_eq!(first.subject(), "plugin.outbound.manual.a");
        assert_eq!(first.delivered(), 1);
        first.nak(Duration::ZERO).await.unwrap();
        let again = tokio::time::timeout(GUARD, sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(again.delivered(), 2);
        again.ack().await.unwrap();
        bus.flush().await.unwrap();
        drop(sub);
        outbound("manual", "b", "while away")
            .publish(bus)
            .await
            .unwrap();
        bus.flush().await.unwrap();
        let mut back =
            Outbound::subscribe(bus, Outbound::filter().channel("manual").durable("manual"))
                .await
                .unwrap();
        let d = tokio::time::timeout(GUARD, back.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.text, "while away");
        assert_eq!(d.delivered(), 1);
        d.ack().await.unwrap();
    }
}

/// A durable handler's envelope carries its delivery state, as a durable subscription's does:
/// failing the first delivery, the handler sees `(delivered, is_durable)` = `(1, true)` then
/// `(2, true)`, with the message's id and headers, on both backends.
#[tokio::test]
async fn durable_handler_envelope_carries_its_delivery() {
    let (buses, _server) = buses().await;
    for (bus, backend) in buses.iter().zip(["local", "nats"]) {
        // (delivered, is_durable, msg id) per attempt.
        type Seen = Arc<Mutex<Vec<(u32, bool, Option<String>)>>>;
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("state"),
                HandlerOptions::named("state")
                    .durable("state")
                    .retry(fast_retry()),
                move |env| {
                    let mut seen = record.lock().unwrap();
                    seen.push((
                        env.delivered(),
                        env.is_durable(),
                        env.msg_id().map(str::to_owned),
                    ));
                    let first = seen.len() == 1;
                    async move {
                        if first {
                            Err("the first delivery fails")
                        } else {
                            Ok(())
                        }
                    }
                },
            )
            .await
            .unwrap();
        let mut headers = bus::Headers::new();
        headers.append(bus::headers::MSG_ID, "state-1");
        bus.publish_with_headers(
            &Outbound {
                channel: "state".into(),
                instance: "a".into(),
                text: "t".into(),
            },
            headers,
        )
        .await
        .unwrap();
        until("the second delivery handled", || {
            handler.stats().handled() == 1
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        let id = Some("state-1".to_owned());
        assert_eq!(
            seen,
            vec![(1, true, id.clone()), (2, true, id)],
            "delivery state per attempt on {backend}"
        );
        handler.stop().await;
    }
}

/// Order per subject and per key on a durable consumer (local and JetStream): retries in
/// place, so a later message of the key never overtakes a failing one; keys concurrently.
#[tokio::test]
async fn durable_ordered_per_key_keeps_each_keys_order_through_retries() {
    use bus_tests::lanes::{check_per_key_order, Keyed};
    let (buses, _server) = buses().await;
    for bus in &buses {
        for (channel, keyed) in [("dkeysub", Keyed::BySubject), ("dkeytext", Keyed::ByText)] {
            let options = HandlerOptions::named(channel)
                .durable(channel)
                .concurrency(8)
                .retry(fast_retry().max_attempts(3));
            check_per_key_order(bus, channel, options, keyed, (10, 30)).await;
        }
    }
}
