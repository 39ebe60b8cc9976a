//! `--scaling`: how cost grows with the number of subscriptions, the outbox backlog and the
//! number of concurrent requesters, printed as one table (and one JSON object per row on stdout).
//!
//! Rows:
//! - local publish throughput with 1, 1 k, 10 k and 100 k subscriptions (one matches, the others
//!   are on other channels), and what subscribing and unsubscribing them cost per subscription;
//! - unsubscribe cost with 1 k, 10 k and 100 k subscriptions sharing one pattern;
//! - idle local subscription memory (RSS growth of a child process per subscription);
//! - outbox drain rate and peak RSS with 100 k, 1 M and 5 M queued (a child process each, so
//!   the peak is the backlog's own);
//! - request p50 and p99 with 1, 10 and 100 concurrent requesters, bus and raw interleaved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, ConnectionState};
use serde_json::Value;

use crate::msgs::{self, Outbound, CHANNEL, INSTANCE};
use crate::report::Line;
use crate::runner::{fail, median, quantile_us, within, BenchResult, SLACK, WAIT};
use crate::scenarios::nats::{concurrent, RawRequestShape, RawRequester};
use crate::scenarios::rss::{child_json, proc_status_mib};
use crate::sdk::{self, BusRequester};
use crate::server::{free_port, Server, ServerSpec};

/// The hidden subcommand of the idle-subscription memory child.
pub const IDLE_CHILD: &str = "__idle-subs-child";
/// The hidden subcommand of the drain child.
pub const DRAIN_CHILD: &str = "__drain-child";

/// Subscription counts of the local publish rows.
const SUBSCRIPTIONS: [usize; 4] = [1, 1_000, 10_000, 100_000];
/// Subscriptions sharing one pattern, for the unsubscribe rows.
const SHARED: [usize; 3] = [1_000, 10_000, 100_000];
/// Idle subscriptions whose memory is measured.
const IDLE: usize = 100_000;
/// Backlogs of the drain rows; 5 M takes about a minute here and 1.3 GB of disk.
const BACKLOGS: [usize; 3] = [100_000, 1_000_000, 5_000_000];
/// Concurrent requesters of the request rows.
const REQUESTERS: [usize; 3] = [1, 10, 100];
/// Requests per level (split among the requesters).
const REQUESTS: usize = 4_000;
/// Messages per local publish round.
const LOCAL_N: usize = 200_000;

/// One row of the growth table.
struct Row {
    what: &'static str,
    size: usize,
    values: Vec<(&'static str, f64, &'static str)>,
}

impl Row {
    fn json(&self) -> String {
        let mut v = serde_json::Map::new();
        v.insert("scaling".into(), self.what.into());
        v.insert("size".into(), self.size.into());
        for (k, x, _) in &self.values {
            v.insert((*k).into(), serde_json::json!((x * 100.0).round() / 100.0));
        }
        Value::Object(v).to_string()
    }
}

/// The groups of rows, for `--scaling --only GROUP[,GROUP…]`.
pub const GROUPS: [&str; 5] = ["local", "unsubscribe", "idle", "drain", "request"];

/// Runs every row of the selected groups (all when `only` is empty), `rounds` rounds where a row
/// is timed (median), prints the table.
pub async fn run(spec: &ServerSpec, rounds: usize, only: &[String]) -> BenchResult<Vec<Line>> {
    let rounds = rounds.max(1);
    let on = |g: &str| only.is_empty() || only.iter().any(|o| o == g);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut emit = |row: Row| {
        #[allow(clippy::print_stdout)]
        {
            println!("{}", row.json());
        }
        rows.push(row);
    };
    if on("local") {
        for subs in SUBSCRIPTIONS {
            emit(local_publish(subs, rounds).await?);
        }
    }
    if on("unsubscribe") {
        for subs in SHARED {
            emit(shared_unsubscribe(subs).await?);
        }
    }
    if on("idle") {
        emit(idle_memory(IDLE).await?);
    }
    if on("drain") {
        for n in BACKLOGS {
            emit(drain_backlog(spec, n).await?);
        }
    }
    if on("request") {
        let server = Server::start(spec).await?;
        eprintln!("bus-bench: {}", server.describe());
        for k in REQUESTERS {
            emit(requests(&server.client_url(), k, rounds).await?);
        }
    }
    eprintln!(
        "bus-bench: scaling done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    #[allow(clippy::print_stdout)]
    {
        println!();
        print!("{}", table(&rows));
    }
    Ok(Vec::new())
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let head = format!("{:<28} {:>9}  {}", "scaling", "size", "figures");
    out.push_str(&head);
    out.push('\n');
    out.push_str(&"-".repeat(96));
    out.push('\n');
    for r in rows {
        let figures: Vec<String> = r
            .values
            .iter()
            .map(|(k, v, unit)| {
                if *v >= 1000.0 {
                    format!("{k} {v:.0} {unit}")
                } else {
                    format!("{k} {v:.2} {unit}")
                }
            })
            .collect();
        out.push_str(&format!(
            "{:<28} {:>9}  {}\n",
            r.what,
            r.size,
            figures.join(", ")
        ));
    }
    out
}

/// Local publish throughput with `subs` subscriptions (one on the measured channel, the rest on
/// `plugin.outbound.c<i>.*`), and the cost of subscribing and unsubscribing them.
async fn local_publish(subs: usize, rounds: usize) -> BenchResult<Row> {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(LOCAL_N + SLACK)
        .connect()
        .await?;
    let t = Instant::now();
    let mut others = Vec::with_capacity(subs - 1);
    for i in 0..subs - 1 {
        others.push(Outbound::subscribe(&bus, Outbound::filter().channel(format!("c{i}"))).await?);
    }
    let subscribe_us = per(t.elapsed(), subs - 1);
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        rates.push(sdk::local_round(&bus, LOCAL_N).await?);
    }
    let t = Instant::now();
    drop(others);
    let unsubscribe_us = per(t.elapsed(), subs - 1);
    let row = Row {
        what: "local publish",
        size: subs,
        values: vec![
            ("msg/s", median(&rates), ""),
            ("subscribe", subscribe_us, "us/sub"),
            ("unsubscribe", unsubscribe_us, "us/sub"),
        ],
    };
    eprintln!("  {}", row.json());
    Ok(row)
}

/// `subs` subscriptions on one pattern, then all dropped: what one unsubscribe costs.
async fn shared_unsubscribe(subs: usize) -> BenchResult<Row> {
    let bus = Bus::local().await?;
    let t = Instant::now();
    let mut all = Vec::with_capacity(subs);
    for _ in 0..subs {
        all.push(Outbound::subscribe(&bus, Outbound::filter().channel(CHANNEL)).await?);
    }
    let subscribe_us = per(t.elapsed(), subs);
    let t = Instant::now();
    drop(all);
    let unsubscribe_us = per(t.elapsed(), subs);
    let row = Row {
        what: "local unsubscribe, 1 pattern",
        size: subs,
        values: vec![
            ("subscribe", subscribe_us, "us/sub"),
            ("unsubscribe", unsubscribe_us, "us/sub"),
        ],
    };
    eprintln!("  {}", row.json());
    Ok(row)
}

fn per(d: Duration, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    d.as_secs_f64() * 1e6 / n as f64
}

/// Bytes of RSS per idle local subscription, measured in a child process.
async fn idle_memory(subs: usize) -> BenchResult<Row> {
    let v =
        tokio::task::spawn_blocking(move || child_json(&[IDLE_CHILD, &subs.to_string()])).await??;
    let get = |k: &str| v[k].as_f64().ok_or_else(|| fail(format!("no {k} in {v}")));
    let row = Row {
        what: "local idle subscription",
        size: subs,
        values: vec![
            ("rss", get("bytes_per_sub")?, "B/sub"),
            ("total", get("grown_mib")?, "MiB"),
        ],
    };
    eprintln!("  {}", row.json());
    Ok(row)
}

/// The idle-subscription child: a local bus, `VmRSS`, `n` typed subscriptions that never see a
/// message, `VmRSS` again.
pub fn idle_child(args: &[String]) -> BenchResult<()> {
    let [n] = args else {
        return Err(fail(format!("usage: {IDLE_CHILD} <subscriptions>")));
    };
    let n: usize = n.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (before, after, subs) = rt.block_on(async {
        let bus = Bus::local().await?;
        // One subscription first, so one-off allocations are not charged to the others.
        let first = Outbound::subscribe(&bus, Outbound::filter().channel("c")).await?;
        let before = proc_status_mib("VmRSS")?;
        let mut subs = Vec::with_capacity(n);
        for i in 0..n {
            subs.push(
                Outbound::subscribe(&bus, Outbound::filter().channel(format!("c{i}"))).await?,
            );
        }
        let after = proc_status_mib("VmRSS")?;
        drop(first);
        Ok::<_, crate::runner::BoxError>((before, after, subs))
    })?;
    let grown = after - before;
    print_json(serde_json::json!({
        "before_mib": before,
        "grown_mib": grown,
        "bytes_per_sub": grown * 1024.0 * 1024.0 / n as f64,
    }));
    drop(subs);
    Ok(())
}

/// Drain rate and peak RSS with a backlog of `n`, measured in a child process.
async fn drain_backlog(spec: &ServerSpec, n: usize) -> BenchResult<Row> {
    let mut args = vec![DRAIN_CHILD.to_string(), n.to_string()];
    if let Some(bin) = &spec.binary {
        args.push(bin.display().to_string());
    }
    let v = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        child_json(&refs)
    })
    .await??;
    let get = |k: &str| v[k].as_f64().ok_or_else(|| fail(format!("no {k} in {v}")));
    let row = Row {
        what: "outbox backlog",
        size: n,
        values: vec![
            ("queue", get("queue_rate")?, "msg/s"),
            ("drain", get("drain_rate")?, "msg/s"),
            ("peak rss", get("peak_mib")?, "MiB"),
            ("rss queued", get("queued_mib")?, "MiB"),
        ],
    };
    eprintln!("  {}", row.json());
    Ok(row)
}

/// The drain child: a bus with an outbox on a port where no server runs yet; `n` messages
/// queued (1,024 in flight); then the server is started on that port and the time from the bus
/// seeing `Connected` to `flush()` returning (every row confirmed) is the drain.
pub fn drain_child(args: &[String]) -> BenchResult<()> {
    let (n, binary) = match args {
        [n] => (n, None),
        [n, bin] => (n, Some(bin.into())),
        _ => {
            return Err(fail(format!(
                "usage: {DRAIN_CHILD} <messages> [nats-server]"
            )))
        }
    };
    let n: usize = n.parse()?;
    let port = free_port()?;
    let spec = ServerSpec {
        binary,
        jetstream: false,
        port: Some(port),
    };
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let url = format!("nats://127.0.0.1:{port}");
        let bus = Bus::builder()
            .nats([url.as_str()])
            .outbox_path(dir.path().join("outbox.sqlite3"))
            .reconnect_delay(Duration::from_millis(100))
            .connect()
            .await?;
        let msg = msgs::outbound(INSTANCE);
        let t = Instant::now();
        sdk::publish_windowed(&bus, &msg, n, 1024).await?;
        let queue_rate = n as f64 / t.elapsed().as_secs_f64();
        let queued_mib = proc_status_mib("VmHWM")?;
        let server = Server::start(&spec).await?;
        let mut state = bus.watch_state();
        within(
            WAIT,
            "the bus to connect",
            state.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await??;
        let t = Instant::now();
        within(WAIT * 5, "the drain", bus.flush()).await??;
        let drain_rate = n as f64 / t.elapsed().as_secs_f64();
        drop(server);
        Ok::<_, crate::runner::BoxError>(serde_json::json!({
            "queue_rate": queue_rate,
            "drain_rate": drain_rate,
            "queued_mib": queued_mib,
            "peak_mib": proc_status_mib("VmHWM")?,
        }))
    })?;
    print_json(out);
    Ok(())
}

/// Request latency with `k` concurrent requesters on one requesting connection, bus and raw
/// rounds interleaved; p50 and p99 of each side's median round.
async fn requests(url: &str, k: usize, rounds: usize) -> BenchResult<Row> {
    let per_task = (REQUESTS / k).max(20);
    let bus = Arc::new(BusRequester::start(url).await?);
    let raw = Arc::new(RawRequester::start(url, RawRequestShape::default()).await?);
    let (mut bus_p, mut raw_p) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw_p.push(quantiles(
            concurrent(k, per_task, |i| {
                let raw = raw.clone();
                async move { raw.once(i).await }
            })
            .await?,
        ));
        bus_p.push(quantiles(
            concurrent(k, per_task, |_| {
                let bus = bus.clone();
                async move { bus.once().await }
            })
            .await?,
        ));
    }
    let mid = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        median(&v.iter().map(pick).collect::<Vec<_>>())
    };
    let row = Row {
        what: "request latency",
        size: k,
        values: vec![
            ("bus p50", mid(&bus_p, |x| x.0), "us"),
            ("raw p50", mid(&raw_p, |x| x.0), "us"),
            ("bus p99", mid(&bus_p, |x| x.1), "us"),
            ("raw p99", mid(&raw_p, |x| x.1), "us"),
        ],
    };
    eprintln!("  {}", row.json());
    Ok(row)
}

/// (p50, p99) in µs of sorted latencies.
fn quantiles(sorted: Vec<Duration>) -> (f64, f64) {
    (quantile_us(&sorted, 0.5), quantile_us(&sorted, 0.99))
}

fn print_json(v: Value) {
    #[allow(clippy::print_stdout)]
    {
        println!("{v}");
    }
}
