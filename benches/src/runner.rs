//! The round runner: baseline and bus rounds interleaved, medians of the rounds.
//!
//! Interleaving (baseline, bus, baseline, bus…) spreads slow drifts of a shared 2-core machine
//! (other processes, CPU frequency, page cache) over both sides instead of charging them to
//! whichever side happened to run second.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;

/// The error type of the bench: any error, with a message that says which step failed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Result of a bench step.
pub type BenchResult<T> = Result<T, BoxError>;

/// How long any wait for messages may take before the round counts as lost messages.
pub const WAIT: Duration = Duration::from_secs(120);

/// Extra subscription capacity over the messages of a round, for probes.
pub const SLACK: usize = 1024;

/// Turns a message into a [`BoxError`].
pub fn fail(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

/// One measured round: the headline value and, for latency scenarios, the p99 and the max
/// beside the p50.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The headline value (msg/s, µs, MiB).
    pub value: f64,
    /// The p99, for latency scenarios.
    pub p99: Option<f64>,
    /// The largest sample, for latency scenarios.
    pub max: Option<f64>,
}

impl Sample {
    /// A sample with only a headline value.
    pub fn value(value: f64) -> Self {
        Sample {
            value,
            p99: None,
            max: None,
        }
    }

    /// p50, p99 and max of latencies (sorted here).
    pub fn latencies(mut lat: Vec<Duration>) -> Self {
        lat.sort_unstable();
        Sample {
            value: quantile_us(&lat, 0.5),
            p99: Some(quantile_us(&lat, 0.99)),
            max: Some(quantile_us(&lat, 1.0)),
        }
    }
}

/// What a scenario measures, per side: one round of work, timed inside (setup is not timed).
pub trait Rounds {
    /// One baseline round of `n` units of work.
    fn baseline(&mut self, n: usize) -> impl Future<Output = BenchResult<Sample>> + Send;
    /// One bus round of `n` units of work.
    fn bus(&mut self, n: usize) -> impl Future<Output = BenchResult<Sample>> + Send;
    /// One round of the scenario's previous baseline, kept beside a tightened one so the report
    /// shows old and new ratios from the same run; `None` (the default) when there is none.
    fn old_baseline(
        &mut self,
        _n: usize,
    ) -> impl Future<Output = Option<BenchResult<Sample>>> + Send {
        async { None }
    }
}

/// Which sides to run: both normally; one alone to profile it (`--side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    /// Baseline and bus, interleaved.
    Both,
    /// Only the baseline.
    Baseline,
    /// Only the bus.
    Bus,
}

/// The medians of the interleaved rounds of each side, or why a side could not be measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Median of the baseline rounds.
    pub baseline: Result<Sample, String>,
    /// Median of the bus rounds.
    pub bus: Result<Sample, String>,
    /// Median of the previous baseline's rounds, for scenarios that kept one.
    pub old_baseline: Option<Result<Sample, String>>,
}

/// Runs one discarded warm-up round per side (`warmup_n` units, 0 = none), then `rounds` rounds
/// of `n` units, alternating baseline and bus (and the old baseline after them, where the
/// scenario has one), and returns the medians. A side that fails stops
/// (its error is kept) while the other goes on, so a broken SDK still shows its baseline.
pub async fn interleave<R: Rounds>(
    name: &str,
    sides: Sides,
    rounds: usize,
    n: usize,
    warmup_n: usize,
    r: &mut R,
) -> Outcome {
    let skipped = |on: bool| {
        if on {
            Ok(Vec::with_capacity(rounds))
        } else {
            Err("skipped (--side)".to_string())
        }
    };
    let mut base: Result<Vec<Sample>, String> = skipped(sides != Sides::Bus);
    let mut bus: Result<Vec<Sample>, String> = skipped(sides != Sides::Baseline);
    // `None` until the scenario says whether it has an old baseline (its first answer).
    let mut old: Option<Result<Vec<Sample>, String>> = None;
    let mut has_old = sides == Sides::Both;
    let plan = (warmup_n > 0)
        .then_some(("warm-up".to_string(), warmup_n, false))
        .into_iter()
        .chain((0..rounds).map(|i| (format!("round {}/{rounds}", i + 1), n, true)));
    for (what, units, keep) in plan {
        let b = run_side(&mut base, r.baseline(units), keep).await;
        let s = run_side(&mut bus, r.bus(units), keep).await;
        let mut o = None;
        if has_old {
            let acc = old.get_or_insert_with(|| Ok(Vec::with_capacity(rounds)));
            match run_old_side(acc, r.old_baseline(units), keep).await {
                Some(v) => o = v,
                // The scenario has no old baseline: stop asking.
                None => {
                    has_old = false;
                    old = None;
                }
            }
        }
        progress(name, &what, b, s, o);
        if base.is_err() && bus.is_err() {
            break;
        }
    }
    Outcome {
        baseline: base.map(|v| median_sample(&v)),
        bus: bus.map(|v| median_sample(&v)),
        old_baseline: old.map(|r| r.map(|v| median_sample(&v))),
    }
}

async fn run_side(
    acc: &mut Result<Vec<Sample>, String>,
    round: impl Future<Output = BenchResult<Sample>>,
    keep: bool,
) -> Option<f64> {
    let Ok(samples) = acc else { return None };
    // A panic in the SDK (or the bench) fails this side only, not the whole run.
    let outcome = AssertUnwindSafe(round)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(fail(format!("panicked: {}", panic_text(&p)))));
    match outcome {
        Ok(s) => {
            if keep {
                samples.push(s);
            }
            Some(s.value)
        }
        Err(e) => {
            *acc = Err(e.to_string());
            None
        }
    }
}

/// As [`run_side`] for the old baseline: `None` when the scenario has none.
async fn run_old_side(
    acc: &mut Result<Vec<Sample>, String>,
    round: impl Future<Output = Option<BenchResult<Sample>>>,
    keep: bool,
) -> Option<Option<f64>> {
    let outcome = AssertUnwindSafe(round)
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Some(Err(fail(format!("panicked: {}", panic_text(&p))))))?;
    Some(run_side(acc, async { outcome }, keep).await)
}

/// The message of a panic payload.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

fn progress(name: &str, what: &str, b: Option<f64>, s: Option<f64>, o: Option<f64>) {
    let show = |x: Option<f64>| x.map_or("failed".to_string(), |v| format!("{v:.1}"));
    let old = o.map_or(String::new(), |v| format!("  old baseline {v:>12.1}"));
    // Progress goes to stderr so stdout stays the machine-readable report.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "  {name:<20} {what:<12} baseline {:>12}  bus {:>12}{old}",
            show(b),
            show(s)
        );
    }
}

fn median_sample(samples: &[Sample]) -> Sample {
    let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
    let p99s: Vec<f64> = samples.iter().filter_map(|s| s.p99).collect();
    // The max of a side is the worst of all its rounds, not a median.
    let max = samples.iter().filter_map(|s| s.max).reduce(f64::max);
    Sample {
        value: median(&values),
        p99: (!p99s.is_empty()).then(|| median(&p99s)),
        max,
    }
}

/// The median (mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The `q` quantile (0..=1) of latencies, nearest rank, in microseconds.
pub fn quantile_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

/// Messages per second for `n` messages between `start` and `end`.
pub fn rate(n: usize, start: Instant, end: Instant) -> f64 {
    n as f64 / end.duration_since(start).as_secs_f64()
}

/// Awaits `fut` for at most `limit`, failing with a message naming `what` on timeout, so a
/// lost message shows up as an error instead of a hung bench.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> BenchResult<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| fail(format!("timed out after {limit:?} waiting for {what}")))
}

/// Requests made before timing starts, so connection setup and first-use costs stay out.
pub const REQUEST_WARMUP: usize = 200;

/// Makes requests with `send` (given the attempt's index, answering whether it succeeded) until
/// [`REQUEST_WARMUP`] succeeded, pausing after a failure, at most 1000 attempts.
pub async fn warm_up<F, Fut>(mut send: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut ok = 0;
    for i in 0..1000 {
        if send(i).await {
            ok += 1;
            if ok == REQUEST_WARMUP {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile_us(&v, 0.5), 50.0);
        assert_eq!(quantile_us(&v, 0.99), 99.0);
        assert_eq!(quantile_us(&v, 1.0), 100.0);
    }
}
