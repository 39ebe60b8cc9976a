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
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        h.write_u32(std::process::id());
        hex16(h.finish())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // A table lookup into a fixed buffer: `format!("{:016x}")` cost more than the rest of a
    // local publish.
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(prefix);
    id[16..].copy_from_slice(&hex16(n));
    std::str::from_utf8(&id)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// `n` as 16 lower-case hex digits, most significant first.
#[inline]
fn hex16(n: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_fixed_length() {
        let a = super::new_msg_id();
        let b = super::new_msg_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn hex_matches_format() {
        for n in [
            0,
            1,
            0xf,
            0x10,
            0xdead_beef,
            u64::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            assert_eq!(super::hex16(n), format!("{n:016x}").as_bytes());
        }
    }
}
