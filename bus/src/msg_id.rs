//! Message ids: unique without coordination, cheap to make.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A new unique message id: 16 hex digits of per-process randomness and 16 of a counter.
///
/// The random half is drawn once per process from the OS-seeded hasher and the clock, so ids from
/// different processes (and from a restarted process) do not collide; the counter makes ids from one
/// process unique and cheap.
pub fn new_msg_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_fixed_length() {
        let a = super::new_msg_id();
        let b = super::new_msg_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
