//! Plugins and agents wired together the way a real deployment does it:
//!
//! - a Slack plugin turns chat messages into `plugin.inbound.slack.<instance>` events and posts whatever
//!   arrives on `plugin.outbound.slack.<instance>`;
//! - a router agent reads every inbound message and delegates work to a specialist agent with a typed
//!   request on `agent.route.<agent>`;
//! - two instances of the `summariser` agent serve those requests as a queue group (load shared);
//! - every component reports on `agent.events.<agent>.<kind>` and `plugin.health.<plugin>`, which a
//!   monitor watches with wildcard filters.
//!
//! Runs on the embedded broker: `cargo run --example plugin_agents`. With `NATS_URL` set it runs the
//! same code over NATS, with the durable outbox in the temp directory.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example talks to its user

use std::time::Duration;

use bus::{Bus, Message};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A chat message that arrived through a channel plugin.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.inbound.<channel>.<instance>")]
struct Inbound {
    channel: String,
    instance: String,
    user: String,
    text: String,
}

/// Something a plugin should send out.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
struct Outbound {
    channel: String,
    instance: String,
    text: String,
}

/// A task delegated to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(TaskResult)]
struct Delegate {
    agent: String,
    task: String,
}

/// What the agent made of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskResult {
    worker: u32,
    summary: String,
}

/// Lifecycle events of agents.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.<kind>")]
struct AgentEvent {
    agent: String,
    kind: String,
    detail: String,
}

/// Heartbeats of plugins.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.health.<plugin>")]
struct Health {
    plugin: String,
    healthy: bool,
}

async fn connect() -> Result<Bus, bus::Error> {
    match std::env::var("NATS_URL") {
        Ok(url) => {
            Bus::builder()
                .nats([url])
                .name("plugin-agents-example")
                .outbox_path(std::env::temp_dir().join("bus-plugin-agents-outbox.sqlite3"))
                .connect()
                .await
        }
        Err(_) => Bus::local().await,
    }
}

#[tokio::main]
async fn main() -> Result<(), bus::Error> {
    let bus = connect().await?;

    // The monitor: every agent event and every health beat, through wildcard filters.
    let mut events = AgentEvent::subscribe(&bus, AgentEvent::filter()).await?;
    let mut health = Health::subscribe(&bus, Health::filter()).await?;

    // Two summariser instances share the load as one queue group.
    for worker in 1..=2u32 {
        let events_bus = bus.clone();
        Delegate::serve(
            &bus,
            Delegate::filter().agent("summariser").queue("summariser"),
            move |req| {
                let bus = events_bus.clone();
                async move {
                    AgentEvent {
                        agent: "summariser".into(),
                        kind: "task-started".into(),
                        detail: format!("worker {worker}: {}", req.task),
                    }
                    .publish(&bus)
                    .await?;
                    let words = req.task.split_whitespace().count();
                    Ok::<_, bus::Error>(TaskResult {
                        worker,
                        summary: format!("{words} words, nothing on fire"),
                    })
                }
            },
        )
        .await?;
    }

    // The router: reads every inbound message on every channel and delegates it.
    let mut inbound = Inbound::subscribe(&bus, Inbound::filter()).await?;
    let router_bus = bus.clone();
    let router = tokio::spawn(async move {
        while let Some(item) = inbound.next().await {
            let msg = match item {
                Ok(env) => env.into_body(),
                Err(e) => {
                    eprintln!("router: skipped a message: {e}");
                    continue;
                }
            };
            let reply = Delegate {
                agent: "summariser".into(),
                task: msg.text.clone(),
            }
            .request(&router_bus)
            .await;
            let text = match reply {
                Ok(r) => format!("@{}: {} (worker {})", msg.user, r.summary, r.worker),
                Err(e) => format!("@{}: sorry, {e}", msg.user),
            };
            let out = Outbound {
                channel: msg.channel,
                instance: msg.instance,
                text,
            };
            if let Err(e) = out.publish(&router_bus).await {
                eprintln!("router: cannot answer: {e}");
            }
        }
    });

    // The Slack plugin, instance `eu-1`: posts what is addressed to it, forwards what users say.
    let mut outbox =
        Outbound::subscribe(&bus, Outbound::filter().channel("slack").instance("eu-1")).await?;
    Health {
        plugin: "slack".into(),
        healthy: true,
    }
    .publish(&bus)
    .await?;
    let said = [
        ("ana", "please summarise the incident channel for today"),
        ("bo", "what changed in the billing deploy"),
        ("cy", "status of the migration"),
    ];
    for (user, text) in said {
        Inbound {
            channel: "slack".into(),
            instance: "eu-1".into(),
            user: user.into(),
            text: text.into(),
        }
        .publish(&bus)
        .await?;
    }

    for _ in said {
        match tokio::time::timeout(Duration::from_secs(10), outbox.next()).await {
            Ok(Some(Ok(env))) => println!("slack/eu-1 posts   {}", env.text),
            other => println!("slack/eu-1 missing a reply: {other:?}"),
        }
    }
    let beat = health.next().await.expect("health stream")?;
    println!(
        "monitor: health    {} healthy={} ({})",
        beat.plugin,
        beat.healthy,
        beat.subject()
    );
    for _ in said {
        if let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(5), events.next()).await
        {
            println!("monitor: event     {} {}", ev.subject(), ev.detail);
        }
    }

    router.abort();
    bus.flush().await?;
    Ok(())
}
