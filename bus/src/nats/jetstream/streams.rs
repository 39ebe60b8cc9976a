//! The declared streams: created, or updated to their configuration, whenever the connection
//! comes up; an existing one looked up.

use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use super::{JetStream, Route, Setup};
use crate::connection::ConnectionState;
use crate::error::{Error, Result};
use crate::stream::{DiscardPolicy, StorageType, StreamConfig};

/// The longest wait between two attempts to set up the declared streams.
const SETUP_RETRY_CAP: Duration = Duration::from_secs(5);

impl JetStream {
    /// Creates or updates every declared stream (reads an `existing` one), then records their
    /// subjects. The first failure is returned; the others are still tried.
    async fn ensure_all(&self) -> std::result::Result<(), String> {
        let mut routes = Vec::with_capacity(self.declared.len());
        let mut failure = None;
        for cfg in &self.declared {
            match self.ensure(cfg).await {
                Ok(subjects) => routes.push(Route {
                    stream: Arc::from(cfg.name()),
                    subjects,
                }),
                Err(e) => {
                    tracing::warn!(stream = cfg.name(), error = %e, "cannot set up the JetStream stream; will retry");
                    // Keep what is known, so that publishes still go to the stream.
                    if !cfg.is_existing() {
                        routes.push(Route {
                            stream: Arc::from(cfg.name()),
                            subjects: cfg.subjects().to_vec(),
                        });
                    }
                    failure.get_or_insert(format!("stream {:?}: {e}", cfg.name()));
                }
            }
        }
        // Keep subjects of `existing` streams learnt on an earlier connection.
        {
            let mut known = self.routes.write().unwrap_or_else(PoisonError::into_inner);
            for old in known.drain(..) {
                if !routes.iter().any(|r| r.stream == old.stream) {
                    routes.push(old);
                }
            }
            *known = routes;
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }

    /// One stream: its subjects once it exists as declared.
    async fn ensure(&self, cfg: &StreamConfig) -> std::result::Result<Vec<String>, String> {
        if cfg.is_existing() {
            let mut s = self
                .context
                .get_stream(cfg.name())
                .await
                .map_err(|e| format!("cannot find the existing stream: {e}"))?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            return Ok(info.config.subjects.clone());
        }
        let config = to_nats_config(cfg);
        match self.context.create_stream(config.clone()).await {
            Ok(_) => {
                tracing::debug!(
                    stream = cfg.name(),
                    "JetStream stream created (or found as declared)"
                );
                Ok(cfg.subjects().to_vec())
            }
            Err(e) if is_name_in_use(&e) => {
                self.context
                    .update_stream(&config)
                    .await
                    .map_err(|e| format!("cannot update it to the declared configuration: {e}"))?;
                tracing::debug!(stream = cfg.name(), "JetStream stream updated");
                Ok(cfg.subjects().to_vec())
            }
            Err(e) => Err(format!("cannot create it: {e}")),
        }
    }

    /// Waits until the streams are set up on this connection; after `timeout`, the reason of
    /// the last failed attempt.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.setup.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| *s == Setup::Ready)).await;
        if matches!(waited, Ok(Ok(_))) {
            return Ok(());
        }
        let reason = match &*self.setup.borrow() {
            Setup::Failed(reason) => reason.clone(),
            _ => format!(
                "not set up within {timeout:?}: is the server reachable, with JetStream enabled?"
            ),
        };
        Err(Error::Stream { reason })
    }
}

/// Sets the declared streams up whenever the connection comes up, retrying while it stays up;
/// ends once the broker is gone.
///
/// Every change of the connection state counts, a disconnect too short to be seen as such
/// included (the watch then shows `Connected` again, but it did change): the new connection
/// may be to a server that lost a memory stream, so until the streams are set up on it again,
/// publishes that may go to one wait.
pub(crate) async fn keep_streams(js: Weak<JetStream>, mut state: watch::Receiver<ConnectionState>) {
    loop {
        let now = *state.borrow_and_update();
        match now {
            ConnectionState::Closed => return,
            // In lame duck mode the server still serves until it closes the connection.
            ConnectionState::Connected | ConnectionState::LameDuck => {
                let mut wait = Duration::from_millis(100);
                let changed = loop {
                    let Some(strong) = js.upgrade() else { return };
                    let ready = match strong.ensure_all().await {
                        Ok(()) => Setup::Ready,
                        Err(reason) => Setup::Failed(reason),
                    };
                    let done = ready == Setup::Ready;
                    // Set up on a connection that changed meanwhile proves nothing for the new
                    // one: look again.
                    if state.has_changed().unwrap_or(true) {
                        break true;
                    }
                    strong.setup.send_replace(ready);
                    drop(strong);
                    if done {
                        break false;
                    }
                    if tokio::time::timeout(wait, state.changed()).await.is_ok() {
                        break true;
                    }
                    wait = (wait * 2).min(SETUP_RETRY_CAP);
                };
                if changed {
                    mark_pending(&js);
                    continue;
                }
            }
            ConnectionState::Disconnected | ConnectionState::Refused(_) => mark_pending(&js),
        }
        if state.changed().await.is_err() {
            return;
        }
        mark_pending(&js);
    }
}

/// Until the streams are set up on the next connection, publishes that may go to one wait.
fn mark_pending(js: &Weak<JetStream>) {
    if let Some(strong) = js.upgrade() {
        if *strong.setup.borrow() == Setup::Ready {
            strong.setup.send_replace(Setup::Pending);
        }
    }
}

fn is_name_in_use(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
    )
}

/// Our configuration as async-nats's. Fields left at their defaults are not sent (async-nats
/// skips them), so that servers of the 2.9 line, which do not know 2.10's fields, accept it.
fn to_nats_config(cfg: &StreamConfig) -> stream::Config {
    let limit = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    stream::Config {
        name: cfg.name().to_owned(),
        subjects: cfg.subjects().to_vec(),
        max_age: cfg.max_age_value().unwrap_or_default(),
        max_messages: limit(cfg.max_messages_value()),
        max_bytes: limit(cfg.max_bytes_value()),
        max_messages_per_subject: -1,
        max_consumers: -1,
        discard: match cfg.discard_value() {
            DiscardPolicy::Old => stream::DiscardPolicy::Old,
            DiscardPolicy::New => stream::DiscardPolicy::New,
        },
        storage: match cfg.storage_value() {
            StorageType::File => stream::StorageType::File,
            StorageType::Memory => stream::StorageType::Memory,
        },
        num_replicas: cfg.replicas_value(),
        duplicate_window: cfg.duplicate_window_value().unwrap_or_default(),
        ..Default::default()
    }
}
