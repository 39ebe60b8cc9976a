use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
pub struct Outbound {
    pub channel: String,
    pub text: String,
}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus, m: Outbound) -> Result<(), bus::Error> {
    let _sub = Outbound::subscribe(bus, Outbound::filter().queue("q")).await?;
    m.publish(bus).await
}

fn main() {}
