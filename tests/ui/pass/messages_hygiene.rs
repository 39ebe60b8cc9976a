// The generated code names every path in full: user types named like std's do not interfere.
#![allow(dead_code)]
use bus::{Message, Messages};
use serde::{Deserialize, Serialize};

struct Result;
struct Ok;
struct Option;
struct Some;

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Started {
    agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.stopped")]
struct Stopped {
    agent: String,
}

#[derive(Messages)]
enum AgentEvent {
    Started(Started),
    Stopped(Stopped),
}

fn main() {}
