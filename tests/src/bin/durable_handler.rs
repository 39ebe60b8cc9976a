//! Helper process for the SIGKILL fault test of durable handlers (`tests/durable_faults.rs`):
//! runs an ordered durable handler on `Outbound` messages of channel `fault`, on the existing
//! stream `FAULTS`, and prints `<msg id> <text>` on its own line for every message it handles,
//! before the handler returns `Ok` (so a kill between the line and the ack shows up as a
//! redelivery of the same msg id). Each message takes about a millisecond. Runs until killed.
//!
//! Usage: `durable_handler NATS_URL DURABLE_NAME ACK_WAIT_MS`

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream::StreamConfig;
use bus::{Bus, HandlerOptions};
use bus_tests::msgs::Outbound;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, durable, ack_wait] = args.as_slice() else {
        panic!("usage: durable_handler NATS_URL DURABLE_NAME ACK_WAIT_MS");
    };
    let ack_wait = Duration::from_millis(ack_wait.parse().expect("ACK_WAIT_MS must be a number"));
    let bus = Bus::builder()
        .nats([url.as_str()])
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .stream(StreamConfig::existing("FAULTS"))
        .connect()
        .await
        .expect("connect");
    bus.streams_ready(Duration::from_secs(20))
        .await
        .expect("the FAULTS stream exists");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let _handler = bus
        .handle_with(
            Outbound::filter().channel("fault"),
            HandlerOptions::named(durable.clone())
                .durable(durable.clone())
                .ordered(true)
                .ack_wait(ack_wait),
            move |msg| {
                let out = out.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let mut out = out.lock().expect("stdout");
                    writeln!(out, "{} {}", msg.msg_id().unwrap_or("-"), msg.text).expect("stdout");
                    out.flush().expect("stdout");
                    Ok::<_, String>(())
                }
            },
        )
        .await
        .expect("handle");
    std::future::pending::<()>().await;
}
