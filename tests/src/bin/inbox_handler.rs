//! Helper process for the SIGKILL fault tests of the inbox (`tests/inbox_faults.rs`): a durable
//! handler with `HandlerOptions::dedupe` on `Outbound` messages of channel `fault` (stream
//! `FAULTS`, which must exist), with an outbox file at OUTBOX_PATH (the same file across
//! restarts: that is where its completions live).
//!
//! - mode `effect`: prints `effect <msg id> <text>` on its own line for every message it runs
//!   on (its effect), before returning `Ok`;
//! - mode `shared`: as `effect`, with `HandlerOptions::dedupe_shared` (the instances of one
//!   durable share completions in a JetStream key-value bucket);
//! - mode `produce`: republishes each message as a `Delegate` to agent `produced` through its
//!   envelope (committed with the completion), and prints nothing per message.
//!
//! Every 50 ms it prints `stats <handled> <duplicates skipped> <without msg id>` when they
//! changed. Runs until killed.
//!
//! Usage: `inbox_handler NATS_URL DURABLE_NAME ACK_WAIT_MS OUTBOX_PATH MODE`

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream::StreamConfig;
use bus::{Bus, HandlerOptions};
use bus_tests::msgs::{Delegate, Outbound};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, durable, ack_wait, outbox, mode] = args.as_slice() else {
        panic!("usage: inbox_handler NATS_URL DURABLE_NAME ACK_WAIT_MS OUTBOX_PATH MODE");
    };
    let ack_wait = Duration::from_millis(ack_wait.parse().expect("ACK_WAIT_MS must be a number"));
    let (produce, shared) = match mode.as_str() {
        "effect" => (false, false),
        "shared" => (false, true),
        "produce" => (true, false),
        other => panic!("MODE is effect, shared or produce, not {other:?}"),
    };
    let window = Duration::from_secs(3600);
    let options = HandlerOptions::named(durable.clone())
        .durable(durable.clone())
        .ack_wait(ack_wait);
    let options = if shared {
        options.dedupe_shared(window)
    } else {
        options.dedupe(window)
    };
    let bus = Bus::builder()
        .nats([url.as_str()])
        .outbox_path(outbox)
        .reconnect_delay(Duration::from_millis(100))
        .stream(StreamConfig::existing("FAULTS"))
        .connect()
        .await
        .expect("connect");
    bus.streams_ready(Duration::from_secs(20))
        .await
        .expect("the FAULTS stream exists");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let handler = bus
        .handle_with(Outbound::filter().channel("fault"), options, move |msg| {
            let out = out.clone();
            async move {
                if produce {
                    let next = Delegate {
                        agent: "produced".into(),
                        task: msg.text.clone(),
                    };
                    return msg.publish(&next).map_err(|e| e.to_string());
                }
                let mut out = out.lock().expect("stdout");
                writeln!(out, "effect {} {}", msg.msg_id().unwrap_or("-"), msg.text)
                    .expect("stdout");
                out.flush().expect("stdout");
                Ok::<_, String>(())
            }
        })
        .await
        .expect("handle");
    let stats = handler.stats().clone();
    let mut last = (u64::MAX, 0, 0);
    loop {
        let now = (
            stats.handled(),
            stats.duplicates_skipped(),
            stats.without_msg_id(),
        );
        if now != last {
            let mut out = std::io::stdout().lock();
            writeln!(out, "stats {} {} {}", now.0, now.1, now.2).expect("stdout");
            out.flush().expect("stdout");
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
