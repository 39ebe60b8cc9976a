//! Stand-in for the bus side until the SDK branches are merged.
#![allow(missing_docs, clippy::unused_async)]
use std::path::Path;

use crate::runner::{fail, BenchResult, Sample};
use crate::server::Server;

fn missing<T>() -> BenchResult<T> {
    Err(fail("the SDK side is not merged yet"))
}
pub async fn pubsub_typed(_: &str, _: usize) -> BenchResult<f64> {
    missing()
}
pub async fn pubsub_durable(_: &str, _: usize, _: usize) -> BenchResult<f64> {
    missing()
}
pub async fn request(_: &str, _: usize) -> BenchResult<Sample> {
    missing()
}
pub async fn local_typed(_: usize, _: usize) -> BenchResult<f64> {
    missing()
}
pub async fn drain(_: &mut Server, _: usize, _: usize) -> BenchResult<f64> {
    missing()
}
pub async fn queue_while_down(
    _: &str,
    _: &Path,
    _: usize,
    _: usize,
    _: impl Fn() -> BenchResult<f64>,
) -> BenchResult<(f64, u64)> {
    missing()
}
