//! Message ids: unique without coordination, cheap to make.

/// A new unique message id: a NUID, 22 base-62 characters (as the NATS clients make them).
///
/// The first 12 characters are drawn from the OS's random source and renewed now and then; the
/// last 10 follow a sequence with a random start and a random step. Ids from different processes
/// (and from a restarted process) do not collide, and ids from one process are cheap.
pub fn new_msg_id() -> String {
    nuid::next().as_str().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_fixed_length() {
        let a = super::new_msg_id();
        let b = super::new_msg_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
