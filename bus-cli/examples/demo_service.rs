//! A small service to try the `bus` command on (the manual in bus-cli/README.md was
//! captured against it): it publishes an invoice every second through its outbox, a handler
//! mails them and gives up on the first try of every tenth ("poison", a dead letter in the
//! outbox file; a replay succeeds), it answers `agent.route.billing` requests, and it sends a
//! heartbeat every 2 s as instance `billing-1`; `bus catalog` lists its message types.
//!
//! ```sh
//! nats-server &      # NATS_URL picks another server (default nats://127.0.0.1:4222)
//! cargo run -p bus-cli --example demo_service -- /tmp/billing/outbox.sqlite3
//! ```
#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, HandlerOptions, Message, RetryPolicy};
use serde::{Deserialize, Serialize};

/// An outgoing message of a channel plugin.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
struct Outbound {
    channel: String,
    instance: String,
    text: String,
}

/// A task for the billing agent.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
struct Delegate {
    agent: String,
    task: String,
}

/// The billing agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RouteReply {
    accepted: bool,
    queue: String,
}

#[tokio::main]
async fn main() -> Result<(), bus::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bus-outbox.sqlite3".into());
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let bus = Bus::builder()
        .nats([url.as_str()])
        .name("billing")
        .outbox_path(&path)
        .instance("billing-1")
        .heartbeat(Duration::from_secs(2))
        .connect()
        .await?;
    eprintln!("billing-1: outbox {path}, NATS {url}");
    // Answers `bus catalog` with the message types this binary knows.
    let _catalog = bus::catalog::serve(&bus).await?;

    // The first try of a poison message fails; its replay goes through.
    let tried = Arc::new(Mutex::new(HashSet::new()));
    let _mailer = bus
        .handle_with(
            Outbound::filter().channel("email"),
            HandlerOptions::named("mailer").retry(RetryPolicy::default().max_attempts(1)),
            move |msg| {
                let first = tried
                    .lock()
                    .map(|mut t| t.insert(msg.text.clone()))
                    .unwrap_or(false);
                async move {
                    if msg.text.starts_with("poison") && first {
                        return Err(format!("mail server refused {:?}", msg.text));
                    }
                    eprintln!("mailer: sent {:?}", msg.text);
                    Ok(())
                }
            },
        )
        .await?;
    let _agent = Delegate::serve(
        &bus,
        Delegate::filter().agent("billing"),
        |req| async move {
            if req.task.is_empty() {
                return Err("empty task".to_string());
            }
            Ok(RouteReply {
                accepted: true,
                queue: format!("billing/{}", req.task),
            })
        },
    )
    .await?;

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        let text = if n.is_multiple_of(10) {
            format!("poison invoice {n}")
        } else {
            format!("invoice {n}")
        };
        Outbound {
            channel: "email".into(),
            instance: "billing-1".into(),
            text,
        }
        .publish(&bus)
        .await?;
    }
    let report = bus.close().await?;
    eprintln!("billing-1: closed ({report:?})");
    Ok(())
}
