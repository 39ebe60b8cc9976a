use std::borrow::Cow;

use bus::{Filter, Message, SubjectToken};
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

/// Integers, a custom token type, owned string types, and literals after placeholders.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.tenant.<tenant>.<shard>.<name>.<label>.<initial>.<on>.v2")]
pub struct Outbound {
    pub channel: Channel,
    pub tenant: u64,
    pub shard: i8,
    pub name: Box<str>,
    pub label: std::string::String,
    pub initial: char,
    pub on: bool,
    pub note: Cow<'static, str>,
}

fn main() {
    let m = Outbound {
        channel: Channel::Email,
        tenant: 42,
        shard: -1,
        name: "n".into(),
        label: "l".into(),
        initial: 'x',
        on: true,
        note: Cow::Borrowed("not in the subject"),
    };
    assert_eq!(
        m.subject().unwrap(),
        "plugin.outbound.email.tenant.42.-1.n.l.x.true.v2"
    );
    let f = Outbound::filter().channel(Channel::Slack).tenant(7u64).on(false);
    assert_eq!(f.pattern().unwrap(), "plugin.outbound.slack.tenant.7.*.*.*.*.false.v2");
}
