use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<target>")]
pub struct Delegate {
    pub target: (String, u32),
}

fn main() {}
