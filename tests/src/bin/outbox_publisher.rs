//! Helper process for the SIGKILL fault test (`tests/outbox_faults.rs`): publishes
//! `b.seq` messages 0, 1, 2, … through a NATS `Bus` with an outbox, one at a time, and prints each
//! sequence number on its own line once `publish` returned `Ok` (the message is committed), until
//! it has published `count` messages; then it waits to be killed.
//!
//! Usage: `outbox_publisher OUTBOX_PATH NATS_URL COUNT`

use std::io::Write;
use std::time::Duration;

use bus::{Bus, RawMessage};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, url, count] = args.as_slice() else {
        panic!("usage: outbox_publisher OUTBOX_PATH NATS_URL COUNT");
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
    for seq in 0..count {
        bus.publish_raw(RawMessage::new("b.seq", seq.to_string()))
            .await
            .expect("publish");
        // The line is the acknowledgement the test relies on: flush it before the next publish.
        writeln!(out, "{seq}").expect("stdout");
        out.flush().expect("stdout");
    }
    drop(out);
    std::future::pending::<()>().await;
}
