//! The wall clock as the crate records it: Unix milliseconds (the outbox's `created_at` and
//! due times, the inbox's completions and claims, the health beat).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

/// `at` in milliseconds since the Unix epoch (0 before it, rounded up to the next
/// millisecond: a message due at `at` is never released before it).
#[cfg(feature = "outbox")]
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64
    })
}
