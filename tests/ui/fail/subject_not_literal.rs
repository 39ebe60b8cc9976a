use bus::Message;
use serde::{Deserialize, Serialize};

const SUBJECT: &str = "plugin.outbound.<channel>";

#[derive(Serialize, Deserialize, Message)]
#[subject(SUBJECT)]
pub struct Outbound {
    pub channel: String,
}

fn main() {}
