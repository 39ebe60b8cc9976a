//! Run-time behaviour of the code `#[derive(Message)]` generates, without a broker: subjects,
//! filter patterns, queue groups, and refusal of placeholder values that would widen a subject.

use bus::{Error, Filter, Message, Request, SubjectToken};
use bus_tests::msgs::{self, Delegate, Outbound};
use serde::{Deserialize, Serialize};

/// Literals after and between placeholders, an integer and a custom token type.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.seq.<seq>.<level>.v1")]
struct Event {
    level: Level,
    agent: String,
    seq: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Level {
    Info,
    Warn,
}

impl SubjectToken for Level {
    fn write_token(&self, out: &mut String) {
        out.push_str(match self {
            Level::Info => "info",
            Level::Warn => "warn",
        });
    }
}

/// No placeholder at all.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("plugin.health.all-ok_2")]
struct Health {
    ok: bool,
}

/// A keyword field name as a placeholder.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("plugin.inbound.<type>")]
struct Keyword {
    r#type: String,
}

fn outbound(channel: &str, instance: &str) -> Outbound {
    msgs::outbound(channel, instance, "hi")
}

#[test]
fn constants() {
    assert_eq!(Outbound::SUBJECT, "plugin.outbound.<channel>.<instance>");
    assert_eq!(Outbound::TYPE_NAME, "Outbound");
    assert_eq!(Event::SUBJECT, "agent.events.<agent>.seq.<seq>.<level>.v1");
    assert_eq!(Keyword::TYPE_NAME, "Keyword");
}

#[test]
fn subjects_of_several_shapes() {
    assert_eq!(
        outbound("slack", "a1").subject().unwrap(),
        "plugin.outbound.slack.a1"
    );
    let e = Event {
        level: Level::Warn,
        agent: "planner".into(),
        seq: 42,
    };
    assert_eq!(e.subject().unwrap(), "agent.events.planner.seq.42.warn.v1");
    assert_eq!(
        Health { ok: true }.subject().unwrap(),
        "plugin.health.all-ok_2"
    );
    assert_eq!(
        Keyword {
            r#type: "text".into()
        }
        .subject()
        .unwrap(),
        "plugin.inbound.text"
    );
    let d = Delegate {
        agent: "planner".into(),
        task: "t".into(),
    };
    assert_eq!(d.subject().unwrap(), "agent.route.planner");
}

#[test]
fn filter_patterns() {
    assert_eq!(Outbound::filter().pattern().unwrap(), "plugin.outbound.*.*");
    assert_eq!(
        Outbound::filter().channel("slack").pattern().unwrap(),
        "plugin.outbound.slack.*"
    );
    assert_eq!(
        Outbound::filter().instance("a1").pattern().unwrap(),
        "plugin.outbound.*.a1"
    );
    assert_eq!(
        Outbound::filter()
            .instance("a1")
            .channel("email")
            .pattern()
            .unwrap(),
        "plugin.outbound.email.a1"
    );
    // Setting a placeholder twice keeps the last value.
    assert_eq!(
        Outbound::filter()
            .channel("a")
            .channel("b")
            .pattern()
            .unwrap(),
        "plugin.outbound.b.*"
    );
    assert_eq!(
        Event::filter().pattern().unwrap(),
        "agent.events.*.seq.*.*.v1"
    );
    assert_eq!(
        Event::filter()
            .seq(7u64)
            .level(Level::Info)
            .pattern()
            .unwrap(),
        "agent.events.*.seq.7.info.v1"
    );
    assert_eq!(
        Health::filter().pattern().unwrap(),
        "plugin.health.all-ok_2"
    );
    assert_eq!(
        Keyword::filter().r#type("x").pattern().unwrap(),
        "plugin.inbound.x"
    );
    // The filter accepts owned and borrowed values alike.
    let channel = String::from("slack");
    assert_eq!(
        Outbound::filter().channel(&channel).pattern().unwrap(),
        Outbound::filter().channel(channel).pattern().unwrap()
    );
}

#[test]
fn queue_groups() {
    assert_eq!(Outbound::filter().queue_group(), None);
    let f = Outbound::filter().channel("slack").queue("workers");
    assert_eq!(f.queue_group(), Some("workers"));
    assert_eq!(f.pattern().unwrap(), "plugin.outbound.slack.*");
    let debug = format!("{f:?}");
    assert!(debug.contains("OutboundFilter"), "{debug}");
    assert!(debug.contains("plugin.outbound.slack.*"), "{debug}");
    assert!(debug.contains("workers"), "{debug}");

    match Outbound::filter().queue("a.b").pattern() {
        Err(Error::InvalidSubjectToken { field, value, .. }) => {
            assert_eq!(field, "queue");
            assert_eq!(value, "a.b");
        }
        other => panic!("expected InvalidSubjectToken, got {other:?}"),
    }
}

const INJECTIONS: [&str; 7] = ["a.b", "*", ">", "", " ", "\n", "a\u{0}b"];

#[test]
fn subject_refuses_injection() {
    for bad in INJECTIONS {
        let m = outbound("slack", bad);
        match m.subject() {
            Err(Error::InvalidSubjectToken { field, value, .. }) => {
                assert_eq!(field, "instance", "value {bad:?}");
                assert_eq!(value, bad);
            }
            other => panic!("{bad:?} must be refused, got {other:?}"),
        }
        // The first placeholder is reported first.
        match outbound(bad, "a1").subject() {
            Err(Error::InvalidSubjectToken { field, .. }) => assert_eq!(field, "channel"),
            other => panic!("{bad:?} must be refused, got {other:?}"),
        }
    }
}

#[test]
fn filter_refuses_injection() {
    for bad in INJECTIONS {
        match Outbound::filter().channel(bad).pattern() {
            Err(Error::InvalidSubjectToken { field, value, .. }) => {
                assert_eq!(field, "channel", "value {bad:?}");
                assert_eq!(value, bad);
            }
            other => panic!("{bad:?} must be refused, got {other:?}"),
        }
        // A later valid value does not hide the earlier invalid one.
        let f = Outbound::filter().instance(bad).instance("ok");
        assert!(
            matches!(
                f.pattern(),
                Err(Error::InvalidSubjectToken {
                    field: "instance",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    let message = Outbound::filter()
        .channel("a.b")
        .pattern()
        .unwrap_err()
        .to_string();
    assert!(message.contains("<channel>"), "{message}");
}

#[test]
fn reply_type_is_wired() {
    fn reply_of<R: Request>() -> &'static str {
        std::any::type_name::<R::Reply>()
    }
    assert!(reply_of::<Delegate>().ends_with("RouteReply"));
    assert_eq!(
        Delegate::filter().agent("planner").pattern().unwrap(),
        "agent.route.planner"
    );
}
