//! Compile-fail and compile-pass fixtures for `#[derive(Message)]`. Each `ui/fail/*.rs` sits beside
//! the `.stderr` it must produce; regenerate with
//! `TRYBUILD=overwrite cargo test -p bus-tests --test ui` and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
