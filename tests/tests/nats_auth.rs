//! Authentication against a server that requires it: good credentials connect; bad ones put
//! the broker in `Refused(Authorization)` (with the reason, logged once), fail a
//! `wait_for_connection` at once and a `flush_timeout` at its deadline; a malformed seed or
//! credentials file fails `connect` with `Error::Config`.

mod common;

use std::time::{Duration, Instant};

use bus::{
    Broker, Bus, ConnectionState, Error, NatsAuth, NatsBroker, NatsOptions, RawMessage, Refusal,
};
use bus_tests::server::{free_port, NatsServer};
use common::{stays_refused, wait_refused, Logs};

const GUARD: Duration = Duration::from_secs(20);

fn options(url: &str, auth: NatsAuth) -> NatsOptions {
    let mut o = NatsOptions::new([url]);
    o.auth = auth;
    o.reconnect_delay = Duration::from_millis(100);
    o.request_timeout = Duration::from_secs(2);
    o
}

async fn connect(url: &str, auth: NatsAuth) -> NatsBroker {
    NatsBroker::connect(options(url, auth))
        .await
        .expect("connect")
}

async fn assert_works(broker: &NatsBroker) {
    let mut rx = broker.state();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("good credentials must connect")
        .unwrap();
    broker
        .publish(RawMessage::new("auth.ok", "x"))
        .await
        .unwrap();
    broker.confirm().await.unwrap();
    assert_eq!(broker.connection_error(), None);
}

/// The broker is refused for bad credentials, says so, and stays refused over many attempts
/// (100 ms apart): none of them connects.
async fn assert_refused(broker: &NatsBroker) -> String {
    let why = wait_refused(broker, Refusal::Authorization, GUARD).await;
    assert!(why.contains("Authorization Violation"), "{why}");
    stays_refused(broker, Refusal::Authorization, Duration::from_secs(1)).await;
    why
}

#[tokio::test]
async fn token() {
    let _serial = common::one_at_a_time().await;
    let server = NatsServer::builder().token("s3cret").start();
    assert_works(&connect(&server.url(), NatsAuth::Token("s3cret".into())).await).await;
    let why =
        assert_refused(&connect(&server.url(), NatsAuth::Token("Bad-T0ken".into())).await).await;
    assert!(why.contains("a token"), "{why}");
    assert!(
        !why.contains("Bad-T0ken"),
        "the token must not be in the error: {why}"
    );
    let why = assert_refused(&connect(&server.url(), NatsAuth::None).await).await;
    assert!(why.contains("no credentials"), "{why}");
}

#[tokio::test]
async fn user_and_password() {
    let _serial = common::one_at_a_time().await;
    let server = NatsServer::builder().user_password("alice", "pw").start();
    let good = NatsAuth::UserPassword("alice".into(), "pw".into());
    assert_works(&connect(&server.url(), good).await).await;
    let wrong_password = NatsAuth::UserPassword("alice".into(), "N0pe-pw".into());
    let why = assert_refused(&connect(&server.url(), wrong_password).await).await;
    assert!(why.contains("user \"alice\""), "{why}");
    assert!(
        !why.contains("N0pe-pw"),
        "the password must not be in the error: {why}"
    );
    let unknown_user = NatsAuth::UserPassword("mallory".into(), "pw".into());
    assert_refused(&connect(&server.url(), unknown_user).await).await;
    assert_refused(&connect(&server.url(), NatsAuth::None).await).await;
}

/// A test-only user NKey pair (never use it anywhere else).
const NKEY_SEED: &str = "SUAAG5V7ZXS6RRI4JCJRRLZDICIMTGKTAXJXWFSSF4PGZHUBKJQMWHQQXE";
const NKEY_PUBLIC: &str = "UDFBW64ZQED22ZTSF3O75GRKSNTDRNTDTY3GBSRPBECMM5T2L473M5W2";
/// Another test-only user NKey, which the servers here do not know.
const UNREGISTERED_SEED: &str = "SUAGNW2DGCYJIQX57MSCXAEKIOOXFW5TUOEX6HY4HQIJ5LXLC2K573JLD4";
const UNREGISTERED_PUBLIC: &str = "UCPMD5TPLR32PC7YBTTXC6DVMCBATOHXQ77RE6YWZAIVVNT7ONOMLTX7";
/// A test-only account seed: a valid seed, but not a user's.
const ACCOUNT_SEED: &str = "SAAKCYW6SREWLWAO4U75BHDCU3RVPSBWOXMOPMVFRJLLBJYN34L2GTIFDI";

fn nkey_server() -> NatsServer {
    NatsServer::builder()
        .config(format!(
            "authorization {{ users: [ {{ nkey: {NKEY_PUBLIC:?} }} ] }}"
        ))
        .start()
}

#[tokio::test]
async fn nkey() {
    let _serial = common::one_at_a_time().await;
    let server = nkey_server();
    assert_works(&connect(&server.url(), NatsAuth::NKey(NKEY_SEED.into())).await).await;
    // A seed read from a file comes with its newline.
    assert_works(&connect(&server.url(), NatsAuth::NKey(format!("{NKEY_SEED}\n"))).await).await;
    let unregistered = NatsAuth::NKey(UNREGISTERED_SEED.into());
    let why = assert_refused(&connect(&server.url(), unregistered).await).await;
    assert!(why.contains(UNREGISTERED_PUBLIC), "names the key: {why}");
    assert!(!why.contains(UNREGISTERED_SEED), "never the seed: {why}");
    assert_refused(&connect(&server.url(), NatsAuth::Token("not-an-nkey".into())).await).await;
}

fn config_error(outcome: Result<NatsBroker, Error>) -> String {
    match outcome {
        Err(Error::Config(text)) => text,
        other => panic!("expected Error::Config, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_seed_fails_connect() {
    let _serial = common::one_at_a_time().await;
    let server = nkey_server();
    let truncated = &NKEY_SEED[..40];
    let mut flipped = NKEY_SEED.to_owned();
    flipped.replace_range(20..21, if &NKEY_SEED[20..21] == "A" { "B" } else { "A" });
    for (seed, what) in [
        (truncated.to_owned(), "truncated"),
        (flipped.clone(), "bad checksum"),
        (NKEY_PUBLIC.to_owned(), "the public key instead of the seed"),
        ("".to_owned(), "empty"),
    ] {
        let text = config_error(
            NatsBroker::connect(options(&server.url(), NatsAuth::NKey(seed.clone()))).await,
        );
        assert!(text.contains("NKey seed is malformed"), "{what}: {text}");
        assert!(
            seed.is_empty() || !text.contains(seed.as_str()),
            "{what}: the seed must not be quoted: {text}"
        );
    }
    let text = config_error(
        NatsBroker::connect(options(&server.url(), NatsAuth::NKey(ACCOUNT_SEED.into()))).await,
    );
    assert!(text.contains("type Account, not a user seed"), "{text}");
    // The same through the builder, with no server needed.
    let outcome = Bus::builder()
        .nats(["nats://127.0.0.1:1"])
        .no_outbox()
        .nkey(truncated)
        .connect()
        .await;
    assert!(matches!(outcome, Err(Error::Config(_))), "{outcome:?}");
}

/// The `Error::Config` text of connecting with this credentials file.
async fn creds_error(path: std::path::PathBuf) -> String {
    let o = options("nats://127.0.0.1:1", NatsAuth::CredentialsFile(path));
    config_error(NatsBroker::connect(o).await)
}

#[tokio::test]
async fn bad_credentials_file_fails_connect() {
    let _serial = common::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let text = creds_error(dir.path().join("missing.creds")).await;
    assert!(text.contains("cannot read NATS credentials file"), "{text}");
    assert!(text.contains("missing.creds"), "{text}");

    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "this is not a creds file\n").unwrap();
    let text = creds_error(garbage).await;
    assert!(text.contains("is not valid"), "{text}");

    // The right shape, but the seed block holds a broken seed.
    let broken_seed = dir.path().join("broken-seed.creds");
    std::fs::write(
        &broken_seed,
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            &NKEY_SEED[..40]
        ),
    )
    .unwrap();
    let text = creds_error(broken_seed).await;
    assert!(text.contains("is not valid"), "{text}");
}

/// The refusal is logged once at ERROR, with the words the issue asked for; the retries that
/// follow (about 20 here) only at DEBUG.
#[tokio::test]
async fn refusal_is_logged_once() {
    let _serial = common::one_at_a_time().await;
    let (logs, _guard) = Logs::capture();
    let server = NatsServer::builder().user_password("alice", "pw").start();
    let broker = connect(
        &server.url(),
        NatsAuth::UserPassword("alice".into(), "nope".into()),
    )
    .await;
    wait_refused(&broker, Refusal::Authorization, GUARD).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = logs.text();
    assert_eq!(
        logs.count(
            "ERROR",
            "NATS refused the connection: authorization violation"
        ),
        1,
        "{text}"
    );
    assert_eq!(logs.count_level("ERROR"), 1, "{text}");
    assert_eq!(logs.count_level("WARN"), 0, "{text}");
    assert!(
        logs.count(
            "DEBUG",
            "NATS refused the connection: authorization violation"
        ) >= 3,
        "later attempts at DEBUG: {text}"
    );
}

/// `wait_for_connection`: fails at the refusal (long before the timeout), with the reason;
/// connects with good credentials; times out naming `Connection refused` when nothing listens.
#[tokio::test]
async fn wait_for_connection() {
    let _serial = common::one_at_a_time().await;
    let server = NatsServer::builder().user_password("alice", "pw").start();
    let started = Instant::now();
    let outcome = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .user_password("alice", "nope")
        .wait_for_connection(GUARD)
        .connect()
        .await;
    match &outcome {
        Err(Error::ConnectionRefused {
            refusal: Refusal::Authorization,
            detail,
        }) => assert!(detail.contains("Authorization Violation"), "{detail}"),
        other => panic!("expected ConnectionRefused(Authorization), got {other:?}"),
    }
    assert!(
        started.elapsed() < GUARD / 2,
        "took {:?}",
        started.elapsed()
    );
    let message = outcome.unwrap_err().to_string();
    assert!(message.contains("authorization violation"), "{message}");

    let bus = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .user_password("alice", "pw")
        .wait_for_connection(GUARD)
        .connect()
        .await
        .expect("good credentials connect");
    assert_eq!(bus.state(), ConnectionState::Connected);
    assert_eq!(bus.connection_error(), None);

    let nobody = format!("nats://127.0.0.1:{}", free_port());
    let wait = Duration::from_secs(2);
    let started = Instant::now();
    let outcome = Bus::builder()
        .nats([nobody])
        .no_outbox()
        .reconnect_delay(Duration::from_millis(100))
        .wait_for_connection(wait)
        .connect()
        .await;
    assert!(started.elapsed() >= wait, "returned early");
    match outcome {
        Err(Error::ConnectTimeout { timeout, detail }) => {
            assert_eq!(timeout, wait);
            assert!(detail.contains("Connection refused"), "{detail}");
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
}

/// `flush_timeout` on a refused bus: publishes are accepted (queued in the outbox, or handed
/// to the client), the flush gives up at its deadline naming the refusal; the plain `flush`
/// would wait for ever. Good credentials flush in time.
#[tokio::test]
async fn flush_timeout_names_the_refusal() {
    let _serial = common::one_at_a_time().await;
    let server = NatsServer::builder().user_password("alice", "pw").start();
    let dir = tempfile::tempdir().unwrap();
    let builder = || {
        Bus::builder()
            .nats([server.url()])
            .reconnect_delay(Duration::from_millis(100))
            .request_timeout(Duration::from_millis(500))
    };
    let with_outbox = builder()
        .user_password("alice", "nope")
        .outbox_path(dir.path().join("refused.sqlite3"))
        .connect()
        .await
        .unwrap();
    let direct = builder()
        .user_password("alice", "nope")
        .no_outbox()
        .connect()
        .await
        .unwrap();
    for bus in [&with_outbox, &direct] {
        let mut state = bus.watch_state();
        tokio::time::timeout(
            GUARD,
            state.wait_for(|s| *s == ConnectionState::Refused(Refusal::Authorization)),
        )
        .await
        .expect("never refused")
        .unwrap();
        bus.publish_raw(RawMessage::new("auth.queued", "x"))
            .await
            .unwrap();
        let deadline = Duration::from_millis(1500);
        let started = Instant::now();
        let outcome = bus.flush_timeout(deadline).await;
        let took = started.elapsed();
        assert!(took >= deadline && took < deadline * 3, "took {took:?}");
        let e = outcome.expect_err("a refused bus cannot flush");
        assert!(e.is_transient());
        match &e {
            Error::FlushTimeout {
                timeout,
                state,
                detail,
            } => {
                assert_eq!(*timeout, deadline);
                assert_eq!(*state, ConnectionState::Refused(Refusal::Authorization));
                assert!(
                    detail
                        .as_deref()
                        .unwrap_or("")
                        .contains("Authorization Violation"),
                    "{detail:?}"
                );
            }
            other => panic!("expected FlushTimeout, got {other:?}"),
        }
        assert!(
            e.to_string().contains("refused (authorization violation)"),
            "{e}"
        );
    }
    assert_eq!(
        with_outbox.outbox_stats().await.unwrap().unwrap().depth,
        1,
        "the message stays queued"
    );

    let good = builder()
        .user_password("alice", "pw")
        .outbox_path(dir.path().join("good.sqlite3"))
        .connect()
        .await
        .unwrap();
    good.publish_raw(RawMessage::new("auth.ok", "x"))
        .await
        .unwrap();
    good.flush_timeout(GUARD)
        .await
        .expect("flushes once connected");
    assert_eq!(good.outbox_stats().await.unwrap().unwrap().depth, 0);
}

/// The state follows the cause: refused while the server refuses, disconnected once it is
/// down, connected once a server on the same port accepts the client.
#[tokio::test]
async fn refusal_ends_when_the_cause_does() {
    let _serial = common::one_at_a_time().await;
    let server = NatsServer::builder().token("s3cret").start();
    let port = server.port();
    let broker = connect(&server.url(), NatsAuth::Token("wrong".into())).await;
    wait_refused(&broker, Refusal::Authorization, GUARD).await;

    server.stop();
    let mut rx = broker.state();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Disconnected))
        .await
        .expect("a stopped server is not a refusal")
        .unwrap();
    let why = broker.connection_error().expect("says why");
    assert!(why.contains("Connection refused"), "{why}");

    let open = NatsServer::builder().port(port).start();
    tokio::time::timeout(GUARD, rx.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("connects once a server accepts the client")
        .unwrap();
    assert_eq!(broker.connection_error(), None);
    drop(open);
}
