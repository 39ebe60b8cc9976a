use bus::{Message, Messages};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Started {
    agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Launched {
    agent: String,
}

#[derive(Messages)]
enum AgentEvent {
    Started(Started),
    Launched(Launched),
}

fn main() {}
