//! The harness's own tests (`cargo test -p bus --features testing testing::`): no sleeps, most
//! on tokio's paused clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use super::{Kind, TestBus};
use crate::connection::ConnectionState;
use crate::error::Error;
use crate::handler::HandlerOptions;
use crate::message::Message;
use crate::retry::RetryPolicy;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, crate::Message)]
#[subject("plugin.inbound.<shop>")]
struct Order {
    shop: String,
    id: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, crate::Message)]
#[subject("agent.route.<who>")]
#[reply(Answer)]
struct Ask {
    who: String,
    n: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Answer {
    n: u64,
}

fn order(shop: &str, id: u64) -> Order {
    Order {
        shop: shop.into(),
        id,
    }
}

/// Backoffs of a minute, then two.
fn slow() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .base(Duration::from_secs(60))
        .multiplier(2.0)
        .cap(Duration::from_secs(600))
        .jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn records_publishes_and_consumptions_in_order_with_ids() {
    let t = TestBus::builder()
        .configure(|b| b.wire_headers(crate::WireHeaders::Full))
        .start()
        .await
        .unwrap();
    let mut sub = Order::subscribe(t.bus(), Order::filter()).await.unwrap();
    order("a", 1).publish(t.bus()).await.unwrap();
    order("b", 2).publish(t.bus()).await.unwrap();
    let busy = t.in_flight().await;
    assert_eq!(busy.buffered, vec![("plugin.inbound.*".to_owned(), 2)]);
    assert!(t
        .try_wait_idle(Duration::from_millis(20))
        .await
        .unwrap_err()
        .to_string()
        .contains("2 buffered on \"plugin.inbound.*\""));
    assert_eq!(sub.next().await.unwrap().unwrap().id, 1);
    assert_eq!(sub.next().await.unwrap().unwrap().id, 2);
    t.wait_idle().await;

    let published = t.published::<Order>();
    let consumed = t.consumed::<Order>();
    assert_eq!(published.len(), 2);
    assert_eq!(consumed.len(), 2);
    assert_eq!(published[0].record.subject, "plugin.inbound.a");
    assert!(published[0].record.msg_id.is_some());
    assert_eq!(published[0].record.msg_id, consumed[0].record.msg_id);
    let kinds: Vec<Kind> = t.records().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Published,
            Kind::Published,
            Kind::Consumed,
            Kind::Consumed
        ]
    );
    assert!(t.published::<Ask>().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retries_and_dead_letters_on_the_paused_clock() {
    let wall = std::time::Instant::now();
    let t = TestBus::start().await.unwrap();
    let attempts = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let seen = Arc::clone(&attempts);
    let flaky = t
        .bus()
        .handle_with(
            Order::filter().shop("a"),
            HandlerOptions::named("flaky").retry(slow()),
            move |o| {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(o.id).or_insert(0);
                    *n += 1;
                    *n
                };
                async move {
                    if n < 3 {
                        Err("not yet")
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    let broken = t
        .bus()
        .handle_with(
            Order::filter().shop("b"),
            HandlerOptions::named("broken").retry(slow()),
            |_o| async { Err::<(), _>("always") },
        )
        .await
        .unwrap();
    for id in 0..20 {
        order("a", id).publish(t.bus()).await.unwrap();
    }
    order("b", 0).publish(t.bus()).await.unwrap();
    t.wait_idle().await;
    assert_eq!(flaky.stats().handled(), 20);
    assert_eq!(flaky.stats().failed_attempts(), 40);
    assert_eq!(broken.stats().dead_lettered(), 1);
    let dead = t.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].origin, "handler:broken");
    assert_eq!(dead[0].subject, "plugin.inbound.b");
    assert!(wall.elapsed() < Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn wait_idle_waits_for_a_retry_in_its_backoff() {
    let t = TestBus::start().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let h = t
        .bus()
        .handle_with(
            Order::filter(),
            HandlerOptions::default().retry(slow()),
            move |_o| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err("first")
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    order("a", 1).publish(t.bus()).await.unwrap();
    let started = tokio::time::Instant::now();
    t.wait_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(h.stats().handled(), 1);
    assert!(started.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn records_requests_and_replies_and_counts_them_open() {
    let t = TestBus::start().await.unwrap();
    let _serve = Ask::serve(t.bus(), Ask::filter(), |req| async move {
        Ok::<_, Error>(Answer { n: req.n + 1 })
    })
    .await
    .unwrap();
    let reply = Ask {
        who: "x".into(),
        n: 41,
    }
    .request(t.bus())
    .await
    .unwrap();
    assert_eq!(reply.n, 42);
    t.wait_idle().await;
    assert_eq!(t.requests::<Ask>().len(), 1);
    assert_eq!(t.consumed::<Ask>().len(), 1);
    assert_eq!(t.replies().len(), 1);
    assert_eq!(t.broker().open_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_nobody_answers_times_out_on_the_paused_clock() {
    let wall = std::time::Instant::now();
    let t = TestBus::start().await.unwrap();
    // Takes the request and never answers.
    let _silent = Ask::subscribe(t.bus(), Ask::filter()).await.unwrap();
    let ask = Ask {
        who: "x".into(),
        n: 1,
    };
    let err = ask.request(t.bus()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(t.broker().open_requests(), 0);
    assert!(wall.elapsed() < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn duplicates_make_a_non_idempotent_handlers_double_effect_visible() {
    let t = TestBus::start().await.unwrap();
    t.broker().duplicate_deliveries(true);
    let effects = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&effects);
    let _h = Order::handle(t.bus(), Order::filter(), move |_o| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Error>(()) }
    })
    .await
    .unwrap();
    t.bus()
        .publish_raw(
            crate::RawMessage::new(
                "plugin.inbound.a",
                crate::codec::encode(&order("a", 1), Order::TYPE_NAME).unwrap(),
            )
            .with_headers({
                let mut h = crate::Headers::new();
                h.append(crate::headers::MSG_ID, "m-1");
                h
            }),
        )
        .await
        .unwrap();
    t.wait_idle().await;
    assert_eq!(t.published::<Order>().len(), 1);
    let consumed = t.consumed::<Order>();
    assert_eq!(consumed.len(), 2);
    assert_eq!(consumed[0].record.msg_id.as_deref(), Some("m-1"));
    assert_eq!(consumed[1].record.msg_id.as_deref(), Some("m-1"));
    assert_eq!(effects.load(Ordering::SeqCst), 2);
}

/// The same duplicates through a `dedupe` handler: the second copy is skipped by the inbox, so
/// the effect happens once, and the stats account for the skipped copy.
#[tokio::test(start_paused = true)]
async fn duplicates_through_a_dedupe_handler_have_one_effect() {
    let t = TestBus::start().await.unwrap();
    t.broker().duplicate_deliveries(true);
    let effects = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&effects);
    let h = t
        .bus()
        .handle_with(
            Order::filter(),
            crate::HandlerOptions::named("once").dedupe(std::time::Duration::from_secs(60)),
            move |_o| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Error>(()) }
            },
        )
        .await
        .unwrap();
    for (i, id) in ["m-1", "m-2"].iter().enumerate() {
        t.bus()
            .publish_raw(
                crate::RawMessage::new(
                    "plugin.inbound.a",
                    crate::codec::encode(&order("a", i as u64), Order::TYPE_NAME).unwrap(),
                )
                .with_headers({
                    let mut h = crate::Headers::new();
                    h.append(crate::headers::MSG_ID, *id);
                    h
                }),
            )
            .await
            .unwrap();
    }
    t.wait_idle().await;
    assert_eq!(t.consumed::<Order>().len(), 4, "every copy was delivered");
    assert_eq!(effects.load(Ordering::SeqCst), 2, "one effect per msg id");
    assert_eq!(h.stats().handled(), 2);
    assert_eq!(h.stats().duplicates_skipped(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_publishes_and_a_disconnect_fail_direct_publishes() {
    let t = TestBus::start().await.unwrap();
    t.broker().fail_publishes(2);
    assert!(order("a", 1).publish(t.bus()).await.is_err());
    assert!(order("a", 2).publish(t.bus()).await.is_err());
    order("a", 3).publish(t.bus()).await.unwrap();
    t.broker().disconnect();
    assert_eq!(t.bus().state(), ConnectionState::Disconnected);
    assert!(matches!(
        order("a", 4).publish(t.bus()).await,
        Err(Error::ConnectionLost { .. })
    ));
    t.broker().reconnect();
    assert_eq!(t.bus().state(), ConnectionState::Connected);
    order("a", 5).publish(t.bus()).await.unwrap();
    let ids: Vec<u64> = t.published::<Order>().iter().map(|o| o.id).collect();
    assert_eq!(ids, [3, 5]);
}

#[tokio::test]
async fn the_outbox_retries_failed_sends_and_confirmations() {
    let t = TestBus::builder().outbox().start().await.unwrap();
    let mut sub = Order::subscribe(t.bus(), Order::filter()).await.unwrap();
    t.broker().fail_publishes(1);
    order("a", 1).publish(t.bus()).await.unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap().id, 1);
    t.wait_idle().await;
    assert_eq!(t.published::<Order>().len(), 1);
    // A lost confirmation: the batch goes again, with the same msg id.
    t.broker().fail_confirms(1);
    order("a", 2).publish(t.bus()).await.unwrap();
    let again = t
        .wait_for::<Order>(|o| o.id == 2 && o.record.kind == Kind::Published)
        .await;
    assert!(again.record.msg_id.is_some());
    assert_eq!(sub.next().await.unwrap().unwrap().id, 2);
    assert_eq!(sub.next().await.unwrap().unwrap().id, 2);
    t.wait_idle().await;
    let twice: Vec<_> = t
        .published::<Order>()
        .into_iter()
        .filter(|o| o.id == 2)
        .collect();
    assert_eq!(twice.len(), 2);
    assert_eq!(twice[0].record.msg_id, twice[1].record.msg_id);
    assert!(t.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_outbox_holds_messages_while_disconnected() {
    let t = TestBus::builder().outbox().start().await.unwrap();
    t.broker().disconnect();
    order("a", 1).publish(t.bus()).await.unwrap();
    let busy = t
        .try_wait_idle(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(busy.outbox_queued, 1);
    assert!(t.published::<Order>().is_empty());
    t.broker().reconnect();
    t.wait_idle().await;
    assert_eq!(t.published::<Order>().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_durable_handler_is_waited_for() {
    let t = TestBus::start().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let h = t
        .bus()
        .handle_with(
            Order::filter().durable("orders"),
            HandlerOptions::default(),
            move |_o| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Error>(()) }
            },
        )
        .await
        .unwrap();
    for id in 0..10 {
        order("a", id).publish(t.bus()).await.unwrap();
    }
    t.wait_idle().await;
    assert_eq!(h.stats().handled(), 10);
    assert_eq!(t.consumed::<Order>().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn wait_for_finds_a_record() {
    let t = TestBus::start().await.unwrap();
    let bus = t.bus().clone();
    tokio::spawn(async move {
        for id in 0..5 {
            order("a", id).publish(&bus).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let found = t.wait_for::<Order>(|o| o.id == 3).await;
    assert_eq!(found.record.kind, Kind::Published);
    assert_eq!(found.body, order("a", 3));
}

#[tokio::test(start_paused = true)]
async fn a_durable_retry_after_a_nak_is_waited_for() {
    let t = TestBus::start().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let h = t
        .bus()
        .handle_with(
            Order::filter().durable("naked"),
            HandlerOptions::default().retry(slow()),
            move |_o| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err("not yet")
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await
        .unwrap();
    order("a", 1).publish(t.bus()).await.unwrap();
    let started = tokio::time::Instant::now();
    t.wait_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(h.stats().handled(), 1);
    assert_eq!(t.consumed::<Order>().len(), 3);
    assert!(started.elapsed() >= Duration::from_secs(180));
}
