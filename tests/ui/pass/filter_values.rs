//! What a filter method accepts: the field's own type (integer literals infer it), a reference to
//! it, any string type for a string field, and what a user allows with `FilterValue`.

use std::borrow::Cow;
use std::sync::Arc;

use bus::{Filter, FilterValue, Message, SubjectToken};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelId(String);

impl SubjectToken for ChannelId {
    fn write_token(&self, out: &mut String) {
        out.push_str(&self.0);
    }
}

// A user's own type may take a `&str` in filters too.
impl FilterValue<ChannelId> for &str {}

#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("plugin.health.<channel>.<shard>.<level>.<host>.<zone>.<region>")]
pub struct Health {
    pub channel: ChannelId,
    pub shard: u32,
    pub level: i8,
    pub host: String,
    pub zone: Box<str>,
    pub region: Cow<'static, str>,
}

fn main() {
    let id = ChannelId("c1".into());
    let host = String::from("db-1");
    let f = Health::filter()
        .channel(&id)
        .shard(3)
        .level(-1)
        .host(&host)
        .zone("z")
        .region(Box::<str>::from("eu"))
        .zone(String::from("z"));
    assert_eq!(f.pattern().unwrap(), "plugin.health.c1.3.-1.db-1.z.eu");
    let shard: u32 = 4;
    let f = Health::filter()
        .channel("c2")
        .shard(&shard)
        .host(host.as_str())
        .host(Cow::Borrowed("db-2"))
        .zone(Arc::<str>::from("z2"))
        .region("us");
    assert_eq!(f.pattern().unwrap(), "plugin.health.c2.4.*.db-2.z2.us");
    let _ = Health::filter().channel(id).host(host);
}
