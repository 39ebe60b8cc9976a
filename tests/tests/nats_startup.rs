//! Start-up latency, by mechanism rather than by the clock: the state turns `Connected` (and
//! the outbox drainer sends) as soon as the client holds the new connection's INFO, not after
//! a fixed wait. The bench's `latency_first_message` row measures the same path in time.
//!
//! The broker says how it decided in one DEBUG event, `NATS connection INFO read` with
//! `waits` (1 ms waits taken) and `ran_out` (whether it gave up waiting for an INFO that names
//! a new connection). Before this check existed, the INFO was compared with the one read when
//! the `Connected` event was handled, which async-nats had usually replaced already: every
//! start ran the full 200 waits (about 200-400 ms) before the first message left the outbox.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, ConnectionState};
use bus_tests::msgs::{outbound, Outbound};
use bus_tests::server::NatsServer;
use futures::StreamExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const GUARD: Duration = Duration::from_secs(30);

/// The `waits` and `ran_out` fields of every `NATS connection INFO read` event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(u64, bool)>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            waits: Option<u64>,
            ran_out: Option<bool>,
        }
        impl Visit for Fields {
            fn record_u64(&mut self, field: &Field, value: u64) {
                if field.name() == "waits" {
                    self.waits = Some(value);
                }
            }
            fn record_bool(&mut self, field: &Field, value: bool) {
                if field.name() == "ran_out" {
                    self.ran_out = Some(value);
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if f.message == "NATS connection INFO read" {
            if let (Some(w), Some(r)) = (f.waits, f.ran_out) {
                self.0.lock().unwrap().push((w, r));
            }
        }
    }
}

async fn wait_for(bus: &Bus, want: impl Fn(ConnectionState) -> bool) {
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| want(*s)))
        .await
        .expect("the state never changed")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_is_reported_once_the_new_info_is_read_not_after_a_wait() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();
    let server = NatsServer::start();
    let watcher = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    wait_for(&watcher, |s| s == ConnectionState::Connected).await;
    let mut sub = Outbound::subscribe(&watcher, Outbound::filter())
        .await
        .unwrap();

    // Published at once after `connect()` returns: it waits in the outbox for the drainer,
    // which waits for `Connected`.
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    outbound("startup", "first", "x")
        .publish(&bus)
        .await
        .unwrap();
    let got = tokio::time::timeout(GUARD, sub.next())
        .await
        .expect("the first message never arrived")
        .unwrap()
        .unwrap();
    assert_eq!(got.instance, "first");
    bus.flush().await.unwrap();
    {
        let seen = capture.0.lock().unwrap();
        assert_eq!(seen.len(), 2, "one INFO read per connection: {seen:?}");
        assert!(
            seen.iter().all(|&(_, ran_out)| !ran_out),
            "Connected was reported only after the wait ran out: {seen:?}"
        );
    }

    // A reconnect (to a new server process on the same port) is reported the same way.
    server.kill();
    wait_for(&bus, |s| s != ConnectionState::Connected).await;
    server.start_again();
    wait_for(&bus, |s| s == ConnectionState::Connected).await;
    let seen = capture.0.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen.iter().all(|&(_, ran_out)| !ran_out),
        "Connected was reported only after the wait ran out: {seen:?}"
    );
}
