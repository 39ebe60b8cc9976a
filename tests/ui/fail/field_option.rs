use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    pub channel: String,
    pub instance: Option<String>,
    pub text: String,
}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus, m: Outbound) -> Result<(), bus::Error> {
    let _sub = Outbound::subscribe(bus, Outbound::filter().instance("a1")).await?;
    m.publish(bus).await
}

fn main() {}
