use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>")]
#[subject("plugin.inbound.<channel>")]
pub struct Outbound {
    pub channel: String,
}

fn main() {
    let _ = Outbound::filter().channel("slack");
}
