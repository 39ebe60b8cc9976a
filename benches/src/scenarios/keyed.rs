//! `handler_ordered_by_subject`: order per key against full order, on the local broker.
//!
//! Both sides handle the same `n` messages over [`SUBJECTS`] subjects (published round robin,
//! each text `"<subject>:<seq>"`) with the same handler: it sleeps a pseudo-random 0-2 ms
//! (the same for a message on both sides) and fails the first attempt of every tenth message
//! (retried after 1 ms, no jitter, so that the baseline's retries do not dominate). The baseline
//! is `HandlerOptions::ordered(true)` (one message at a time, in order); the bus side is
//! `ordered_by_subject()` with the default concurrency (64). Each round checks that every
//! message was handled once and that no subject's order was inverted (an inversion fails the
//! round, so a ratio is only reported for a correct run); the ratio is bus msg/s over baseline
//! msg/s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::{Bus, HandlerOptions, RetryPolicy};
use tokio::sync::Notify;

use crate::msgs::Outbound;
use crate::runner::{fail, rate, within, BenchResult, Rounds, Sample, SLACK, WAIT};

/// Distinct subjects (keys) of a round.
pub const SUBJECTS: usize = 200;

/// The scenario; `handler_ordered_by_subject` in the report.
pub struct OrderedBySubject;

impl Rounds for OrderedBySubject {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        round(n, HandlerOptions::named("bench-ordered").ordered(true))
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        round(n, HandlerOptions::named("bench-keyed").ordered_by_subject())
            .await
            .map(Sample::value)
    }
}

/// The handler's time on message `seq` in µs (0-2000), the same on both sides: a cheap hash.
fn work_us(seq: usize) -> u64 {
    let mut x = seq as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % 2001
}

/// What one round's handler records: per subject, the sequence numbers handled, in order; the
/// first attempts made; how many are done.
#[derive(Default)]
struct Seen {
    order: HashMap<usize, Vec<usize>>,
    tried: std::collections::HashSet<usize>,
    done: usize,
}

async fn round(n: usize, options: HandlerOptions) -> BenchResult<f64> {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(n + SLACK)
        .connect()
        .await?;
    let options = options.retry(
        RetryPolicy::default()
            .max_attempts(3)
            .base(Duration::from_millis(1))
            .jitter(0.0),
    );
    let seen = Arc::new((Mutex::new(Seen::default()), Notify::new()));
    let shared = Arc::clone(&seen);
    let handler = bus
        .handle_with(Outbound::filter().channel("keyed"), options, move |env| {
            let shared = Arc::clone(&shared);
            async move {
                let (subject, seq) = env.text.split_once(':').ok_or("bad text")?;
                let (subject, seq): (usize, usize) = (
                    subject.parse().map_err(|_| "bad subject")?,
                    seq.parse().map_err(|_| "bad seq")?,
                );
                tokio::time::sleep(Duration::from_micros(work_us(seq))).await;
                let (seen, done) = &*shared;
                let mut s = seen.lock().map_err(|_| "poisoned")?;
                if seq % 10 == 0 && s.tried.insert(seq) {
                    return Err("the first attempt of every tenth message fails");
                }
                s.order.entry(subject).or_default().push(seq);
                s.done += 1;
                if s.done == n {
                    done.notify_one();
                }
                Ok::<_, &str>(())
            }
        })
        .await?;
    let msgs: Vec<Outbound> = (0..n)
        .map(|seq| Outbound {
            channel: "keyed".into(),
            instance: format!("s{}", seq % SUBJECTS),
            text: format!("{}:{seq}", seq % SUBJECTS),
        })
        .collect();
    let start = Instant::now();
    for m in &msgs {
        bus.publish(m).await?;
    }
    within(WAIT, "the keyed handler", seen.1.notified()).await?;
    let end = Instant::now();
    handler.stop().await;
    let s = seen.0.lock().map_err(|_| fail("poisoned"))?;
    let inversions: usize = s
        .order
        .values()
        .map(|seqs| seqs.windows(2).filter(|w| w[0] > w[1]).count())
        .sum();
    let handled: usize = s.order.values().map(Vec::len).sum();
    if inversions > 0 || handled != n {
        return Err(fail(format!(
            "{inversions} order inversions, {handled} of {n} handled"
        )));
    }
    Ok(rate(n, start, end))
}
