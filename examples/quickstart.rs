//! The five-minute tour, on the embedded local broker (no server, nothing on disk):
//! a typed publish, a filtered wildcard subscription, a queue group, a request/reply and a
//! handler whose failures end in the dead letters.
//!
//! Run it with `cargo run --example quickstart`.

#![allow(clippy::print_stdout)] // an example talks to its user on stdout

use std::time::Duration;

use bus::{Bus, Envelope, HandlerOptions, Message, RetryPolicy};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Text a plugin sends out on a channel (Slack, email, ...) through one of its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    /// Fills `<channel>`.
    pub channel: String,
    /// Fills `<instance>`.
    pub instance: String,
    /// The text to send.
    pub text: String,
}

/// A task handed to an agent; the agent answers with a `RouteReply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
pub struct Delegate {
    /// Fills `<agent>`: which agent gets the task.
    pub agent: String,
    /// What to do.
    pub task: String,
}

/// The agent's answer to a `Delegate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReply {
    /// Whether the agent took the task.
    pub accepted: bool,
    /// A word about it.
    pub note: String,
}

#[tokio::main]
async fn main() -> Result<(), bus::Error> {
    let bus = Bus::local().await?;

    // 1. A filtered wildcard subscription: every Slack instance (plugin.outbound.slack.*).
    let mut slack = Outbound::subscribe(&bus, Outbound::filter().channel("slack")).await?;

    // 2. A queue group: two workers share every outbound message, each gets some, none twice.
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Outbound::subscribe(&bus, Outbound::filter().queue("senders")).await?);
    }

    // 3. Typed publishes: the subject comes from the fields `channel` and `instance`.
    for (channel, instance, text) in [
        ("slack", "a1", "deploy finished"),
        ("email", "ops", "weekly report"),
        ("slack", "b2", "build is green"),
        ("email", "ops", "disk at 80%"),
    ] {
        Outbound {
            channel: channel.into(),
            instance: instance.into(),
            text: text.into(),
        }
        .publish(&bus)
        .await?;
    }

    for _ in 0..2 {
        let env: Envelope<Outbound> = next(&mut slack).await?;
        println!("slack subscriber  {:<28} {:?}", env.subject(), env.text);
    }
    let mut shares = Vec::new();
    for worker in &mut workers {
        let mut n = 0;
        while tokio::time::timeout(Duration::from_millis(50), worker.next())
            .await
            .is_ok()
        {
            n += 1;
        }
        shares.push(n);
    }
    println!(
        "queue group       4 messages shared by 2 workers: {} + {}",
        shares[0], shares[1]
    );

    // 4. Request/reply: an agent serves delegations; another asks it for one.
    Delegate::serve(
        &bus,
        Delegate::filter().agent("planner"),
        |req| async move {
            let accepted = !req.task.is_empty();
            Ok::<_, bus::Error>(RouteReply {
                accepted,
                note: format!("planner took {:?}", req.task),
            })
        },
    )
    .await?;
    let reply = Delegate {
        agent: "planner".into(),
        task: "summarise the incident".into(),
    }
    .request(&bus)
    .await?;
    println!(
        "request/reply     accepted={} note={:?} correlation={}",
        reply.accepted,
        reply.note,
        reply.correlation_id().unwrap_or("-")
    );

    // 5. A placeholder value can never widen a subject: this is refused before anything is sent.
    let bad = Outbound {
        channel: "slack.*".into(),
        instance: "a1".into(),
        text: "sneaky".into(),
    };
    if let Err(e) = bad.publish(&bus).await {
        println!("refused           {e}");
    }

    // 6. Nobody serves the `auditor` agent: the request fails fast instead of waiting.
    let lonely = Delegate {
        agent: "auditor".into(),
        task: "check".into(),
    };
    if let Err(e) = lonely.request(&bus).await {
        println!("no responders     {e}");
    }

    // 7. A handler that gives up: its message lands in the dead letters (kept in memory without
    //    an outbox, in the outbox file with one), to list, replay or purge.
    let archiver = bus
        .handle_with(
            Outbound::filter().channel("archive"),
            HandlerOptions::named("archiver").retry(RetryPolicy::default().max_attempts(1)),
            |msg| async move { Err(format!("no archive for {}", msg.instance)) },
        )
        .await?;
    Outbound {
        channel: "archive".into(),
        instance: "cold".into(),
        text: "old logs".into(),
    }
    .publish(&bus)
    .await?;
    let dead_letters = bus.dead_letters();
    for _ in 0..500 {
        if dead_letters.count().await? > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = dead_letters.list().await?;
    assert_eq!(dead.len(), 1, "the failed message is dead-lettered");
    println!(
        "dead letter       {} from {} after {} attempt(s): {}",
        dead[0].subject, dead[0].origin, dead[0].attempts, dead[0].last_error
    );
    archiver.stop().await;
    Ok(())
}

async fn next<T: Message>(sub: &mut bus::Subscription<T>) -> Result<Envelope<T>, bus::Error> {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(item)) => item,
        _ => Err(bus::Error::Closed),
    }
}
