//! What a panic in user code becomes: the text of a failed attempt or an error reply.

use std::any::Any;

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub(crate) fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// How a handler's panic is reported, in a dead letter or an error reply.
pub(crate) fn describe(panic: &(dyn Any + Send)) -> String {
    format!("the handler panicked: {}", message(panic))
}

/// Locks `mutex` even if a panic poisoned it: the data is used as the panicking holder left it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
