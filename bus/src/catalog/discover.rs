//! Catalog requests between processes: a running service answers on [`CATALOG_SUBJECT`], and a
//! tool ([`discover`], what `bus catalog` calls) gathers every answer.
//!
//! The registry lives in each user binary, so no tool can link it: it asks instead. The
//! responder is its own subscription, off the publish and delivery paths.

use std::fmt::Write as _;
use std::time::Duration;

use super::asyncapi::asyncapi_of;
use super::registry::{catalog, Descriptor};
use crate::error::{Error, Result};
use crate::handle::Bus;
use crate::headers::Headers;
use crate::raw::RawMessage;
use crate::stop::Running;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The subject catalog requests go to. Every responder answers (no queue group), each with
/// its own [`ServiceCatalog`] as JSON.
pub const CATALOG_SUBJECT: &str = "_bus.catalog";

/// What one service answers: who it is and the message types it was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceCatalog {
    /// The service's instance name ([`BusBuilder::instance`](crate::BusBuilder::instance);
    /// by default the host's name and the process id).
    pub instance: String,
    /// The `bus` version it runs.
    pub bus_version: String,
    /// Its message types.
    pub messages: Vec<Descriptor>,
}

/// A running catalog responder (from [`serve`]). Dropping it leaves it running for as long as
/// the bus lives; [`stop`](Responder::stop) ends it.
#[derive(Debug)]
pub struct Responder {
    running: Running,
}

impl Responder {
    /// Stops answering (unsubscribes) and waits for the task to end.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// [`stop`](Responder::stop), waiting at most `timeout`.
    pub async fn stop_timeout(self, timeout: Duration) -> Result<()> {
        self.running
            .stop_timeout("catalog responder", timeout)
            .await
    }

    /// Whether it is still answering.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }
}

/// Answers catalog requests on [`CATALOG_SUBJECT`] with this binary's [`catalog()`] and the
/// bus's instance name, as JSON, until stopped or the bus is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), bus::Error> {
/// let bus = bus::Bus::local().await?;
/// let responder = bus::catalog::serve(&bus).await?;
/// let found = bus::catalog::discover(&bus, std::time::Duration::from_millis(100)).await?;
/// assert_eq!(found.services.len(), 1);
/// responder.stop().await;
/// # Ok(()) }
/// ```
pub async fn serve(bus: &Bus) -> Result<Responder> {
    let broker = bus.broker();
    let mut sub = broker.subscribe(CATALOG_SUBJECT, None).await?;
    let answer = ServiceCatalog {
        instance: bus.health().await.instance,
        bus_version: env!("CARGO_PKG_VERSION").to_owned(),
        messages: catalog(),
    };
    let payload = bytes::Bytes::from(
        serde_json::to_vec(&answer)
            .map_err(|e| Error::Config(format!("cannot encode the catalog as JSON: {e}")))?,
    );
    let running = Running::spawn(move |mut stopped, _| async move {
        loop {
            let next = tokio::select! {
                _ = stopped.wait_for(|s| *s) => None,
                msg = sub.messages.next() => msg,
            };
            let Some(msg) = next else { break };
            let Some(reply) = msg.reply else { continue };
            let mut headers = Headers::with_capacity(1);
            headers.append(crate::headers::CONTENT_TYPE, "application/json");
            let raw = RawMessage::new(reply, payload.clone()).with_headers(headers);
            if let Err(e) = broker.publish(raw).await {
                tracing::debug!(error = %e, "catalog answer not sent");
            }
        }
    });
    Ok(Responder { running })
}

/// Every running service's catalog: the answers to one request on [`CATALOG_SUBJECT`]
/// gathered for `timeout` (none is an empty result, not an error). What `bus catalog` shows.
pub async fn discover(bus: &Bus, timeout: Duration) -> Result<Discovered> {
    let broker = bus.broker();
    let inbox = format!("_INBOX.bus-catalog.{}", crate::msg_id::new_msg_id());
    let mut sub = broker.subscribe(&inbox, None).await?;
    let mut ask = RawMessage::new(CATALOG_SUBJECT, bytes::Bytes::new());
    ask.reply = Some(inbox);
    broker.publish(ask).await?;
    let mut services = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.messages.next()).await {
        match serde_json::from_slice::<ServiceCatalog>(&msg.payload) {
            Ok(answer) => services.push(answer),
            Err(e) => tracing::warn!(error = %e, "catalog answer is not a catalog; ignored"),
        }
    }
    services.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(Discovered { services })
}

/// The catalogs [`discover`] gathered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Discovered {
    /// One entry per service that answered, sorted by instance name.
    pub services: Vec<ServiceCatalog>,
}

impl Discovered {
    /// Every message type any service reported, once each (same Rust path and template),
    /// sorted by template, each with the instances that reported it.
    pub fn messages(&self) -> Vec<(Descriptor, Vec<String>)> {
        let mut out: Vec<(Descriptor, Vec<String>)> = Vec::new();
        for s in &self.services {
            let who = &s.instance;
            for d in &s.messages {
                match out.iter_mut().find(|(seen, _)| seen == d) {
                    Some((_, instances)) => instances.push(who.clone()),
                    None => out.push((d.clone(), vec![who.clone()])),
                }
            }
        }
        out.sort_by(|(a, _), (b, _)| (&a.template, &a.rust_path).cmp(&(&b.template, &b.rust_path)));
        out
    }

    /// The AsyncAPI 3.0 document of every type reported (`bus catalog --asyncapi`).
    pub fn asyncapi(&self) -> serde_json::Value {
        let all: Vec<Descriptor> = self.messages().into_iter().map(|(d, _)| d).collect();
        asyncapi_of(&all, "bus catalog (discovered)")
    }

    /// The table `bus catalog` prints: see [`render_table`].
    pub fn table(&self) -> String {
        render_table(&self.messages())
    }
}

/// A text table, one row per type: `TYPE`, `SUBJECT`, `REPLY`, `SERVICES` (the instances that
/// reported it) and `FIELDS` (last, as it is the longest).
///
/// ```
/// let table = bus::catalog::render_table(&[]);
/// assert!(table.starts_with("TYPE"));
/// ```
pub fn render_table(rows: &[(Descriptor, Vec<String>)]) -> String {
    let header = ["TYPE", "SUBJECT", "REPLY", "SERVICES", "FIELDS"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|(d, who)| {
            let fields: Vec<_> = d
                .fields
                .iter()
                .map(|f| format!("{}: {}", f.name, f.ty))
                .collect();
            [
                d.type_name.clone(),
                d.template.clone(),
                d.reply.clone().unwrap_or_else(|| "-".to_owned()),
                who.join(", "),
                fields.join(", "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: [&str; 5]| {
        let mut l = String::new();
        // The last column padded too: the trim takes it off again.
        for (c, w) in row.iter().zip(widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}
