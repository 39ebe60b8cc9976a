use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply]
pub struct NoType {
    pub agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(Reply, bool)]
pub struct TwoTypes {
    pub agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(Reply)]
#[reply(bool)]
pub struct Twice {
    pub agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply = "Reply"]
pub struct NameValue {
    pub agent: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply()]
pub struct Empty {
    pub agent: String,
}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus) -> Result<(), bus::Error> {
    // The first type is kept, so these resolve.
    let _ = TwoTypes { agent: "a".into() }.request(bus).await?;
    let _ = Twice { agent: "a".into() }.request(bus).await?;
    let _ = NameValue { agent: "a".into() }.request(bus).await?;
    Ok(())
}

fn main() {}
