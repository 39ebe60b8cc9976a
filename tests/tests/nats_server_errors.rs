//! A server `-ERR` that ends every connection attempt and will recur refuses the client at
//! once, naming the cause and the fix, and the client retries at its reconnect pace, not in a
//! storm; one that may pass keeps the reconnect loop. On both server lines.
//!
//! Before: a 5,000-byte token (the server answers `-ERR 'Maximum Control Line Exceeded'` and
//! closes) left the state `Disconnected`, the error "IO error", and `wait_for_connection` ran
//! out after its whole timeout with `ConnectTimeout` calling the server unreachable.
#![allow(clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use bus::{Broker, Bus, ConnectionState, Error, NatsAuth, NatsBroker, NatsOptions, Refusal};
use bus_tests::server::{NatsServer, ServerLine};
use common::{stays_refused, wait_refused, Logs};

const GUARD: Duration = Duration::from_secs(20);
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

fn long_token() -> String {
    "x".repeat(5_000)
}

/// One test per line: each runs on its own thread, so the log capture holds only its clients.
#[tokio::test]
async fn a_connect_line_over_the_servers_limit_is_refused_at_once_default_line() {
    let _serial = common::one_at_a_time().await;
    connect_line_over_the_limit(ServerLine::Default).await;
}

#[tokio::test]
async fn a_connect_line_over_the_servers_limit_is_refused_at_once_current_line() {
    let _serial = common::one_at_a_time().await;
    connect_line_over_the_limit(ServerLine::Current).await;
}

async fn connect_line_over_the_limit(line: ServerLine) {
    {
        let (logs, guard) = Logs::capture();
        let server = NatsServer::builder().line(line).token("t0k").start();
        let mut o = NatsOptions::new([server.url()]);
        o.auth = NatsAuth::Token(long_token());
        o.reconnect_delay = RECONNECT_DELAY;
        let started = Instant::now();
        let broker = NatsBroker::connect(o).await.unwrap();
        let why = wait_refused(&broker, Refusal::ControlLine, GUARD).await;
        let refused_after = started.elapsed();
        assert!(
            refused_after < Duration::from_secs(2),
            "took {refused_after:?}"
        );
        for words in [
            "Maximum Control Line Exceeded",
            "a token of 5000 bytes",
            "max_control_line",
            "shorter credentials",
        ] {
            assert!(
                why.to_ascii_lowercase()
                    .contains(&words.to_ascii_lowercase()),
                "{why}"
            );
        }
        assert!(!why.contains("xxxxxxxxxx"), "never the token: {why}");
        // Still refused 3 s later; the client's attempts keep to the reconnect delay: the
        // backoff's first steps (0, 2, 4 … 256 ms) and then one per 500 ms.
        let window = Duration::from_secs(3);
        stays_refused(&broker, Refusal::ControlLine, window).await;
        let attempts = logs.count("DEBUG", "NATS connection attempt failed");
        let bound = 10 + (started.elapsed().as_millis() / RECONNECT_DELAY.as_millis()) as usize;
        eprintln!(
            "{line:?} ({}): refused (control line) after {refused_after:?}; {attempts} attempts in {:?}",
            server.version(),
            started.elapsed()
        );
        assert!(attempts >= 2, "the client keeps trying: {attempts}");
        assert!(
            attempts <= bound,
            "a reconnect storm: {attempts} attempts, at most {bound}"
        );
        assert_eq!(
            logs.count(
                "ERROR",
                "NATS refused the connection: control line too long"
            ),
            1,
            "{}",
            logs.text()
        );
        drop(broker);
        drop(guard);

        // `wait_for_connection` fails at the refusal, long before its timeout.
        let started = Instant::now();
        let outcome = Bus::builder()
            .nats([server.url()])
            .token(long_token())
            .no_outbox()
            .reconnect_delay(RECONNECT_DELAY)
            .wait_for_connection(GUARD)
            .connect()
            .await;
        let took = started.elapsed();
        match outcome {
            Err(
                e @ Error::ConnectionRefused {
                    refusal: Refusal::ControlLine,
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("control line too long"), "{text}");
                assert!(text.contains("max_control_line"), "{text}");
                assert!(!text.contains("unreachable"), "{text}");
            }
            other => panic!("{line:?}: want ConnectionRefused(ControlLine), got {other:?}"),
        }
        assert!(took < Duration::from_secs(2), "took {took:?}");
        eprintln!("{line:?}: wait_for_connection failed with ConnectionRefused after {took:?}");
    }
}

/// `maximum connections exceeded` may pass (another client leaves): no refusal, the loop goes
/// on, and the client gets in once there is room.
#[tokio::test]
async fn a_server_error_that_may_pass_keeps_the_reconnect_loop() {
    let _serial = common::one_at_a_time().await;
    for line in ServerLine::ALL {
        let server = NatsServer::builder()
            .line(line)
            .config("max_connections: 1")
            .start();
        let first = async_nats::connect(server.url()).await.unwrap();
        first.flush().await.unwrap();
        let mut o = NatsOptions::new([server.url()]);
        o.reconnect_delay = Duration::from_millis(200);
        let second = NatsBroker::connect(o).await.unwrap();
        let mut state = second.state();
        let seen = tokio::time::timeout(
            Duration::from_secs(3),
            state.wait_for(|s| {
                matches!(s, ConnectionState::Refused(_) | ConnectionState::Connected)
            }),
        )
        .await
        .map(|s| s.map(|s| *s));
        assert!(
            seen.is_err(),
            "{line:?}: neither refused nor connected while full: {seen:?}"
        );
        let why = second.connection_error().expect("says why");
        assert!(
            why.to_ascii_lowercase()
                .contains("maximum connections exceeded"),
            "{why}"
        );
        drop(first);
        tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Connected))
            .await
            .expect("connects once there is room")
            .unwrap();
        second.confirm().await.unwrap();
    }
}
