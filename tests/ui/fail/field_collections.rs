use std::collections::HashMap;

use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<tags>.<labels>.<ids>.<rest>")]
pub struct Tagged {
    pub tags: Vec<String>,
    pub labels: HashMap<String, String>,
    pub ids: [u32; 2],
    pub rest: Box<Vec<u8>>,
}

fn main() {}
