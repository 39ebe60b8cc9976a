//! Quiet during outages, on a real nats-server killed and started again on
//! its port, every event captured by a `tracing` layer: one WARN when the connection is lost,
//! one INFO when it is back with the outage length and the outbox's depth, the reconnect
//! attempts at DEBUG, no ERROR.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::{Bus, ConnectionState};
use bus_tests::msgs::outbound;
use bus_tests::server::NatsServer;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const GUARD: Duration = Duration::from_secs(30);

/// One captured event: level, target, message and the other fields as `name=value`.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    target: String,
    message: String,
    fields: Vec<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        struct Fields(String, Vec<String>);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.1.push(format!("{}={value:?}", field.name()));
                }
            }
        }
        let mut fields = Fields(String::new(), Vec::new());
        event.record(&mut fields);
        let meta = event.metadata();
        self.0.lock().unwrap().push(Captured {
            level: *meta.level(),
            target: meta.target().to_owned(),
            message: fields.0,
            fields: fields.1,
        });
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
async fn an_outage_logs_one_warn_and_one_info_with_the_queue_depth() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    wait_for(&bus, |s| s == ConnectionState::Connected).await;
    let start = capture.0.lock().unwrap().len();

    server.kill();
    wait_for(&bus, |s| s != ConnectionState::Connected).await;
    for i in 0..3 {
        outbound("outage", &format!("i{i}"), "queued")
            .publish(&bus)
            .await
            .unwrap();
    }
    // Long enough for a dozen reconnect attempts (the delay grows to 100 ms) and a probe.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.start_again();
    wait_for(&bus, |s| s == ConnectionState::Connected).await;
    tokio::time::timeout(GUARD, bus.flush())
        .await
        .unwrap()
        .unwrap();
    // The reconnect INFO waits for the outbox's answer on its own task.
    let deadline = tokio::time::Instant::now() + GUARD;
    let ours = loop {
        let events: Vec<Captured> = capture.0.lock().unwrap()[start..].to_vec();
        let ours: Vec<Captured> = events
            .into_iter()
            .filter(|e| e.target.starts_with("bus"))
            .collect();
        if ours.iter().any(|e| e.level == Level::INFO) || tokio::time::Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all: Vec<Captured> = capture.0.lock().unwrap()[start..].to_vec();

    let at = |level: Level| -> Vec<&Captured> {
        all.iter()
            .filter(|e| e.level == level && e.target.starts_with("bus"))
            .collect()
    };
    let warns = at(Level::WARN);
    assert_eq!(warns.len(), 1, "one WARN for the outage: {warns:#?}");
    assert!(warns[0].message.contains("disconnected"), "{warns:#?}");
    let infos = at(Level::INFO);
    assert_eq!(infos.len(), 1, "one INFO when it is back: {infos:#?}");
    let info = infos[0];
    assert!(info.message.contains("reconnected after"), "{info:#?}");
    assert!(
        info.fields.iter().any(|f| f.starts_with("outage_ms=")),
        "{info:#?}"
    );
    assert!(info.fields.contains(&"queued=3".to_owned()), "{info:#?}");
    let errors: Vec<&Captured> = all.iter().filter(|e| e.level == Level::ERROR).collect();
    assert!(errors.is_empty(), "no ERROR in an outage: {errors:#?}");
    let attempts = at(Level::DEBUG)
        .into_iter()
        .filter(|e| e.message.contains("connection attempt failed"))
        .count();
    assert!(attempts >= 3, "reconnect attempts at DEBUG: {ours:#?}");
    // async-nats logs each of its events at INFO itself (bus docs, "Logging": `async_nats=warn`
    // hides them), never above.
    let loud: Vec<&Captured> = all
        .iter()
        .filter(|e| e.target.starts_with("async_nats") && e.level <= Level::WARN)
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}
