//! The subject grammar and matcher: `bus_subject` (the reference rules) and the local broker's
//! subscription trie, which must deliver exactly what those rules predict.

use std::collections::BTreeSet;

use bus::{Broker, LocalBroker, RawMessage, RawSubscription};
use bus_subject::{check_pattern, check_subject, check_token, matches, PatternError, TokenError};
use futures::{FutureExt, StreamExt};

/// (pattern, subject, expected) for the wildcard edge cases.
const CASES: &[(&str, &str, bool)] = &[
    // `*` is exactly one token.
    ("a.*", "a.b", true),
    ("a.*", "a", false),
    ("a.*", "a.b.c", false),
    ("*", "a", true),
    ("*", "a.b", false),
    ("*.*", "a.b", true),
    ("*.*", "a", false),
    ("*.*", "a.b.c", false),
    ("a.*.c", "a.b.c", true),
    ("a.*.c", "a.b.d", false),
    ("*.b", "a.b", true),
    ("*.b", "b", false),
    // A final `>` is one or more tokens.
    ("a.>", "a.b", true),
    ("a.>", "a.b.c.d", true),
    ("a.>", "a", false),
    ("a.>", "b.a", false),
    (">", "a", true),
    (">", "a.b.c", true),
    ("*.>", "a", false),
    ("*.>", "a.b", true),
    ("a.*.>", "a.b", false),
    ("a.*.>", "a.b.c", true),
    // Literals match whole tokens, `-` and `_` included, case-sensitively.
    ("a", "a", true),
    ("a", "a.b", false),
    ("a.b", "a", false),
    ("a-b.c_d", "a-b.c_d", true),
    ("a-b.*", "a-b.c_d", true),
    ("a-b.*", "a_b.c", false),
    ("a-b", "a", false),
    ("a_b", "a-b", false),
    ("slack-a1", "slack-a1", true),
    ("Slack", "slack", false),
    ("plugin.outbound.*.*", "plugin.outbound.slack.a-1", true),
    (
        "plugin.outbound.slack.*",
        "plugin.outbound.discord.a1",
        false,
    ),
    ("plugin.>", "plugin.outbound.slack.a_1", true),
];

#[test]
fn reference_matcher_edge_cases() {
    for &(pattern, subject, want) in CASES {
        assert_eq!(
            matches(pattern, subject),
            want,
            "matches({pattern:?}, {subject:?})"
        );
    }
}

#[test]
fn pattern_and_subject_grammar() {
    for ok in [
        "a", "a.b", "a.*", "a.>", ">", "*", "*.*", "a.*.>", "a-b.c_d", "a*b",
    ] {
        assert!(check_pattern(ok).is_ok(), "pattern {ok:?} must be accepted");
    }
    assert_eq!(check_pattern(""), Err(PatternError::EmptyToken));
    assert_eq!(check_pattern("a..b"), Err(PatternError::EmptyToken));
    assert_eq!(check_pattern(".a"), Err(PatternError::EmptyToken));
    assert_eq!(check_pattern("a."), Err(PatternError::EmptyToken));
    assert_eq!(check_pattern("a.>.b"), Err(PatternError::MisplacedWildcard));
    assert_eq!(check_pattern(">.a"), Err(PatternError::MisplacedWildcard));
    assert_eq!(check_pattern("a b"), Err(PatternError::Whitespace));
    assert_eq!(check_pattern("a.\u{7}"), Err(PatternError::Whitespace));

    for ok in ["a", "a.b.c", "a-b.c_d", "plugin.outbound.slack.a1"] {
        assert!(check_subject(ok).is_ok(), "subject {ok:?} must be accepted");
    }
    for bad in ["a.*", "a.>", "*", ">"] {
        assert_eq!(
            check_subject(bad),
            Err(PatternError::WildcardInSubject),
            "{bad:?}"
        );
    }
    assert_eq!(check_subject("a..b"), Err(PatternError::EmptyToken));
    assert_eq!(check_subject("a\tb"), Err(PatternError::Whitespace));
}

#[test]
fn placeholder_tokens() {
    assert_eq!(check_token("a.b"), Err(TokenError::Dot));
    assert_eq!(check_token("*"), Err(TokenError::Wildcard));
    assert_eq!(check_token(">"), Err(TokenError::Wildcard));
    assert_eq!(check_token(""), Err(TokenError::Empty));
    assert_eq!(check_token(" "), Err(TokenError::Whitespace));
    assert_eq!(check_token("a b"), Err(TokenError::Whitespace));
    assert_eq!(check_token("a\u{1}"), Err(TokenError::Control));
    assert!(check_token("slack-a_1").is_ok());
}

/// Buffered messages, without waiting (the local broker delivers during `publish`).
fn drain(s: &mut RawSubscription) -> usize {
    let mut n = 0;
    while let Some(Some(_)) = tokio::task::unconstrained(s.messages.next()).now_or_never() {
        n += 1;
    }
    n
}

/// Publishes each subject once with every pattern subscribed, and checks the set of
/// subscriptions that received it against `matches`.
async fn check_trie(patterns: &[String], subjects: &[String]) -> usize {
    let broker = LocalBroker::new();
    let mut subs = Vec::new();
    for p in patterns {
        subs.push(broker.subscribe(p, None).await.expect("valid pattern"));
    }
    let mut pairs = 0;
    for subject in subjects {
        broker
            .publish(RawMessage::new(subject.as_str(), "x"))
            .await
            .expect("publish");
        broker.confirm().await.expect("confirm");
        let mut got = BTreeSet::new();
        for (i, s) in subs.iter_mut().enumerate() {
            match drain(s) {
                0 => {}
                1 => {
                    got.insert(i);
                }
                n => panic!("{:?} got {n} copies of {subject:?}", patterns[i]),
            }
        }
        let want: BTreeSet<usize> = patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| matches(p, subject))
            .map(|(i, _)| i)
            .collect();
        let names = |set: &BTreeSet<usize>| -> Vec<&str> {
            set.iter().map(|&i| patterns[i].as_str()).collect()
        };
        assert_eq!(
            names(&got),
            names(&want),
            "subject {subject:?}: the trie and `matches` disagree"
        );
        pairs += patterns.len();
    }
    pairs
}

#[tokio::test]
async fn trie_agrees_on_edge_cases() {
    let patterns: BTreeSet<String> = CASES.iter().map(|(p, _, _)| p.to_string()).collect();
    let subjects: BTreeSet<String> = CASES.iter().map(|(_, s, _)| s.to_string()).collect();
    let patterns: Vec<String> = patterns.into_iter().collect();
    let subjects: Vec<String> = subjects.into_iter().collect();
    check_trie(&patterns, &subjects).await;
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TOKENS: &[&str] = &["a", "b", "c-d", "e_f", "A"];

fn gen_subject(rng: &mut Rng) -> String {
    let len = 1 + rng.below(4);
    (0..len)
        .map(|_| TOKENS[rng.below(TOKENS.len())])
        .collect::<Vec<_>>()
        .join(".")
}

fn gen_pattern(rng: &mut Rng) -> String {
    let len = 1 + rng.below(4);
    let mut tokens: Vec<&str> = (0..len)
        .map(|_| {
            if rng.below(3) == 0 {
                "*"
            } else {
                TOKENS[rng.below(TOKENS.len())]
            }
        })
        .collect();
    if rng.below(4) == 0 {
        *tokens.last_mut().expect("len >= 1") = ">";
    }
    tokens.join(".")
}

#[tokio::test]
async fn trie_agrees_with_matches_on_generated_pairs() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut patterns: BTreeSet<String> = (0..80).map(|_| gen_pattern(&mut rng)).collect();
    patterns.extend(CASES.iter().map(|(p, _, _)| p.to_string()));
    let mut subjects: BTreeSet<String> = (0..60).map(|_| gen_subject(&mut rng)).collect();
    subjects.extend(CASES.iter().map(|(_, s, _)| s.to_string()));
    let patterns: Vec<String> = patterns.into_iter().collect();
    let subjects: Vec<String> = subjects.into_iter().collect();
    let pairs = check_trie(&patterns, &subjects).await;
    assert!(pairs >= 300, "only {pairs} pairs checked");
    // The generator must produce both outcomes, or the check proves little.
    let hits = patterns
        .iter()
        .flat_map(|p| subjects.iter().map(move |s| matches(p, s)))
        .filter(|m| *m)
        .count();
    assert!(
        hits > 50 && hits < pairs - 50,
        "{hits} of {pairs} pairs match"
    );
}

/// Subscribing and unsubscribing in any order leaves the trie delivering exactly to the live
/// subscriptions (the match cache is invalidated each time).
#[tokio::test]
async fn trie_follows_subscribe_and_unsubscribe() {
    let broker = LocalBroker::new();
    let mut a = broker.subscribe("x.*", None).await.unwrap();
    broker.publish(RawMessage::new("x.y", "1")).await.unwrap();
    assert_eq!(drain(&mut a), 1);
    let mut b = broker.subscribe("x.y", None).await.unwrap();
    broker.publish(RawMessage::new("x.y", "2")).await.unwrap();
    assert_eq!((drain(&mut a), drain(&mut b)), (1, 1));
    drop(a);
    broker.publish(RawMessage::new("x.y", "3")).await.unwrap();
    assert_eq!(drain(&mut b), 1);
    assert_eq!(broker.subscription_count(), 1);
    drop(b);
    assert_eq!(broker.subscription_count(), 0);
    let err = broker
        .request(
            RawMessage::new("x.y", "4"),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, bus::Error::NoResponders { .. }), "{err:?}");
}

/// Matching cost does not grow with unrelated subscriptions: 10,000 distinct subjects
/// subscribed, and a publish still reaches exactly its one subscriber.
#[tokio::test]
async fn ten_thousand_subscriptions() {
    let broker = LocalBroker::new();
    let mut subs = Vec::new();
    for i in 0..10_000 {
        subs.push(
            broker
                .subscribe(&format!("plugin.outbound.ch{}.i{i}", i % 100), None)
                .await
                .unwrap(),
        );
    }
    broker
        .publish(RawMessage::new("plugin.outbound.ch42.i4242", "x"))
        .await
        .unwrap();
    let got: Vec<usize> = subs
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| (drain(s) > 0).then_some(i))
        .collect();
    assert_eq!(got, [4242]);
}
