use bus::{Message, Messages};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Started {
    agent: String,
}

#[derive(Messages)]
enum AgentEvent {
    Started(Started),
    Again(Started),
    Empty,
    Named { started: Started },
}

#[derive(Messages)]
struct NotAnEnum(Started);

fn main() {}
