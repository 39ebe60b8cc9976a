use bus::Message;
use serde::{Deserialize, Serialize};

pub struct Reply {
    pub ok: bool,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(Reply)]
pub struct Delegate {
    pub agent: String,
}

fn main() {}
