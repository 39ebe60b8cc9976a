//! `bus-bench`: the SDK measured against raw async-nats and raw tokio, side by side in one run.
//!
//! ```text
//! cargo run --release -p bus-bench -- [--quick] [--only NAME[,NAME…]] [--rounds N]
//!     [--side both|bus|baseline] [--server-bin PATH] [--scaling]
//!     [--compare BEFORE.jsonl[,…] [--after AFTER.jsonl[,…]]]
//! ```
//!
//! Starts its own nats-server, runs each scenario's baseline and bus rounds interleaved, prints
//! one JSON object per scenario per line on stdout, then a table. Progress goes to stderr.
//! `--compare` then prints the before/after table against a saved run (the medians of several);
//! with `--after` it compares saved runs only, without running anything.
//! See `benches/README.md` for what each scenario measures and what `ratio` means.

// A benchmark's output is its report: printing to stdout/stderr is the point of this binary.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod hand_outbox;
mod msgs;
mod probe;
mod report;
mod runner;
mod scenarios;
mod sdk;
mod server;

use std::process::ExitCode;
use std::time::Instant;

use report::{Better, Line, Target};
use runner::{interleave, BenchResult, Outcome, Rounds, Sample, Sides};
use scenarios::{jetstream, keyed, latency, local, nats, outbox, rss, scaling};
use server::{Server, ServerSpec};

/// Every scenario, in run order. The names are the contract of the report. The latency rows
/// (`--only latency` selects them all) are [`LATENCY_SCENARIOS`].
const SCENARIOS: [&str; 14] = [
    "nats_pubsub_typed",
    "nats_pubsub_durable",
    "jetstream_durable",
    "handler_dedupe",
    "nats_fanout_10",
    "nats_request_p50",
    "nats_request_p99_c10",
    "local_pubsub_typed",
    "local_10k_subs",
    "handler_local",
    "handler_ordered_by_subject",
    "outbox_publish_rate",
    "drain_after_outage",
    "outbox_1m_rss_mib",
];

/// The latency rows, in run order: the first message after `connect()`, then publish ->
/// delivery at 500 and 5,000 msg/s per path (`latency_<path>_<rate>`, paths as
/// [`latency::Path::ALL`]).
const LATENCY_SCENARIOS: [&str; 11] = [
    "latency_first_message",
    "latency_core_500",
    "latency_outbox_500",
    "latency_powerloss_500",
    "latency_durable_500",
    "latency_request_500",
    "latency_core_5000",
    "latency_outbox_5000",
    "latency_powerloss_5000",
    "latency_durable_5000",
    "latency_request_5000",
];

/// The steady rates of the latency rows, msg/s.
const LATENCY_RATES: [u32; 2] = [500, 5000];

/// The scenarios that need a running nats-server (the diagnostics and latency rows all do).
const NEEDS_SERVER: [&str; 8] = [
    "nats_pubsub_typed",
    "nats_pubsub_durable",
    "jetstream_durable",
    "handler_dedupe",
    "nats_fanout_10",
    "nats_request_p50",
    "nats_request_p99_c10",
    "drain_after_outage",
];

/// Subscribers of `nats_fanout_10`.
const FANOUT: usize = 10;

/// Diagnostics, run only when named in `--only`: they explain a gap rather than measure the SDK.
/// `diag_pubsub_bytes`: the typed bus vs raw async-nats moving pre-encoded bytes (no encode, no
/// decode): the SDK's whole cost, serialisation included.
/// `diag_raw_headers`: raw async-nats with the wire format's four headers ("bus") vs without.
/// `diag_durable_noid`: `nats_pubsub_durable` with `WireHeaders::NoId` (no id header at all).
/// `diag_durable_by_hand`: `nats_pubsub_durable`'s bus side vs the same guarantee by hand (a
/// rusqlite outbox and raw async-nats with one `Nats-Msg-Id`).
/// `diag_jetstream_msgid`: `jetstream_durable`'s raw baseline with a `Nats-Msg-Id` per message
/// ("bus") vs without: what the id the bus must send costs by itself. `diag_jetstream_ceiling`:
/// `jetstream_durable`'s bus side vs that raw baseline with the id.
/// `diag_outbox_steps`: `latency_outbox_500`'s bus side split into steps by the outbox's trace
/// points (printed per round); its headline is sent -> arrived against raw publish -> arrived.
/// `diag_request_headers`, `diag_request_spawn`: raw request/reply with the bus's headers, or
/// answered on a task per request as `Bus::serve` does ("bus"), vs plain raw.
const DIAGNOSTICS: [&str; 9] = [
    "diag_outbox_steps",
    "diag_pubsub_bytes",
    "diag_raw_headers",
    "diag_durable_noid",
    "diag_durable_by_hand",
    "diag_jetstream_msgid",
    "diag_jetstream_ceiling",
    "diag_request_headers",
    "diag_request_spawn",
];

/// Sizes of one run. `--quick` keeps the whole run under 5 minutes on a 2-core machine.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    pubsub_n: usize,
    durable_n: usize,
    request_n: usize,
    local_n: usize,
    subs_n: usize,
    drain_n: usize,
    drain_rounds: usize,
    rss_n: usize,
    /// Messages per round of `nats_fanout_10` (each delivered to every subscriber).
    fanout_n: usize,
    /// Publishes per round of `outbox_publish_rate`.
    outbox_n: usize,
    /// Messages per round of `handler_ordered_by_subject` (its ordered baseline handles them
    /// one at a time, 0-2 ms each).
    keyed_n: usize,
    /// In-flight publishes where a producer lets the outbox group-commit.
    window: usize,
    /// Which sides run (`--side`, for profiling one alone).
    sides: Sides,
    /// Rounds of each latency row (each round sets up both sides afresh).
    latency_rounds: usize,
    /// Seconds of steady publishing per latency round (500 msg/s for 4 s is 2,000 messages).
    latency_secs: f64,
    /// Fresh publishers per round of `latency_first_message`.
    first_n: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            rounds: 9,
            pubsub_n: 500_000,
            durable_n: 200_000,
            request_n: 10_000,
            local_n: 1_000_000,
            subs_n: 500_000,
            drain_n: 100_000,
            drain_rounds: 3,
            rss_n: 1_000_000,
            fanout_n: 100_000,
            outbox_n: 200_000,
            keyed_n: 20_000,
            window: 1024,
            sides: Sides::Both,
            latency_rounds: 5,
            latency_secs: 4.0,
            first_n: 3,
        }
    }
    /// `--small`: a tenth of [`quick`](Plan::quick)'s messages per round, for runs under
    /// callgrind (whose instruction counts do not depend on the machine's load).
    fn small() -> Plan {
        let quick = Plan::quick();
        Plan {
            pubsub_n: quick.pubsub_n / 10,
            durable_n: quick.durable_n / 10,
            request_n: quick.request_n / 10,
            local_n: quick.local_n / 10,
            subs_n: quick.subs_n / 10,
            drain_n: quick.drain_n / 10,
            fanout_n: quick.fanout_n / 10,
            outbox_n: quick.outbox_n / 10,
            keyed_n: quick.keyed_n / 10,
            latency_secs: quick.latency_secs / 5.0,
            first_n: 1,
            ..quick
        }
    }

    fn quick() -> Plan {
        Plan {
            rounds: 5,
            pubsub_n: 200_000,
            durable_n: 100_000,
            request_n: 3_000,
            local_n: 300_000,
            subs_n: 200_000,
            drain_n: 100_000,
            drain_rounds: 2,
            rss_n: 1_000_000,
            fanout_n: 40_000,
            outbox_n: 100_000,
            keyed_n: 4_000,
            window: 1024,
            sides: Sides::Both,
            latency_rounds: 3,
            latency_secs: 1.0,
            first_n: 3,
        }
    }
}

struct Args {
    plan: Plan,
    only: Vec<String>,
    server: ServerSpec,
    scaling: bool,
    /// `--compare`: saved runs to compare this run (or `after`) with.
    compare: Vec<String>,
    /// `--after`: saved runs standing for "after" (nothing runs).
    after: Vec<String>,
}

const USAGE: &str = "usage: bus-bench [--quick|--small] [--only NAME[,NAME...]] [--rounds N] \
[--side both|bus|baseline] [--server-bin PATH] [--scaling] \
[--compare BEFORE.jsonl[,...] [--after AFTER.jsonl[,...]]]\n\
scenarios: nats_pubsub_typed nats_pubsub_durable jetstream_durable handler_dedupe nats_fanout_10 nats_request_p50 nats_request_p99_c10 \
local_pubsub_typed local_10k_subs handler_local handler_ordered_by_subject outbox_publish_rate drain_after_outage \
outbox_1m_rss_mib latency_first_message latency_<core|outbox|powerloss|durable|request>_<500|5000> \
(`latency` names them all); only when named: the diag_* diagnostics\n\
--compare: the before/after table against saved JSON lines (medians of several files); \
with --after, of saved runs only\n\
--scaling groups (with --only): local unsubscribe idle drain request";

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut plan = Plan::full();
    let mut sides = Sides::Both;
    let mut rounds = None;
    let mut only = Vec::new();
    let mut server = ServerSpec::default();
    let mut scaling = false;
    let mut compare = Vec::new();
    let mut after = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => plan = Plan::quick(),
            "--small" => plan = Plan::small(),
            "--only" => {
                let v = it.next().ok_or("--only needs scenario names")?;
                only.extend(v.split(',').map(str::to_string));
            }
            "--side" => {
                sides = match it.next().map(String::as_str) {
                    Some("both") => Sides::Both,
                    Some("bus") => Sides::Bus,
                    Some("baseline") => Sides::Baseline,
                    _ => return Err(format!("--side needs both, bus or baseline\n{USAGE}")),
                };
            }
            "--rounds" => {
                let v = it.next().ok_or("--rounds needs a number")?;
                rounds = Some(
                    v.parse()
                        .map_err(|_| format!("--rounds {v}: not a number"))?,
                );
            }
            "--server-bin" => {
                let v = it
                    .next()
                    .ok_or("--server-bin needs the path of a nats-server")?;
                server.binary = Some(v.into());
            }
            "--scaling" => scaling = true,
            "--compare" => {
                let v = it
                    .next()
                    .ok_or("--compare needs a saved run's JSON lines")?;
                compare.extend(v.split(',').map(str::to_string));
            }
            "--after" => {
                let v = it.next().ok_or("--after needs a saved run's JSON lines")?;
                after.extend(v.split(',').map(str::to_string));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    plan.sides = sides;
    if let Some(r) = rounds {
        plan.rounds = r;
        plan.drain_rounds = r;
        plan.latency_rounds = r;
    }
    if scaling {
        if let Some(bad) = only.iter().find(|n| !scaling::GROUPS.contains(&n.as_str())) {
            return Err(format!(
                "unknown scaling group `{bad}` (groups: {})",
                scaling::GROUPS.join(", ")
            ));
        }
    } else if let Some(bad) = only.iter().find(|n| {
        let n = n.as_str();
        n != "latency"
            && !SCENARIOS.contains(&n)
            && !LATENCY_SCENARIOS.contains(&n)
            && !DIAGNOSTICS.contains(&n)
    }) {
        return Err(format!("unknown scenario `{bad}`\n{USAGE}"));
    }
    if !after.is_empty() && compare.is_empty() {
        return Err(format!("--after needs --compare\n{USAGE}"));
    }
    Ok(Args {
        plan,
        only,
        server,
        scaling,
        compare,
        after,
    })
}

/// The medians of the saved runs at `paths` (JSON lines, or a whole saved stdout each); empty
/// for no paths.
fn read_runs(paths: &[String]) -> Result<Vec<report::Figures>, String> {
    let mut runs = Vec::with_capacity(paths.len());
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?;
        let run = report::parse_jsonl(&text);
        if run.is_empty() {
            return Err(format!("{p} has no scenario lines"));
        }
        runs.push(run);
    }
    Ok(report::medians(&runs))
}

/// The entry point of a hidden child subcommand (a measurement that needs its own process).
type ChildMain = fn(&[String]) -> runner::BenchResult<()>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child: Option<ChildMain> = match args.first().map(String::as_str) {
        Some(rss::CHILD_COMMAND) => Some(rss::child_main),
        Some(scaling::IDLE_CHILD) => Some(scaling::idle_child),
        Some(scaling::DRAIN_CHILD) => Some(scaling::drain_child),
        _ => None,
    };
    if let Some(child) = child {
        return match child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let before = match read_runs(&args.compare) {
        Ok(b) => b,
        Err(msg) => {
            eprintln!("bus-bench: {msg}");
            return ExitCode::from(2);
        }
    };
    if !args.after.is_empty() {
        // Saved runs only: nothing is measured.
        return match read_runs(&args.after) {
            Ok(after) => {
                print!("{}", report::compare_table(&before, &after));
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("bus-bench: {msg}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args_compare = args.compare.clone();
    match rt.block_on(run(args)) {
        Ok(lines) => {
            // `--scaling` prints its own table.
            if !lines.is_empty() {
                println!();
                print!("{}", report::table(&lines));
            }
            if !args_compare.is_empty() {
                let after: Vec<report::Figures> = lines.iter().map(report::Figures::of).collect();
                println!();
                print!("{}", report::compare_table(&before, &after));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> BenchResult<Vec<Line>> {
    if args.scaling {
        return scaling::run(&args.server, args.plan.rounds.min(3), &args.only).await;
    }
    let plan = args.plan;
    let selected = |name: &str| {
        args.only.is_empty()
            || args
                .only
                .iter()
                .any(|o| o == name || (o == "latency" && name.starts_with("latency_")))
    };
    // Diagnostics run only when named: an empty `--only` does not select them.
    let named = |name: &str| args.only.iter().any(|o| o == name);
    let needs_server = NEEDS_SERVER
        .iter()
        .chain(&DIAGNOSTICS)
        .chain(&LATENCY_SCENARIOS)
        .any(|s| selected(s));
    let spec = ServerSpec {
        jetstream: selected("jetstream_durable")
            || selected("handler_dedupe")
            || LATENCY_RATES
                .iter()
                .any(|r| selected(&format!("latency_durable_{r}")))
            || named("diag_jetstream_msgid")
            || named("diag_jetstream_ceiling"),
        ..args.server.clone()
    };
    let mut server = if needs_server {
        Some(Server::start(&spec).await?)
    } else {
        None
    };
    let url = server.as_ref().map(Server::client_url).unwrap_or_default();
    let started = Instant::now();
    eprintln!("bus-bench: {plan:?}");
    if let Some(s) = &server {
        eprintln!("bus-bench: {}", s.describe());
    }
    let mut lines = Vec::new();
    let mut emit = |line: Line| {
        println!("{}", line.to_json());
        lines.push(line);
    };

    if selected("nats_pubsub_typed") {
        let mut s = nats::PubSub {
            url: url.clone(),
            durable: false,
            window: plan.window,
            wire: bus::WireHeaders::default(),
        };
        emit(
            rate("nats_pubsub_typed", &plan, plan.pubsub_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    if named("diag_pubsub_bytes") {
        let mut s = nats::BytesDiag { url: url.clone() };
        emit(
            rate("diag_pubsub_bytes", &plan, plan.pubsub_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    if named("diag_raw_headers") {
        let mut s = nats::HeadersDiag { url: url.clone() };
        emit(
            rate("diag_raw_headers", &plan, plan.pubsub_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    if selected("nats_pubsub_durable") {
        let mut s = nats::PubSub {
            url: url.clone(),
            durable: true,
            window: plan.window,
            wire: bus::WireHeaders::default(),
        };
        emit(
            rate("nats_pubsub_durable", &plan, plan.durable_n, 0.50)
                .run(&mut s)
                .await,
        );
    }
    if named("diag_durable_by_hand") {
        let mut s = nats::DurableByHand {
            url: url.clone(),
            window: plan.window,
        };
        emit(
            rate("diag_durable_by_hand", &plan, plan.durable_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    if named("diag_durable_noid") {
        let mut s = nats::PubSub {
            url: url.clone(),
            durable: true,
            window: plan.window,
            wire: bus::WireHeaders::NoId,
        };
        emit(
            rate("diag_durable_noid", &plan, plan.durable_n, 0.50)
                .run(&mut s)
                .await,
        );
    }
    if selected("nats_fanout_10") {
        let mut s = nats::Fanout {
            url: url.clone(),
            subscribers: FANOUT,
        };
        emit(
            rate("nats_fanout_10", &plan, plan.fanout_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    for (name, baseline, measured, on) in [
        (
            "jetstream_durable",
            jetstream::Side::Raw,
            jetstream::Side::Bus,
            selected("jetstream_durable"),
        ),
        (
            "diag_jetstream_msgid",
            jetstream::Side::Raw,
            jetstream::Side::RawWithId,
            named("diag_jetstream_msgid"),
        ),
        (
            "diag_jetstream_ceiling",
            jetstream::Side::RawWithId,
            jetstream::Side::Bus,
            named("diag_jetstream_ceiling"),
        ),
    ] {
        if on {
            let mut s = jetstream::Durable {
                url: url.clone(),
                window: plan.window,
                baseline,
                measured,
            };
            emit(rate(name, &plan, plan.durable_n, 0.90).run(&mut s).await);
        }
    }
    if selected("handler_dedupe") {
        let mut s = scenarios::dedupe::HandlerDedupe {
            url: url.clone(),
            window: plan.window,
        };
        emit(
            rate("handler_dedupe", &plan, plan.durable_n, 0.70)
                .run(&mut s)
                .await,
        );
    }
    if selected("nats_request_p50") {
        let mut s = nats::Request {
            url: url.clone(),
            pending_bus: None,
        };
        emit(
            latency("nats_request_p50", &plan, plan.request_n)
                .run(&mut s)
                .await,
        );
    }
    if selected("nats_request_p99_c10") {
        let mut s = nats::RequestConcurrent {
            url: url.clone(),
            pending_bus: None,
        };
        let spec = Scenario {
            target: Target::RatioAtLeast(0.85),
            ..latency("nats_request_p99_c10", &plan, plan.request_n)
        };
        emit(spec.run(&mut s).await);
    }
    for (name, headers, spawn) in [
        ("diag_request_headers", true, false),
        ("diag_request_spawn", false, true),
    ] {
        if named(name) {
            let mut s = nats::RequestDiag {
                url: url.clone(),
                shape: nats::RawRequestShape { headers, spawn },
                pending: None,
            };
            emit(latency(name, &plan, plan.request_n).run(&mut s).await);
        }
    }
    if selected("latency_first_message") {
        let mut s = latency::FirstMessage { url: url.clone() };
        let spec = Scenario {
            target: Target::BusAtMost(5000.0),
            ..latency_row("latency_first_message", &plan, plan.first_n)
        };
        emit(spec.run(&mut s).await);
    }
    for rate in LATENCY_RATES {
        for (path, path_name) in latency::Path::ALL {
            let name = format!("latency_{path_name}_{rate}");
            let Some(name) = LATENCY_SCENARIOS.iter().copied().find(|n| *n == name) else {
                continue;
            };
            if !selected(name) {
                continue;
            }
            let n = steady_n(&plan, rate);
            let target = match (path, rate) {
                (latency::Path::Core | latency::Path::Request, _) => Target::RatioAtLeast(0.90),
                (latency::Path::Outbox, 500) => Target::RatioAndP99(0.60, 1000.0),
                (latency::Path::Durable, 500) => Target::P99AtMost(1000.0),
                _ => Target::Info,
            };
            let mut s = latency::Steady {
                url: url.clone(),
                path,
                rate,
            };
            let spec = Scenario {
                target,
                ..latency_row(name, &plan, n.max(1))
            };
            emit(spec.run(&mut s).await);
        }
    }
    if named("diag_outbox_steps") {
        let rate = 500;
        let n = steady_n(&plan, rate);
        let mut s = latency::OutboxSteps {
            url: url.clone(),
            rate,
        };
        let spec = Scenario {
            target: Target::Info,
            ..latency_row("diag_outbox_steps", &plan, n.max(1))
        };
        emit(spec.run(&mut s).await);
    }
    if selected("local_pubsub_typed") {
        let mut s = local::PubSub;
        emit(
            rate("local_pubsub_typed", &plan, plan.local_n, 0.80)
                .run(&mut s)
                .await,
        );
    }
    if selected("local_10k_subs") {
        let mut s = local::ManySubs { subs: 10_000 };
        emit(
            rate("local_10k_subs", &plan, plan.subs_n, 0.50)
                .run(&mut s)
                .await,
        );
    }
    if selected("handler_local") {
        let mut s = local::Handler;
        emit(
            rate("handler_local", &plan, plan.local_n, 0.90)
                .run(&mut s)
                .await,
        );
    }
    if selected("handler_ordered_by_subject") {
        // Order per subject vs full order: at least 8x (see `keyed`).
        let mut s = keyed::OrderedBySubject;
        emit(
            rate("handler_ordered_by_subject", &plan, plan.keyed_n, 8.0)
                .run(&mut s)
                .await,
        );
    }
    if selected("outbox_publish_rate") {
        let mut s = outbox::PublishRate {
            window: plan.window,
        };
        emit(
            rate("outbox_publish_rate", &plan, plan.outbox_n, 0.50)
                .run(&mut s)
                .await,
        );
    }
    if selected("drain_after_outage") {
        if let Some(server) = server.as_mut() {
            let mut s = nats::Drain {
                server,
                window: plan.window,
            };
            // Every round drains a fresh backlog: a warm-up would only drain one more.
            let spec = Scenario {
                rounds: plan.drain_rounds,
                warmup_n: 0,
                ..rate("drain_after_outage", &plan, plan.drain_n, 0.50)
            };
            emit(spec.run(&mut s).await);
        }
    }
    if selected("outbox_1m_rss_mib") {
        let (rss_n, window) = (plan.rss_n, plan.window);
        let measured = tokio::task::spawn_blocking(move || {
            rss::measure(rss_n, window).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        eprintln!("  outbox_1m_rss_mib    {measured:?}");
        let o = Outcome {
            baseline: measured
                .as_ref()
                .map(|r| Sample::value(r.before))
                .map_err(Clone::clone),
            bus: measured.map(|r| Sample::value(r.peak)),
            old_baseline: None,
        };
        emit(line(
            "outbox_1m_rss_mib",
            "MiB",
            Better::Lower,
            Target::BusAtMost(64.0),
            o,
        ));
    }
    eprintln!(
        "bus-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(server);
    Ok(lines)
}

/// One interleaved scenario: what its line reports and how much work its rounds do.
struct Scenario {
    name: &'static str,
    unit: &'static str,
    better: Better,
    target: Target,
    sides: Sides,
    rounds: usize,
    n: usize,
    warmup_n: usize,
}

impl Scenario {
    /// Runs `r`'s baseline and bus rounds interleaved and turns the outcome into the report line.
    async fn run<R: Rounds>(self, r: &mut R) -> Line {
        let o = interleave(self.name, self.sides, self.rounds, self.n, self.warmup_n, r).await;
        line(self.name, self.unit, self.better, self.target, o)
    }
}

/// A throughput scenario: msg/s, higher is better, bus at least `ratio` of the baseline, and a
/// fifth of `n` as warm-up so connections and caches are hot before the first timed round.
fn rate(name: &'static str, plan: &Plan, n: usize, ratio: f64) -> Scenario {
    Scenario {
        name,
        unit: "msg/s",
        better: Better::Higher,
        target: Target::RatioAtLeast(ratio),
        sides: plan.sides,
        rounds: plan.rounds,
        n,
        warmup_n: n / 5,
    }
}

/// A request latency scenario: p50 in µs, lower is better, bus within 0.90 of the baseline, no
/// warm-up (each request stands alone).
fn latency(name: &'static str, plan: &Plan, n: usize) -> Scenario {
    Scenario {
        unit: "us",
        better: Better::Lower,
        warmup_n: 0,
        ..rate(name, plan, n, 0.90)
    }
}

/// A latency row: p50 in µs (p99 and max beside it), lower is better, its own round count, no
/// warm-up round (each round warms its connections up with probes before the clock starts).
/// Messages per round of a steady-rate row at `rate` msg/s.
fn steady_n(plan: &Plan, rate: u32) -> usize {
    (f64::from(rate) * plan.latency_secs).round() as usize
}

fn latency_row(name: &'static str, plan: &Plan, n: usize) -> Scenario {
    Scenario {
        rounds: plan.latency_rounds,
        ..latency(name, plan, n)
    }
}

fn line(
    scenario: &'static str,
    unit: &'static str,
    better: Better,
    target: Target,
    o: Outcome,
) -> Line {
    let error = match (&o.baseline, &o.bus) {
        (Err(b), Err(s)) => Some(format!("baseline: {b}; bus: {s}")),
        (Err(b), Ok(_)) => Some(format!("baseline: {b}")),
        (Ok(_), Err(s)) => Some(format!("bus: {s}")),
        (Ok(_), Ok(_)) => None,
    };
    Line {
        scenario,
        unit,
        better,
        target,
        bus: o.bus.as_ref().ok().map(|s| s.value),
        baseline: o.baseline.as_ref().ok().map(|s| s.value),
        bus_p99: o.bus.as_ref().ok().and_then(|s| s.p99),
        baseline_p99: o.baseline.as_ref().ok().and_then(|s| s.p99),
        bus_max: o.bus.as_ref().ok().and_then(|s| s.max),
        baseline_max: o.baseline.as_ref().ok().and_then(|s| s.max),
        baseline_old: o
            .old_baseline
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .map(|s| s.value),
        error,
    }
}
