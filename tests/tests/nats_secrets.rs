//! No secret reaches a log line, an error, a `Debug` or a heartbeat: everything the SDK and
//! async-nats log down to TRACE is captured while a client with a password in its URL connects,
//! reconnects after a server restart, is refused (wrong password, token, NKey) and finds no
//! server, on both server lines; then the capture and every error text are searched for the
//! secrets. (Before: `NATS client started urls=["nats://alice:<password>@…"]` at DEBUG.)
//!
//! A password in the URL is taken out of it and sent as the user's password, so it also logs
//! in (async-nats 0.35 ignores a URL's user info).

use std::time::Duration;

use bus::{Bus, ConnectionState, Error, NatsAuth, NatsBroker, NatsOptions, RawMessage, Refusal};
use bus_tests::server::{free_port, NatsServer, ServerLine};
use common::Logs;

mod common;

const GUARD: Duration = Duration::from_secs(20);
const PASSWORD: &str = "S3cretPassw0rdXYZ";
const WRONG_PASSWORD: &str = "Wr0ngPassw0rdXYZ";
const TOKEN: &str = "T0kenS3cretXYZ";
/// A test-only user NKey seed (also in nats_auth.rs), unknown to the server here.
const SEED: &str = "SUAGNW2DGCYJIQX57MSCXAEKIOOXFW5TUOEX6HY4HQIJ5LXLC2K573JLD4";
const SECRETS: [&str; 4] = [PASSWORD, WRONG_PASSWORD, TOKEN, SEED];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds a secret: {text}");
    }
}

/// `nats://alice:<password>@host:port` for `server`.
fn url_with(server: &NatsServer, password: &str) -> String {
    server
        .url()
        .replacen("nats://", &format!("nats://alice:{password}@"), 1)
}

async fn wait_for(bus: &Bus, want: ConnectionState) {
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("never {want}: {}", bus.state()))
        .unwrap();
}

#[tokio::test]
async fn no_secret_in_trace_logs_errors_or_debug_output() {
    // Everything logged at TRACE and above, by every crate (async-nats included).
    let (trace, _guard) = Logs::capture_at("trace");
    let mut errors = Vec::new();
    for line in ServerLine::ALL {
        let server = NatsServer::builder()
            .line(line)
            .user_password("alice", PASSWORD)
            .start();

        // The password in the URL logs in; the client reconnects after a restart.
        let builder = Bus::builder()
            .nats([url_with(&server, PASSWORD)])
            .no_outbox()
            .reconnect_delay(Duration::from_millis(100))
            .heartbeat(Duration::from_millis(200));
        errors.push(format!("{builder:?}"));
        let bus = builder
            .wait_for_connection(GUARD)
            .connect()
            .await
            .expect("the URL's password logs in");
        bus.publish_raw(RawMessage::new("secrets.ok", "x"))
            .await
            .unwrap();
        bus.flush().await.unwrap();
        server.restart();
        // The first confirmation after a lost connection fails by design (what was in flight
        // is unproven); the next ones go through once the client is back.
        let deadline = tokio::time::Instant::now() + GUARD;
        while bus.flush().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            wait_for(&bus, ConnectionState::Connected).await;
        }
        errors.push(format!("{bus:?}"));
        errors.push(format!("{:?}", bus.health().await));
        drop(bus);

        // A wrong password in the URL: refused, at once.
        let refused = Bus::builder()
            .nats([url_with(&server, WRONG_PASSWORD)])
            .no_outbox()
            .reconnect_delay(Duration::from_millis(100))
            .wait_for_connection(GUARD)
            .connect()
            .await;
        match refused {
            Err(
                e @ Error::ConnectionRefused {
                    refusal: Refusal::Authorization,
                    ..
                },
            ) => {
                assert!(e.to_string().contains("user \"alice\""), "{e}");
                errors.push(format!("{e} {e:?}"));
            }
            other => panic!("{line:?}: want ConnectionRefused, got {other:?}"),
        }

        // A wrong token and an unknown NKey: refused; the broker's error and Debug hold neither.
        for auth in [NatsAuth::Token(TOKEN.into()), NatsAuth::NKey(SEED.into())] {
            let mut o = NatsOptions::new([server.url()]);
            o.auth = auth;
            o.reconnect_delay = Duration::from_millis(100);
            errors.push(format!("{o:?}"));
            let broker = NatsBroker::connect(o).await.unwrap();
            let mut state = bus::Broker::state(&broker);
            tokio::time::timeout(
                GUARD,
                state.wait_for(|s| *s == ConnectionState::Refused(Refusal::Authorization)),
            )
            .await
            .expect("refused")
            .unwrap();
            errors.push(broker.connection_error().unwrap());
            errors.push(format!("{broker:?}"));
        }

        // Nothing listening: the timeout's error names the URL without its password.
        let down = format!("nats://alice:{PASSWORD}@127.0.0.1:{}", free_port());
        let unreachable = Bus::builder()
            .nats([down])
            .no_outbox()
            .reconnect_delay(Duration::from_millis(100))
            .wait_for_connection(Duration::from_secs(1))
            .connect()
            .await;
        match unreachable {
            Err(e @ Error::ConnectTimeout { .. }) => errors.push(format!("{e} {e:?}")),
            other => panic!("{line:?}: want ConnectTimeout, got {other:?}"),
        }

        // An unparsable URL: the configuration error shows it, without its credentials.
        let bad = format!("nats://alice:{PASSWORD}@bad host:4222");
        match NatsBroker::connect(NatsOptions::new([bad])).await {
            Err(e @ Error::Config(_)) => {
                let text = e.to_string();
                assert!(
                    text.contains("invalid NATS server URL \"nats://bad host:4222\""),
                    "{text}"
                );
                errors.push(text);
            }
            other => panic!("want Error::Config, got {other:?}"),
        }
    }
    let text = trace.text();
    // The capture saw the connection's life: async-nats's own TRACE/DEBUG lines and ours.
    assert!(
        text.contains("async_nats"),
        "nothing captured from async-nats"
    );
    assert!(text.contains("NATS client started"), "{text}");
    assert!(text.contains("NATS reconnected"), "{text}");
    assert!(text.contains("NATS refused the connection"), "{text}");
    assert_no_secret("the TRACE log", &text);
    for e in &errors {
        assert_no_secret("an error or Debug output", e);
    }
}
