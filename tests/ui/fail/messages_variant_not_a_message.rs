use bus::{Message, Messages};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Started {
    agent: String,
}

#[derive(Serialize, Deserialize)]
struct Stopped {
    agent: String,
}

#[derive(Messages)]
enum AgentEvent {
    Started(Started),
    Stopped(Stopped),
}

fn main() {}
