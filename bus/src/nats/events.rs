//! Connection events: the state watch, tracing, the server's max_payload, and slow-consumer
//! drops attributed to the subscription they hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Client, Event};
use tokio::sync::{mpsc, oneshot, watch};

use super::options::DEFAULT_MAX_PAYLOAD;
use crate::broker::{ConnectionState, SubscriptionStats};

/// What the event callback and the broker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The server's advertised max_payload; [`DEFAULT_MAX_PAYLOAD`] until the first connect.
    pub(crate) max_payload: AtomicUsize,
    /// How many times the connection was lost; `confirm` compares it across confirmations.
    pub(crate) disconnects: AtomicU64,
    /// Live subscriptions by async-nats subscription id (sid), for `Event::SlowConsumer(sid)`
    /// and for `confirm`'s pump barrier.
    pub(crate) subscriptions: Mutex<HashMap<u64, Registered>>,
    /// Set right after `connect` returns (events that come earlier only skip the max_payload
    /// read) and cleared when the broker is dropped: the event callback holds this `Shared`, so
    /// a client kept here for good would keep the connection open forever.
    pub(crate) client: Mutex<Option<Client>>,
    /// Permissions violations the server reported and nobody has taken yet.
    pub(crate) violations: Mutex<Violations>,
}

/// The server's `-ERR 'Permissions Violation for …'`s, by what was refused.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    /// Subjects a publish to was refused, with the server's text, oldest first.
    pub(crate) publish: Vec<(String, String)>,
    /// Patterns a subscription to was refused, with the server's text.
    pub(crate) subscribe: Vec<(String, String)>,
}

/// What a permissions violation refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Publish,
    Subscription,
}

/// Reads `Permissions Violation for Publish to "a.b"` (2.9) or `… to "a.b" using queue "q"`
/// (newer servers): what was refused and its subject.
pub(crate) fn parse_violation(text: &str) -> Option<(Refused, String)> {
    let rest = text.trim_matches(|c| c == '\'' || c == ' ');
    let rest = rest.strip_prefix("Permissions Violation for ")?;
    let (kind, rest) = if let Some(r) = rest.strip_prefix("Publish to ") {
        (Refused::Publish, r)
    } else if let Some(r) = rest.strip_prefix("Subscription to ") {
        (Refused::Subscription, r)
    } else {
        return None;
    };
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some((kind, rest[..end].to_owned()))
}

/// A subscription as the event handler knows it.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) pattern: String,
    pub(crate) stats: Arc<SubscriptionStats>,
    /// Asks the subscription's pump to move everything async-nats holds, then answer.
    pub(crate) sync: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: watch::Sender::new(ConnectionState::Disconnected),
            max_payload: AtomicUsize::new(DEFAULT_MAX_PAYLOAD),
            disconnects: AtomicU64::new(0),
            subscriptions: Mutex::new(HashMap::new()),
            client: Mutex::new(None),
            violations: Mutex::new(Violations::default()),
        })
    }

    pub(crate) fn violations(&self) -> std::sync::MutexGuard<'_, Violations> {
        self.violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a permissions violation. A refused subscription that is live (the server ended
    /// it after a reconnect, say) is marked failed, so its subscriber sees why.
    fn on_violation(&self, kind: Refused, subject: String, text: String) {
        match kind {
            Refused::Publish => {
                tracing::error!(subject, error = %text, "NATS refused a publish: permissions violation");
                let mut v = self.violations();
                // Bounded: a flood of refused publishes with nobody confirming keeps the latest.
                if v.publish.len() >= 1024 {
                    v.publish.remove(0);
                }
                v.publish.push((subject, text));
            }
            Refused::Subscription => {
                tracing::error!(pattern = subject, error = %text, "NATS refused a subscription: permissions violation");
                for reg in self.subscriptions().values() {
                    if reg.pattern == subject {
                        reg.stats.fail(text.clone());
                    }
                }
                let mut v = self.violations();
                if v.subscribe.len() >= 1024 {
                    v.subscribe.remove(0);
                }
                v.subscribe.push((subject, text));
            }
        }
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the server's max_payload if the client knows it (0 means "not yet").
    pub(crate) fn refresh_max_payload(&self) -> bool {
        let Some(max) = self.server_info(|i| i.max_payload) else {
            return false;
        };
        if max == 0 {
            return false;
        }
        let old = self.max_payload.swap(max, Ordering::Relaxed);
        if old != max {
            tracing::debug!(max_payload = max, "NATS server max_payload");
        }
        true
    }

    /// Reads the client's copy of the server's INFO, if there is a client.
    fn server_info<T>(&self, f: impl FnOnce(&async_nats::ServerInfo) -> T) -> Option<T> {
        let guard = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|c| f(&c.server_info()))
    }

    /// Handles one async-nats event. Runs on async-nats's event task, so it must stay quick:
    /// that task's channel holds 128 events and drops the rest.
    pub(crate) fn on_event(self: &Arc<Self>, event: Event) {
        match event {
            Event::Connected => {
                // async-nats emits `Connected` just before it stores the new server's INFO. Report
                // the state only once that INFO (and so the server's max_payload) is known:
                // whoever waits for `Connected` (the outbox drainer) must not send with the
                // previous server's limit, or an oversize message would make this server close
                // the connection instead of being refused by the SDK.
                let shared = Arc::clone(self);
                let generation = self.disconnects.load(Ordering::Relaxed);
                tokio::spawn(async move {
                    let before = shared.server_info(|i| i.server_id.clone());
                    for _ in 0..200 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let now = shared.server_info(|i| i.server_id.clone());
                        if now != before && shared.refresh_max_payload() {
                            break;
                        }
                    }
                    // Same server id after 200 ms: a reconnect to the same server process, whose
                    // INFO did not change.
                    shared.refresh_max_payload();
                    if shared.disconnects.load(Ordering::Relaxed) == generation {
                        tracing::info!("NATS connected");
                        shared.state.send_replace(ConnectionState::Connected);
                    }
                });
            }
            Event::Disconnected => {
                tracing::warn!("NATS disconnected; reconnecting (publishes wait in the outbox)");
                self.disconnects.fetch_add(1, Ordering::Relaxed);
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
            Event::ServerError(async_nats::ServerError::Other(text)) => {
                match parse_violation(&text) {
                    Some((kind, subject)) => self.on_violation(kind, subject, text),
                    None => tracing::error!(error = %text, "NATS server error"),
                }
            }
            Event::ServerError(e) => tracing::error!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::error!(error = %e, "NATS client error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_violation_texts() {
        assert_eq!(
            parse_violation("Permissions Violation for Publish to \"plugin.outbound.denied.x\""),
            Some((Refused::Publish, "plugin.outbound.denied.x".into()))
        );
        assert_eq!(
            parse_violation(
                "'Permissions Violation for Subscription to \"a.>\" using queue \"q\"'"
            ),
            Some((Refused::Subscription, "a.>".into()))
        );
        assert_eq!(parse_violation("Maximum Payload Violation"), None);
    }
}
