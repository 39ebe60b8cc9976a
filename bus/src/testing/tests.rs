//! The harness's own tests (`cargo test -p bus --features testing testing::`).
