use bus::{Message, SubjectToken};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Channel {
    Slack,
    Email,
}

impl SubjectToken for Channel {
    fn write_token(&self, out: &mut String) {
        out.push_str(match self {
            Channel::Slack => "slack",
            Channel::Email => "email",
        });
    }
}

#[derive(Serialize, Deserialize, Message)]
#[subject("plugin.health.<channel>.<shard>.<host>")]
pub struct Health {
    pub channel: Channel,
    pub shard: u32,
    pub host: String,
}

fn main() {
    // A filter method takes its field's type: each of these could never match what `Health`
    // publishes.
    let _ = Health::filter().shard("3");
    let _ = Health::filter().shard("abc");
    let _ = Health::filter().host(7);
    let _ = Health::filter().channel("slack");
    let wide: u64 = 3;
    let _ = Health::filter().shard(wide);
}
