//! `handle` on both backends (local, and a real nats-server): retries with backoff that never
//! block the messages behind, dead letters after the last attempt, panics as failed attempts,
//! bounded concurrency, ordered mode, and `stop` finishing what is in flight. Each test counts
//! what was handled, lost, duplicated and reordered (printed to stderr with `--nocapture`).
//! Most run on `bus::testing`'s harness: `wait_idle` instead of polling, no sleeps.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::testing::TestBus;
use bus::{Bus, HandlerOptions, RetryPolicy};
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::NatsServer;

const GUARD: Duration = Duration::from_secs(20);

/// A local bus, and a NATS bus (no outbox) on its own server; the server lives with the pair.
async fn buses() -> (Vec<Bus>, NatsServer) {
    let server = NatsServer::start();
    let nats = Bus::builder()
        .nats([server.url()])
        .reconnect_delay(Duration::from_millis(100))
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut w = nats.watch_state();
    tokio::time::timeout(GUARD, w.wait_for(|s| *s == bus::ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
    (vec![Bus::local().await.unwrap(), nats], server)
}

/// The same pair on the harness: a local one, and a NATS one (no outbox) on its own server.
async fn harnesses() -> (Vec<TestBus>, NatsServer) {
    let server = NatsServer::start();
    let nats = TestBus::builder()
        .nats(&server.url())
        .no_outbox()
        .configure(|b| {
            b.reconnect_delay(Duration::from_millis(100))
                .wait_for_connection(GUARD)
        })
        .start()
        .await
        .unwrap();
    (vec![TestBus::start().await.unwrap(), nats], server)
}

/// A count a test can wait for without polling.
#[derive(Clone)]
struct Count(Arc<tokio::sync::watch::Sender<usize>>);

impl Count {
    fn new() -> Count {
        Count(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
    fn add(&self) {
        self.0.send_modify(|n| *n += 1);
    }
    fn get(&self) -> usize {
        *self.0.borrow()
    }
    async fn reaches(&self, n: usize) {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(GUARD, rx.wait_for(|v| *v >= n))
            .await
            .expect("timed out waiting for a count")
            .unwrap();
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .base(Duration::from_millis(20))
        .jitter(0.0)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A handler that fails twice then succeeds handles the message once, after 3 deliveries; one
/// that always fails is dead-lettered after exactly 3 attempts, and the others go on.
#[tokio::test]
async fn retries_then_dead_letters() {
    let (harnesses, _server) = harnesses().await;
    for t in &harnesses {
        let bus = t.bus();
        let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let seen = attempts.clone();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("h"),
                HandlerOptions::named("flaky").retry(fast_retry()),
                move |msg| {
                    let seen = seen.clone();
                    async move {
                        let n = {
                            let mut a = seen.lock().unwrap();
                            let n = a.entry(msg.instance.clone()).or_default();
                            *n += 1;
                            *n
                        };
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
        for (i, text) in ["twice", "never", "ok", "panic", "ok"].iter().enumerate() {
            outbound("h", &format!("m{i}"), text)
                .publish(bus)
                .await
                .unwrap();
        }
        let stats = handler.stats().clone();
        t.wait_idle().await;
        assert_eq!(t.published::<Outbound>().len(), 5);
        let a = attempts.lock().unwrap().clone();
        assert_eq!(a["m0"], 3, "fails twice then succeeds: 3 deliveries");
        assert_eq!(a["m1"], 3, "always fails: exactly 3 attempts");
        assert_eq!(a["m2"], 1);
        assert_eq!(a["m3"], 2, "a panic is a failed attempt");
        assert_eq!(a["m4"], 1);
        assert_eq!(stats.handled(), 4);
        assert_eq!(stats.dead_lettered(), 1);
        assert_eq!(stats.failed_attempts(), 2 + 3 + 1);
        // The dead letter says where it died, with everything needed to replay it.
        let dead = bus.dead_letters().list().await.unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].origin, "handler:flaky");
        assert_eq!(dead[0].subject, "plugin.outbound.h.m1");
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].last_error, "always broken");
        let body: Outbound = rmp_serde::from_slice(&dead[0].payload).unwrap();
        assert_eq!(body.text, "never");
        // Replayed to its subject: the handler sees it again (and, still failing, it comes back).
        bus.dead_letters().replay(dead[0].id).await.unwrap();
        t.wait_idle().await;
        assert_eq!(stats.dead_lettered(), 2);
        assert_eq!(attempts.lock().unwrap()["m1"], 6);
        assert_eq!(bus.dead_letters().count().await.unwrap(), 1);
        assert_eq!(bus.dead_letters().purge().await.unwrap(), 1);
        handler.stop().await;
        eprintln!(
            "{}: 5 published, 4 handled once, 1 dead-lettered after 3 attempts, 0 lost",
            bus.broker().kind()
        );
    }
}

/// A message waiting for its retry does not hold up the ones behind it (unordered mode).
#[tokio::test]
async fn a_retry_never_blocks_the_others() {
    let (harnesses, _server) = harnesses().await;
    for t in &harnesses {
        let bus = t.bus();
        let done = Count::new();
        let d = done.clone();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("nb"),
                // One slot: if the failing message kept it during its 2 s backoff, nothing else
                // could run.
                HandlerOptions::named("slow-retry").concurrency(1).retry(
                    RetryPolicy::default()
                        .base(Duration::from_secs(2))
                        .jitter(0.0),
                ),
                move |msg| {
                    let d = d.clone();
                    async move {
                        if msg.text == "fail" {
                            return Err("not yet");
                        }
                        d.add();
                        Ok(())
                    }
                },
            )
            .await
            .unwrap();
        outbound("nb", "first", "fail").publish(bus).await.unwrap();
        let started = Instant::now();
        for i in 0..20 {
            outbound("nb", &format!("n{i}"), "ok")
                .publish(bus)
                .await
                .unwrap();
        }
        done.reaches(20).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{}: the others waited for the failing message's backoff ({:?})",
            bus.broker().kind(),
            started.elapsed()
        );
        assert_eq!(done.get(), 20);
        drop(handler);
    }
}

/// Ordered mode: one at a time, in publish order, each finished (retries included) before the
/// next starts. Counts reordering.
#[tokio::test]
async fn ordered_mode_keeps_order_through_retries() {
    let (harnesses, _server) = harnesses().await;
    for t in &harnesses {
        let bus = t.bus();
        let order: Arc<Mutex<Vec<usize>>> = Arc::default();
        let running = Arc::new(AtomicUsize::new(0));
        let (o, r) = (order.clone(), running.clone());
        let tries: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
        let handler = bus
            .handle_with(
                Outbound::filter().channel("ord"),
                HandlerOptions::named("ordered")
                    .ordered(true)
                    .retry(fast_retry()),
                move |msg| {
                    let (o, r, tries) = (o.clone(), r.clone(), tries.clone());
                    async move {
                        let i: usize = msg.text.parse().unwrap();
                        assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "two at once");
                        // Gives another message every chance to start meanwhile.
                        tokio::task::yield_now().await;
                        r.fetch_sub(1, Ordering::SeqCst);
                        let n = {
                            let mut t = tries.lock().unwrap();
                            let n = t.entry(i).or_default();
                            *n += 1;
                            *n
                        };
                        // Every tenth message fails once.
                        if i.is_multiple_of(10) && n == 1 {
                            return Err("once");
                        }
                        o.lock().unwrap().push(i);
                        Ok(())
                    }
                },
            )
            .await
            .unwrap();
        for i in 0..50 {
            outbound("ord", "x", &i.to_string())
                .publish(bus)
                .await
                .unwrap();
        }
        let stats = handler.stats().clone();
        t.wait_idle().await;
        assert_eq!(stats.handled(), 50);
        let got = order.lock().unwrap().clone();
        let reordered = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "{reordered} reordered");
        handler.stop().await;
    }
}

/// At most `concurrency` messages run at once; `stop` returns only after the ones in flight
/// finished, and nothing is taken after it.
#[tokio::test]
async fn concurrency_is_bounded_and_stop_drains() {
    let (harnesses, _server) = harnesses().await;
    for t in &harnesses {
        let bus = t.bus();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let started = Count::new();
        // Each message holds its slot until the test opens the gate.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (r, p, f) = (running.clone(), peak.clone(), finished.clone());
        let (s, g) = (started.clone(), gate.clone());
        let handler = bus
            .handle_with(
                Outbound::filter().channel("conc"),
                HandlerOptions::named("bounded").concurrency(4),
                move |_msg| {
                    let (r, p, f, s, g) = (r.clone(), p.clone(), f.clone(), s.clone(), g.clone());
                    async move {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        s.add();
                        g.acquire().await.unwrap().forget();
                        r.fetch_sub(1, Ordering::SeqCst);
                        f.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(())
                    }
                },
            )
            .await
            .unwrap();
        for i in 0..12 {
            outbound("conc", &format!("c{i}"), "x")
                .publish(bus)
                .await
                .unwrap();
        }
        // Four run at once, the other eight wait for a slot.
        started.reaches(4).await;
        assert_eq!(running.load(Ordering::SeqCst), 4);
        let stopping = tokio::spawn(handler.stop());
        gate.add_permits(12);
        stopping.await.unwrap();
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "stop returned with work in flight"
        );
        let at_stop = finished.load(Ordering::SeqCst);
        assert!(at_stop >= 1);
        assert!(
            peak.load(Ordering::SeqCst) <= 4,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        assert!(peak.load(Ordering::SeqCst) >= 2, "no concurrency at all");
        // Nothing after stop: no subscriber is left to take it.
        outbound("conc", "late", "x").publish(bus).await.unwrap();
        t.wait_idle().await;
        assert_eq!(finished.load(Ordering::SeqCst), at_stop);
    }
}

/// `close` stops every handler and responder after what is in flight, flushes, and reports
/// what is left; afterwards new handlers are refused. With the server down, the outbox's
/// messages are reported as left queued (they stay in the file).
#[tokio::test]
async fn close_drains_handlers_and_reports_what_is_left() {
    let (buses, server) = buses().await;
    for bus in &buses {
        let finished = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let (f, s) = (finished.clone(), started.clone());
        let _handler = bus
            .handle(Outbound::filter().channel("close"), move |_msg| {
                let (f, s) = (f.clone(), s.clone());
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(())
                }
            })
            .await
            .unwrap();
        for i in 0..3 {
            outbound("close", &format!("c{i}"), "x")
                .publish(bus)
                .await
                .unwrap();
        }
        until("3 started", || started.load(Ordering::SeqCst) == 3).await;
        let report = bus.close().await.unwrap();
        assert!(report.stopped_in_time && report.flushed, "{report:?}");
        assert_eq!(report.left_queued, 0);
        assert_eq!(
            finished.load(Ordering::SeqCst),
            3,
            "close returned before in-flight work finished"
        );
        assert!(matches!(
            bus.handle(Outbound::filter(), |_m| async { Ok::<_, String>(()) })
                .await,
            Err(bus::Error::Closed)
        ));
    }
    // The outbox with the server gone: close reports the queued messages instead of hanging.
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    drop(server);
    for i in 0..5 {
        outbound("close", &format!("q{i}"), "x")
            .publish(&bus)
            .await
            .unwrap();
    }
    let report = bus.close_timeout(Duration::from_millis(500)).await.unwrap();
    assert!(!report.flushed);
    assert_eq!(report.left_queued, 5, "{report:?}");
}

/// Dropping a `Handler` (or a `ServeHandle`) leaves it running until the bus closes.
#[tokio::test]
async fn a_dropped_handle_keeps_running() {
    let t = TestBus::start().await.unwrap();
    let bus = t.bus();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    drop(
        // The generated `T::handle`, as a user writes it.
        Outbound::handle(bus, Outbound::filter().channel("drop"), move |_m| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap(),
    );
    outbound("drop", "a", "x").publish(bus).await.unwrap();
    t.wait_idle().await;
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the dropped handler ran");
    bus.close().await.unwrap();
    outbound("drop", "b", "x").publish(bus).await.unwrap();
    t.wait_idle().await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a closed bus's handler still ran"
    );
}

/// With an outbox, a handler's dead letter goes to the outbox file's dead-letter table, beside
/// the outbox's own: the read-only view (what the CLI reads) sees it, with its origin.
#[tokio::test]
async fn handler_dead_letters_live_in_the_outbox_file() {
    let t = TestBus::builder().outbox().start().await.unwrap();
    let (bus, path) = (t.bus(), t.outbox_path().unwrap());
    let handler = Outbound::handle(bus, Outbound::filter().channel("dl"), |_m| async {
        Err::<(), _>("refused")
    })
    .await
    .unwrap();
    outbound("dl", "a", "x").publish(bus).await.unwrap();
    t.wait_idle().await;
    assert_eq!(handler.stats().dead_lettered(), 1);
    handler.stop().await;
    let dead = bus.dead_letters().list().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].origin,
        format!(
            "handler:{}",
            std::any::type_name::<Outbound>()
                .rsplit("::")
                .next()
                .unwrap()
        )
    );
    let file = bus::outbox::OutboxFile::open_read_only(&path).unwrap();
    let seen = file.dead_letters().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].subject, "plugin.outbound.dl.a");
    assert_eq!(seen[0].last_error, "refused");
    assert!(
        dead[0].headers.get("Nats-Msg-Id").is_some(),
        "the outbox's msg id is kept"
    );
}

/// `stop_timeout` bounds a stop: a handler that never returns is abandoned after the timeout,
/// the error says how many messages were in flight, and the handler no longer runs; an
/// ordinary handler stops within the timeout with `Ok`. On both backends.
#[tokio::test]
async fn stop_timeout_bounds_a_handler_that_never_returns() {
    let (buses, _server) = buses().await;
    for bus in &buses {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let stuck = bus
            .handle_with(
                Outbound::filter().channel("stuck"),
                HandlerOptions::named("stuck").concurrency(4),
                move |_| {
                    s.fetch_add(1, Ordering::SeqCst);
                    async move {
                        std::future::pending::<()>().await;
                        Ok::<_, String>(())
                    }
                },
            )
            .await
            .unwrap();
        for i in 0..3 {
            outbound("stuck", &format!("m{i}"), "x")
                .publish(bus)
                .await
                .unwrap();
        }
        until("three attempts started", || {
            started.load(Ordering::SeqCst) == 3
        })
        .await;
        let t0 = Instant::now();
        let outcome = stuck.stop_timeout(Duration::from_millis(200)).await;
        let took = t0.elapsed();
        match outcome {
            Err(bus::Error::StopTimeout { abandoned, .. }) => assert_eq!(abandoned, 3),
            other => panic!("expected StopTimeout, got {other:?}"),
        }
        assert!(took < Duration::from_secs(5), "bounded stop took {took:?}");

        let quick = Outbound::handle(bus, Outbound::filter().channel("quick"), |_| async {
            Ok::<_, String>(())
        })
        .await
        .unwrap();
        quick.stop_timeout(Duration::from_secs(5)).await.unwrap();
    }
}

/// Order per subject and per key from the message, on local and core NATS: in order per key
/// through retries, never two of one key at once, keys concurrently.
#[tokio::test]
async fn ordered_per_key_keeps_each_keys_order_through_retries() {
    use bus_tests::lanes::{check_per_key_order, Keyed};
    let (buses, _server) = buses().await;
    for bus in &buses {
        for (channel, keyed) in [("keysub", Keyed::BySubject), ("keytext", Keyed::ByText)] {
            let options = HandlerOptions::named(channel)
                .concurrency(8)
                .retry(fast_retry().max_attempts(3));
            check_per_key_order(bus, channel, options, keyed, (10, 30)).await;
        }
    }
}

/// `ordered_by` with a key of another type than the handler's is refused when it starts.
#[tokio::test]
async fn ordered_by_a_key_of_another_type_is_refused() {
    let bus = Bus::local().await.unwrap();
    let err = bus
        .handle_with(
            Outbound::filter().channel("wrongkey"),
            HandlerOptions::named("wrong").ordered_by(|s: &String| s.len()),
            |_msg| async { Ok::<_, String>(()) },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ordered_by"), "{err}");
}
