use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>")]
pub struct Event<T> {
    pub agent: String,
    pub payload: T,
}

fn main() {
    let _ = Event::<u32>::filter().agent("planner");
}
