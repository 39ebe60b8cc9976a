//! Authentication against a server that requires it: good credentials connect, bad ones never do.

use std::time::Duration;

use bus::{Broker, ConnectionState, NatsAuth, NatsBroker, NatsOptions, RawMessage};
use bus_tests::server::NatsServer;
use bus_tests::support::stays_unconnected;

const GUARD: Duration = Duration::from_secs(20);

async fn connect(url: &str, auth: NatsAuth) -> NatsBroker {
    let mut o = NatsOptions::new([url]);
    o.auth = auth;
    o.reconnect_delay = Duration::from_millis(100);
    o.request_timeout = Duration::from_secs(2);
    NatsBroker::connect(o).await.expect("connect")
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
}

async fn assert_never_connects(broker: &NatsBroker) {
    // Several reconnect attempts (100 ms apart) fit in this window; none may succeed.
    assert!(
        stays_unconnected(broker, Duration::from_secs(2)).await,
        "bad credentials connected"
    );
    assert_eq!(*broker.state().borrow(), ConnectionState::Disconnected);
}

#[tokio::test]
async fn token() {
    let server = NatsServer::builder().token("s3cret").start();
    assert_works(&connect(&server.url(), NatsAuth::Token("s3cret".into())).await).await;
    assert_never_connects(&connect(&server.url(), NatsAuth::Token("wrong".into())).await).await;
    assert_never_connects(&connect(&server.url(), NatsAuth::None).await).await;
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::builder().user_password("alice", "pw").start();
    let good = NatsAuth::UserPassword("alice".into(), "pw".into());
    assert_works(&connect(&server.url(), good).await).await;
    let bad = NatsAuth::UserPassword("alice".into(), "nope".into());
    assert_never_connects(&connect(&server.url(), bad).await).await;
}

/// A test-only user NKey pair (never use it anywhere else).
const NKEY_SEED: &str = "SUAAG5V7ZXS6RRI4JCJRRLZDICIMTGKTAXJXWFSSF4PGZHUBKJQMWHQQXE";
const NKEY_PUBLIC: &str = "UDFBW64ZQED22ZTSF3O75GRKSNTDRNTDTY3GBSRPBECMM5T2L473M5W2";

#[tokio::test]
async fn nkey() {
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{ users: [ {{ nkey: {NKEY_PUBLIC:?} }} ] }}"
        ))
        .start();
    assert_works(&connect(&server.url(), NatsAuth::NKey(NKEY_SEED.into())).await).await;
    assert_never_connects(&connect(&server.url(), NatsAuth::Token("not-an-nkey".into())).await)
        .await;
}
