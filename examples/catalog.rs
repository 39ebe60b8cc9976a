//! The catalog of this binary: the table `bus catalog` prints (gathered from the running
//! services through `bus::catalog::discover`, here one in-process service) and, with
//! `--asyncapi`, the AsyncAPI 3.0 document. Runs on the local broker, no server needed.
//!
//! Run it with `cargo run --example catalog` or `cargo run --example catalog -- --asyncapi`.

#![allow(clippy::print_stdout)] // an example talks to its user on stdout

use std::time::Duration;

use bus::{Bus, Message, Messages};
use serde::{Deserialize, Serialize};

/// Text a plugin sends out on a channel through one of its instances.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    /// Fills `<channel>`.
    pub channel: String,
    /// Fills `<instance>`.
    pub instance: String,
    /// The text to send.
    pub text: String,
}

/// A task handed to an agent.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
pub struct Delegate {
    /// Fills `<agent>`.
    pub agent: String,
    /// What to do.
    pub task: String,
}

/// The agent's answer to a `Delegate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteReply {
    /// Whether the agent took the task.
    pub accepted: bool,
}

/// An agent started.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
pub struct Started {
    /// Fills `<agent>`.
    pub agent: String,
    /// Its process id.
    pub pid: u32,
}

/// An agent stopped.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.stopped")]
pub struct Stopped {
    /// Fills `<agent>`.
    pub agent: String,
    /// Its exit code.
    pub code: i32,
}

/// Everything on `agent.events.>`, one variant per type.
#[derive(Debug, Messages)]
pub enum AgentEvent {
    /// `agent.events.<agent>.started`
    Started(Started),
    /// `agent.events.<agent>.stopped`
    Stopped(Stopped),
}

#[tokio::main]
async fn main() -> Result<(), bus::Error> {
    bus::catalog::assert_no_overlaps();
    if std::env::args().any(|a| a == "--asyncapi") {
        let doc = bus::catalog::asyncapi();
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        return Ok(());
    }
    let bus = Bus::builder().instance("planner-1").connect().await?;
    let responder = bus::catalog::serve(&bus).await?;
    let found = bus::catalog::discover(&bus, Duration::from_millis(200)).await?;
    print!("{}", found.table());
    responder.stop().await;
    Ok(())
}
