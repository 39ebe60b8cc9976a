//! The probe of `diag_outbox_steps`: a `tracing` layer that stamps the outbox's own trace
//! points, so that a steady-rate run can split each message's publish -> delivery into steps.
//!
//! The points, in a message's order (each carries the first row id and the row count it
//! concerns, except the group start, which comes before the ids are known):
//! - `outbox_commit` (span, writer thread): a group commit starts;
//! - `outbox_committed` (event, writer thread): its rows are committed;
//! - `outbox_drain` (span, drainer): the drainer took a batch from the handoff;
//! - `outbox_sent` (event, drainer): the batch was handed to the broker.
//!
//! The layer is interested in these callsites only (every other one stays disabled, as with no
//! subscriber), and stamps only while [`start`]ed: the other scenarios of a run are unaffected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A point the outbox passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A group commit starts.
    GroupStart,
    /// Its rows are committed.
    Committed,
    /// The drainer took a batch.
    Taken,
    /// The drainer handed the batch to the broker.
    Sent,
}

/// One stamp: the point, the first row id and the row count (0 where the point has none),
/// and when.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Which point.
    pub point: Point,
    /// The first row id it concerns.
    pub first_id: i64,
    /// How many rows.
    pub n: i64,
    /// When.
    pub at: Instant,
}

impl Stamp {
    /// Whether the stamp concerns row `id`.
    pub fn covers(&self, id: i64) -> bool {
        self.first_id <= id && id < self.first_id + self.n.max(1)
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static STAMPS: Mutex<Vec<Stamp>> = Mutex::new(Vec::new());

fn point(meta: &Metadata<'_>) -> Option<Point> {
    if !meta.target().starts_with("bus::outbox") {
        return None;
    }
    match meta.name() {
        "outbox_commit" => Some(Point::GroupStart),
        "outbox_committed" => Some(Point::Committed),
        "outbox_drain" => Some(Point::Taken),
        "outbox_sent" => Some(Point::Sent),
        _ => None,
    }
}

/// The `first_id` and `n` fields of a point.
#[derive(Default)]
struct Fields {
    first_id: i64,
    n: i64,
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "first_id" => self.first_id = value,
            "n" => self.n = value,
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

fn stamp(point: Point, fields: Fields) {
    if ON.load(Ordering::Relaxed) {
        let at = Instant::now();
        STAMPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Stamp {
                point,
                first_id: fields.first_id,
                n: fields.n,
                at,
            });
    }
}

struct Probe;

impl<S: Subscriber> Layer<S> for Probe {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if point(meta).is_some() {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        point(meta).is_some()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if let Some(p) = point(attrs.metadata()) {
            let mut f = Fields::default();
            attrs.record(&mut f);
            stamp(p, f);
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if let Some(p) = point(event.metadata()) {
            let mut f = Fields::default();
            event.record(&mut f);
            stamp(p, f);
        }
    }
}

/// Installs the probe as the process's subscriber (once) and starts stamping afresh.
pub fn start() {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Probe)).is_ok()
    });
    if !installed {
        eprintln!("bus-bench: another tracing subscriber is installed; the probe sees nothing");
    }
    STAMPS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops stamping; the stamps taken since [`start`], in time order.
pub fn stop() -> Vec<Stamp> {
    ON.store(false, Ordering::Relaxed);
    let mut stamps = std::mem::take(&mut *STAMPS.lock().unwrap_or_else(PoisonError::into_inner));
    stamps.sort_by_key(|s| s.at);
    stamps
}
