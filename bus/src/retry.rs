//! `RetryPolicy`: how often a failed delivery is tried again, and how long to wait in between.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How many times a message is attempted and how long to wait between attempts: one policy for
/// the outbox (a send or confirmation that fails while connected) and, later, for handlers.
///
/// After `max_attempts` failed attempts the message is dead-lettered. The wait after the n-th
/// failure is `base * multiplier^(n-1)`, at most `cap`, shortened by up to `jitter` of itself
/// at random so that many senders that failed together do not retry together. The defaults are
/// 3 attempts, 100 ms, ×4, a 30 s cap and 20 % jitter: about 100 ms, then 400 ms.
///
/// ```
/// use std::time::Duration;
/// use bus::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .base(Duration::from_millis(50))
///     .multiplier(2.0)
///     .cap(Duration::from_secs(2))
///     .jitter(0.0);
/// assert_eq!(policy.backoff(1), Duration::from_millis(50));
/// assert_eq!(policy.backoff(3), Duration::from_millis(200));
/// assert_eq!(policy.backoff(10), Duration::from_secs(2));
/// assert!(!policy.exhausted(4) && policy.exhausted(5));
///
/// # async fn run() -> Result<(), bus::Error> {
/// let bus = bus::Bus::builder()
///     .nats(["nats://127.0.0.1:4222"])
///     .outbox_retry(RetryPolicy::default().max_attempts(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts made before the message is dead-lettered (default 3; at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt (default 100 ms).
    pub base: Duration,
    /// The longest wait between two attempts (default 30 s).
    pub cap: Duration,
    /// Each further failure multiplies the wait by this (default 4; at least 1).
    pub multiplier: f64,
    /// The fraction of each wait, from 0 to 1, that is taken off at random (default 0.2: a wait
    /// of 100 ms becomes 80 to 100 ms). 0 makes the waits exact.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            multiplier: 4.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    setters! {
        /// Sets the attempts made before the message is dead-lettered (0 counts as 1).
        fn max_attempts(n: u32) => max_attempts = n;
        /// Sets the wait after the first failed attempt.
        fn base(base: Duration) => base = base;
        /// Sets the longest wait between two attempts.
        fn cap(cap: Duration) => cap = cap;
        /// Sets the factor by which each further failure multiplies the wait (below 1 counts as 1).
        fn multiplier(multiplier: f64) => multiplier = multiplier;
        /// Sets the fraction of each wait taken off at random (clamped to 0..=1).
        fn jitter(jitter: f64) => jitter = jitter;
    }

    /// Whether a message that failed `attempts` times is out of attempts (to be dead-lettered).
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts.max(1)
    }

    /// The wait after the `attempt`-th failed attempt (1 is the first failure; 0 waits nothing):
    /// `base * multiplier^(attempt-1)`, at most `cap`, minus a random part of up to `jitter`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 || nominal.is_zero() {
            return nominal;
        }
        nominal.mul_f64(1.0 - jitter * unit_random())
    }

    /// The wait before jitter.
    fn nominal(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let cap = self.cap.as_secs_f64();
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        // Exponent capped so that the float stays finite; the cap bounds the result anyway.
        let exp = (attempt - 1).min(1024) as i32;
        let secs = self.base.as_secs_f64() * multiplier.powi(exp);
        if secs.is_finite() && secs < cap {
            Duration::from_secs_f64(secs)
        } else {
            self.cap
        }
    }
}

thread_local! {
    /// xorshift64 state; seeded per thread from the standard library's random hasher keys.
    static RNG: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
    );
}

/// A uniform float in [0, 1). Not cryptographic: jitter only needs senders to spread out.
fn unit_random() -> f64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_three_attempts_100_then_400_ms() {
        let p = RetryPolicy::default().jitter(0.0);
        assert_eq!(p.max_attempts, 3);
        assert!(!p.exhausted(2) && p.exhausted(3));
        assert_eq!(p.backoff(0), Duration::ZERO);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(3), Duration::from_millis(1600));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_and_spreads() {
        let p = RetryPolicy::default().jitter(0.5);
        let waits: Vec<Duration> = (0..200).map(|_| p.backoff(2)).collect();
        for w in &waits {
            assert!(
                *w >= Duration::from_millis(200) && *w <= Duration::from_millis(400),
                "{w:?}"
            );
        }
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
        // Capped waits stay at or under the cap.
        let capped = RetryPolicy::default().cap(Duration::from_millis(150));
        assert!((0..50).all(|_| capped.backoff(9) <= Duration::from_millis(150)));
    }

    #[test]
    fn out_of_range_settings_are_clamped_at_use() {
        let p = RetryPolicy::default()
            .max_attempts(0)
            .multiplier(0.5)
            .jitter(7.0);
        assert!(p.exhausted(1), "0 attempts counts as 1");
        // multiplier below 1 counts as 1: the wait never shrinks; jitter 7 counts as 1.
        assert!(p.backoff(5) <= Duration::from_millis(100));
        let p = RetryPolicy::default().multiplier(f64::NAN).jitter(f64::NAN);
        assert_eq!(p.backoff(4), Duration::from_millis(100));
        let huge = RetryPolicy::default().multiplier(f64::MAX).jitter(0.0);
        assert_eq!(huge.backoff(3), Duration::from_secs(30));
    }
}
