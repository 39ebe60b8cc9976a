use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>")]
pub struct Outbound {
    pub channel: String,
}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus) {
    let m = Outbound { channel: "slack".into() };
    let _ = m.request(bus).await;
}

fn main() {}
