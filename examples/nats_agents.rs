//! Two agents talking over NATS: a planner delegates tasks to a researcher with typed
//! request/reply (each reply carries the request's correlation id) and follows the researcher's
//! typed events.
//!
//! ```sh
//! nats-server &                      # or any server; NATS_URL picks it (default nats://127.0.0.1:4222)
//! cargo run --example nats_agents
//! ```
#![allow(clippy::print_stdout)]

use std::time::Duration;

use bus::{Bus, Message};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A task handed to an agent: a request on `agent.route.<agent>`, answered with a [`TaskResult`].
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(TaskResult)]
struct Delegate {
    agent: String,
    task_id: u64,
    task: String,
}

/// The answer to a [`Delegate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskResult {
    task_id: u64,
    summary: String,
}

/// What an agent announces on `agent.events.<agent>`.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>")]
struct AgentEvent {
    agent: String,
    kind: String,
    detail: String,
}

async fn connect(name: &str, url: &str) -> Result<Bus, bus::Error> {
    Bus::builder()
        .nats([url])
        .name(name)
        .request_timeout(Duration::from_secs(5))
        // Events go through each agent's own durable outbox (one file per process: the file is
        // locked); requests and replies are conversations and never queue.
        .outbox_path(std::env::temp_dir().join(format!("bus-nats-agents-{name}.sqlite3")))
        .connect()
        .await
}

async fn wait_connected(bus: &Bus) {
    let mut state = bus.watch_state();
    let connected = state.wait_for(|s| *s == bus::ConnectionState::Connected);
    if tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .is_err()
    {
        println!("still waiting for NATS at {} ...", nats_url());
    }
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

#[tokio::main]
async fn main() -> Result<(), bus::Error> {
    let url = nats_url();
    let researcher = connect("researcher", &url).await?;
    let planner = connect("planner", &url).await?;
    wait_connected(&researcher).await;
    wait_connected(&planner).await;

    // The researcher answers tasks addressed to it and announces each one it finishes.
    let events_bus = researcher.clone();
    let _serving = Delegate::serve(
        &researcher,
        Delegate::filter().agent("researcher"),
        move |req| {
            let bus = events_bus.clone();
            async move {
                println!(
                    "researcher: task {} {:?} (correlation {})",
                    req.task_id,
                    req.task,
                    req.correlation_id().unwrap_or("-")
                );
                let summary = format!(
                    "{} words in {:?}",
                    req.task.split_whitespace().count(),
                    req.task
                );
                AgentEvent {
                    agent: "researcher".into(),
                    kind: "done".into(),
                    detail: format!("task {}", req.task_id),
                }
                .publish(&bus)
                .await?;
                Ok::<_, bus::Error>(TaskResult {
                    task_id: req.task_id,
                    summary,
                })
            }
        },
    )
    .await?;

    // The planner follows every agent's events.
    let mut events = AgentEvent::subscribe(&planner, AgentEvent::filter()).await?;
    planner.flush().await?;

    for (task_id, task) in [(1, "find the release notes"), (2, "compare two drafts")] {
        let reply = Delegate {
            agent: "researcher".into(),
            task_id,
            task: task.into(),
        }
        .request(&planner)
        .await?;
        println!(
            "planner: reply to task {} (correlation {}): {}",
            reply.task_id,
            reply.correlation_id().unwrap_or("-"),
            reply.summary
        );
    }

    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(Ok(ev))) => println!(
                "planner: event on {}: {} {}",
                ev.subject(),
                ev.kind,
                ev.detail
            ),
            Ok(Some(Err(e))) => println!("planner: skipped an event: {e}"),
            Ok(None) | Err(_) => break,
        }
    }

    // Nobody serves "archivist": the request fails fast instead of waiting for the timeout.
    let err = Delegate {
        agent: "archivist".into(),
        task_id: 3,
        task: "file it".into(),
    }
    .request(&planner)
    .await
    .unwrap_err();
    println!("planner: delegating to archivist: {err}");
    Ok(())
}
