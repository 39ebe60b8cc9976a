//! Order per key (`HandlerOptions::ordered_by_subject` / `ordered_by`), checked the same way on
//! every backend: messages over several keys, some failing their first attempts, handled with
//! no two of one key at once, in publish order per key, and more than one key at once.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, HandlerOptions};

use crate::jetstream::wait_until;
use crate::msgs::{outbound, Outbound};

/// How the messages are keyed in [`check_per_key_order`].
#[derive(Debug, Clone, Copy)]
pub enum Keyed {
    /// `ordered_by_subject`: one instance (subject) per key.
    BySubject,
    /// `ordered_by(|m| conversation in the text)`: each key spread over two instances.
    ByText,
}

/// Publishes `per_key` messages for each of `keys` keys, interleaved, on channel `channel`;
/// every 7th message of a key fails its first two attempts. `options` gets the key and must
/// retry at least 3 times. Asserts: every message handled once, in publish order per key, never
/// two of one key at once, and at some moment two keys at once. Prints what it counted.
pub async fn check_per_key_order(
    bus: &Bus,
    channel: &str,
    options: HandlerOptions,
    keyed: Keyed,
    (keys, per_key): (usize, usize),
) {
    let options = match keyed {
        Keyed::BySubject => options.ordered_by_subject(),
        Keyed::ByText => options.ordered_by(|m: &Outbound| key_of(&m.text).to_owned()),
    };
    let order: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let two_at_once = Arc::new(AtomicUsize::new(0));
    let state = (
        order.clone(),
        tries,
        running,
        now,
        most.clone(),
        two_at_once.clone(),
    );
    let handler = bus
        .handle_with(Outbound::filter().channel(channel), options, move |msg| {
            let (order, tries, running, now, most, twice) = state.clone();
            async move {
                let key = key_of(&msg.text).to_owned();
                let i: usize = msg.text.rsplit(':').next().unwrap().parse().unwrap();
                {
                    let mut r = running.lock().unwrap();
                    let n = r.entry(key.clone()).or_default();
                    if *n > 0 {
                        twice.fetch_add(1, Ordering::SeqCst);
                    }
                    *n += 1;
                }
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                *running.lock().unwrap().get_mut(&key).unwrap() -= 1;
                let n = {
                    let mut t = tries.lock().unwrap();
                    let n = t.entry(msg.text.clone()).or_default();
                    *n += 1;
                    *n
                };
                if i.is_multiple_of(7) && n <= 2 {
                    return Err("fails twice");
                }
                order.lock().unwrap().entry(key).or_default().push(i);
                Ok(())
            }
        })
        .await
        .unwrap();
    for i in 0..per_key {
        for k in 0..keys {
            let (instance, text) = match keyed {
                Keyed::BySubject => (format!("i{k}"), format!("k{k}:{i}")),
                // Two instances per key, alternating: the subject is not the key.
                Keyed::ByText => (format!("i{k}-{}", i % 2), format!("k{k}:{i}")),
            };
            outbound(channel, &instance, &text)
                .publish(bus)
                .await
                .unwrap();
        }
    }
    let total = keys * per_key;
    let stats = handler.stats().clone();
    wait_until("all handled", Duration::from_secs(60), || {
        stats.handled() as usize == total
    })
    .await;
    handler.stop().await;
    let order = order.lock().unwrap();
    let mut reordered = 0;
    let mut lost_or_duplicated = 0;
    for k in 0..keys {
        let got = order.get(&format!("k{k}")).cloned().unwrap_or_default();
        reordered += got.windows(2).filter(|w| w[0] > w[1]).count();
        if got != (0..per_key).collect::<Vec<_>>() {
            lost_or_duplicated += 1;
        }
    }
    let (most, twice) = (
        most.load(Ordering::SeqCst),
        two_at_once.load(Ordering::SeqCst),
    );
    eprintln!(
        "per-key order ({keyed:?}, {keys} keys x {per_key}): reordered {reordered}, keys not \
         exactly in order {lost_or_duplicated}, two of a key at once {twice}, most at once {most}, \
         dead-lettered {}",
        stats.dead_lettered()
    );
    assert_eq!(reordered, 0);
    assert_eq!(lost_or_duplicated, 0);
    assert_eq!(twice, 0, "two messages of one key at once");
    assert!(most > 1, "keys ran one at a time");
    assert_eq!(stats.dead_lettered(), 0);
}

fn key_of(text: &str) -> &str {
    text.split(':').next().unwrap()
}
