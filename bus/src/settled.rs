//! The one signal `bus::testing` waits on for quiescence: poked wherever a message settles
//! (a handler finished or dead-lettered it, a subscriber took it, a request got its answer).
//! Without the `testing` feature [`poke`] is an empty inline function.

/// Wakes every [`wait`](crate::testing::TestBus::wait_idle) in the process, which then checks
/// again whether anything is in flight (a wake for another test's bus is harmless).
#[inline(always)]
pub(crate) fn poke() {
    #[cfg(feature = "testing")]
    signal().notify_waiters();
}

/// What [`poke`] wakes.
#[cfg(feature = "testing")]
pub(crate) fn signal() -> &'static tokio::sync::Notify {
    static SIGNAL: std::sync::LazyLock<tokio::sync::Notify> =
        std::sync::LazyLock::new(tokio::sync::Notify::new);
    &SIGNAL
}
