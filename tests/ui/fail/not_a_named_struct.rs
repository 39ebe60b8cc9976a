use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>")]
pub enum Outbound {
    Slack { channel: String },
}

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.inbound.<channel>")]
pub struct Inbound(String, String);

fn main() {
    let _ = Outbound::filter().channel("slack");
    let _ = Inbound::filter().channel("slack");
}
