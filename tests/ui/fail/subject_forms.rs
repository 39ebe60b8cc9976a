use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject = "plugin.outbound.<channel>"]
pub struct NameValue {
    pub channel: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject]
pub struct NoTemplate {
    pub channel: String,
}

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>", "plugin.inbound.<channel>")]
pub struct TwoTemplates {
    pub channel: String,
}

fn main() {
    // The recovered template keeps these call sites quiet.
    let _ = NameValue::filter().channel("slack");
    let _ = TwoTemplates::filter().channel("slack");
}
