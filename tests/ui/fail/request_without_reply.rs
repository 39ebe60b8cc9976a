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
    let _ = Outbound::serve(bus, Outbound::filter(), |_req| async { Ok::<_, bus::Error>(()) }).await;
}

fn main() {}
