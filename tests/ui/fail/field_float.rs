use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.<load>")]
pub struct Load {
    pub agent: String,
    pub load: f64,
}

fn main() {
    let _ = Load::filter().load(1u32);
}
