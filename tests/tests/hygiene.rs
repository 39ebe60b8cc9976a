//! The generated code names every path in full, so user items that shadow prelude names next to
//! the derive change nothing (after serde's `test_suite/tests/test_gen.rs`).

#![allow(dead_code, non_camel_case_types, clippy::upper_case_acronyms)]

mod shadowed {
    use bus::{Filter, Message};
    use serde::{Deserialize, Serialize};

    struct Result;
    struct Ok;
    struct Err;
    struct Option;
    struct Some;
    struct None;
    struct String;
    struct Vec;
    struct Box;
    struct Default;
    struct Send;
    struct Sync;
    struct Fn;
    struct Future;
    struct Display;
    struct Bus;
    struct Envelope;
    struct Error;
    struct SubjectBuilder;
    struct FilterParts;
    struct core;
    struct std;
    struct __F;
    struct __E;
    struct __S;
    struct __R;
    struct FilterValue;
    struct SameAs;
    struct BoxFuture;

    #[derive(Serialize, Deserialize, Message)]
    #[subject("agent.route.<agent>.<seq>")]
    #[reply(Reply)]
    pub struct Delegate {
        pub agent: ::std::string::String,
        pub seq: u32,
    }

    /// No `#[reply]`: its `request` and `serve` exist only to fail with advice, and must compile.
    #[derive(Serialize, Deserialize, Message)]
    #[subject("agent.events.<agent>")]
    pub struct Event {
        pub agent: ::std::string::String,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Reply {
        pub ok: bool,
    }

    pub fn check() {
        let d = Delegate {
            agent: "planner".into(),
            seq: 3,
        };
        assert_eq!(d.subject().unwrap(), "agent.route.planner.3");
        assert_eq!(
            Delegate::filter().agent("planner").pattern().unwrap(),
            "agent.route.planner.*"
        );
        assert_eq!(
            Event::filter().agent("a").pattern().unwrap(),
            "agent.events.a"
        );
        assert_eq!(
            Delegate::filter().queue("q").queue_group(),
            ::core::option::Option::Some("q")
        );
    }
}

#[test]
fn shadowed_prelude_names_do_not_break_the_derive() {
    shadowed::check();
}
