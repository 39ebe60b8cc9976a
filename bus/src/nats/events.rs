//! Connection events: the state watch, tracing, the server's max_payload, and slow-consumer
//! drops attributed to the subscription they hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::{Client, Event};
use tokio::sync::watch;

use super::options::DEFAULT_MAX_PAYLOAD;
use crate::broker::{ConnectionState, SubscriptionStats};

/// What the event callback and the broker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The server's advertised max_payload; [`DEFAULT_MAX_PAYLOAD`] until the first connect.
    pub(crate) max_payload: AtomicUsize,
    /// Live subscriptions by async-nats subscription id (sid), for `Event::SlowConsumer(sid)`.
    pub(crate) subscriptions: Mutex<HashMap<u64, Registered>>,
    /// Set right after `connect` returns; events that come earlier only skip the max_payload read.
    pub(crate) client: OnceLock<Client>,
}

/// A subscription as the event handler knows it.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) pattern: String,
    pub(crate) stats: Arc<SubscriptionStats>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: watch::Sender::new(ConnectionState::Disconnected),
            max_payload: AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
            subscriptions: Mutex::new(HashMap::new()),
            client: OnceLock::new(),
        })
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the server's max_payload if the client knows it (0 means "not yet").
    pub(crate) fn refresh_max_payload(&self) -> bool {
        let Some(client) = self.client.get() else {
            return false;
        };
        let max = client.server_info().max_payload;
        if max == 0 {
            return false;
        }
        let old = self.max_payload.swap(max, Ordering::Relaxed);
        if old != max {
            tracing::debug!(max_payload = max, "NATS server max_payload");
        }
        true
    }

    /// Handles one async-nats event. Runs on async-nats's event task, so it must stay quick:
    /// that task's channel holds 128 events and drops the rest.
    pub(crate) fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Connected => {
                tracing::info!("NATS connected");
                self.state.send_replace(ConnectionState::Connected);
                // async-nats emits `Connected` just before it stores the new server's INFO;
                // read it a moment later, off this task.
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    let before = shared.client.get().map(|c| c.server_info().server_id);
                    for _ in 0..200 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let now = shared.client.get().map(|c| c.server_info().server_id);
                        if now != before && shared.refresh_max_payload() {
                            return;
                        }
                    }
                    shared.refresh_max_payload();
                });
            }
            Event::Disconnected => {
                tracing::warn!("NATS disconnected; reconnecting (publishes wait in the outbox)");
                self.state.send_replace(ConnectionState::Disconnected);
            }
            Event::LameDuckMode => {
                tracing::warn!(
                    "NATS server entered lame duck mode; a reconnect to another server will follow"
                );
                self.state.send_replace(ConnectionState::LameDuck);
            }
            Event::SlowConsumer(sid) => {
                // async-nats sends one event per message its full subscription buffer refused.
                let subs = self.subscriptions();
                match subs.get(&sid) {
                    Some(reg) => {
                        reg.stats.add_dropped(1);
                        tracing::debug!(pattern = %reg.pattern, sid, "NATS slow consumer: message dropped");
                    }
                    None => tracing::warn!(sid, "NATS slow consumer on an unknown subscription"),
                }
            }
            Event::ServerError(e) => tracing::error!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::error!(error = %e, "NATS client error"),
        }
    }
}
