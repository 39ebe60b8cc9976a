//! Helper process for the SIGKILL fault tests (`tests/outbox_faults.rs`, `tests/scheduled.rs`).
//!
//! Plain mode: publishes `b.seq` messages 0, 1, 2, … through a NATS `Bus` with an outbox, one at
//! a time, and prints each sequence number on its own line once `publish` returned `Ok` (the
//! message is committed), until it has published `count` messages; then it waits to be killed.
//!
//! Scheduled mode (`DUE_START_MS SPAN_MS` given): prints `ready` once the bus is open, then
//! publishes `count` typed `Outbound` messages on `plugin.outbound.sched.p` for later, message
//! `seq` due at `DUE_START_MS + SPAN_MS * seq / count` (unix ms), its text `"<seq>:<due ms>"`,
//! printing each sequence number once committed; then it waits to be killed. With `count` 0 it
//! only holds the outbox open, so that what an earlier process scheduled is sent when due.
//!
//! Usage: `outbox_publisher OUTBOX_PATH NATS_URL COUNT [DUE_START_MS SPAN_MS]`

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use bus::{Bus, RawMessage};
use bus_tests::msgs::outbound;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, url, count, scheduled) = match args.as_slice() {
        [_, path, url, count] => (path, url, count, None),
        [_, path, url, count, start, span] => {
            let ms = |s: &str| {
                s.parse::<u64>()
                    .expect("DUE_START_MS and SPAN_MS are numbers")
            };
            (path, url, count, Some((ms(start), ms(span))))
        }
        _ => panic!("usage: outbox_publisher OUTBOX_PATH NATS_URL COUNT [DUE_START_MS SPAN_MS]"),
    };
    let count: u64 = count.parse().expect("COUNT must be a number");
    let bus = Bus::builder()
        .nats([url.as_str()])
        .outbox_path(path)
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await
        .expect("connect (the server may be down; the outbox must still open)");
    let mut out = std::io::stdout().lock();
    if scheduled.is_some() {
        writeln!(out, "ready").expect("stdout");
        out.flush().expect("stdout");
    }
    for seq in 0..count {
        match scheduled {
            None => bus
                .publish_raw(RawMessage::new("b.seq", seq.to_string()))
                .await
                .expect("publish"),
            Some((start, span)) => {
                let due = start + span * seq / count;
                outbound("sched", "p", &format!("{seq}:{due}"))
                    .publish_at(&bus, UNIX_EPOCH + Duration::from_millis(due))
                    .await
                    .expect("publish_at")
            }
        }
        // The line is the acknowledgement the test relies on: flush it before the next publish.
        writeln!(out, "{seq}").expect("stdout");
        out.flush().expect("stdout");
    }
    drop(out);
    std::future::pending::<()>().await;
}
