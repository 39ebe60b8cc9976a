use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    pub channel: String,
    pub instance: String,
    pub text: String,
}

fn main() {
    // The filter has one method per placeholder and nothing else.
    let _ = Outbound::filter().chanel("slack");
    let _ = Outbound::filter().text("hi");
}
