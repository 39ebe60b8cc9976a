use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct ChannelId {
    pub id: u64,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>")]
pub struct Outbound {
    pub channel: ChannelId,
    pub text: String,
}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus, m: Outbound) -> Result<(), bus::Error> {
    // The filter takes the field's type, so it needs the same fix.
    let _sub = Outbound::subscribe(bus, Outbound::filter().channel(ChannelId { id: 7 })).await?;
    m.publish(bus).await
}

fn main() {}
