//! The inbox (`HandlerOptions::dedupe`) and consume-produce (`Envelope::publish`) under faults,
//! on real nats-servers with JetStream file storage (run on both lines with `NATS_SERVER_BIN`),
//! and on the local broker (memory store). Each fault test counts effects and prints the counts
//! (`--nocapture`):
//!
//! - every message published twice with the same msg id (past the stream's duplicate window, so
//!   the stream keeps both), and the handler process SIGKILLed twice after its effects were
//!   recorded and committed but before its acks reached the server: every message has its
//!   effect exactly once, and the handlers' stats account for every copy skipped;
//! - the same with two handler processes on one durable consumer (a queue group) sharing
//!   their completions in a JetStream key-value bucket, both frozen and one killed twice;
//! - a handler that republishes each message as another type through its envelope, SIGKILLed
//!   mid-run three times: downstream every output arrives, each exactly once by msg id.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::stream::StreamConfig;
use bus::{Bus, HandlerOptions, Headers};
use bus_tests::jetstream::{raw_context, stream_messages, wait_until, JsServer};
use bus_tests::msgs::{outbound, Delegate, Outbound};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GUARD: Duration = Duration::from_secs(180);

/// A TCP proxy in front of the server whose client-to-server direction can be frozen (a
/// handler process behind a frozen proxy still receives what was fetched, runs it and commits
/// its completions, but nothing it sends reaches the server), or made to drop acks only (every
/// other message, a shared inbox's writes included, goes through).
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    drop_acks: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let drop_acks = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (f, c, d) = (frozen.clone(), conns.clone(), drop_acks.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (frozen, drop_acks) = (f.clone(), d.clone());
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut pending = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while frozen.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        let out = forward(&mut pending, drop_acks.load(Ordering::SeqCst));
                        if sw.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                c.lock().unwrap().extend([up, down]);
            }
        });
        Proxy {
            port,
            frozen,
            drop_acks,
            conns,
        }
    }

    /// From now on, acks (publishes to `$JS.ACK.…`) are dropped; everything else goes through.
    fn drop_acks(&self) {
        self.drop_acks.store(true, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Drops every connection, with what the frozen direction held, and thaws.
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
        self.frozen.store(false, Ordering::SeqCst);
        self.drop_acks.store(false, Ordering::SeqCst);
    }
}

/// The complete client protocol operations at the start of `pending` (taken out of it), to
/// send on; with `drop_acks`, without the publishes to `$JS.ACK.…`.
fn forward(pending: &mut Vec<u8>, drop_acks: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(pending.len());
    let mut at = 0;
    while let Some(eol) = pending[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &pending[at..at + eol];
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        let end = if op == "PUB" || op == "HPUB" {
            let total: usize = text
                .split_ascii_whitespace()
                .last()
                .and_then(|t| t.parse().ok())
                .expect("a publish says its size");
            let end = at + eol + 2 + total + 2;
            if end > pending.len() {
                break;
            }
            end
        } else {
            at + eol + 2
        };
        let is_ack = words.next().is_some_and(|s| s.starts_with("$JS.ACK."));
        if !(drop_acks && is_ack) {
            out.extend_from_slice(&pending[at..end]);
        }
        at = end;
    }
    pending.drain(..at);
    out
}

/// What the handler processes printed.
#[derive(Debug, Default)]
struct Log {
    /// `(msg id, text)` per effect, every process.
    effects: Vec<(String, String)>,
    /// The last `stats` line of each process: handled, duplicates skipped, without msg id.
    stats: Vec<(u64, u64, u64)>,
    /// Lines read so far (to see when the processes are quiet).
    lines: usize,
}

/// Starts `inbox_handler` in `mode` on `url`, with its outbox at `outbox`, its output read
/// into `log`.
fn spawn_handler(
    url: &str,
    outbox: &std::path::Path,
    mode: &str,
    log: Arc<Mutex<Log>>,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inbox_handler"))
        .arg(url)
        .arg("inbox")
        .arg("2000")
        .arg(outbox)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start inbox_handler");
    let stdout = child.stdout.take().unwrap();
    let slot = {
        let mut log = log.lock().unwrap();
        log.stats.push((0, 0, 0));
        log.stats.len() - 1
    };
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut log = log.lock().unwrap();
            log.lines += 1;
            let mut words = line.split(' ');
            match words.next() {
                Some("effect") => {
                    let id = words.next().expect("msg id").to_owned();
                    let text = words.next().expect("text").to_owned();
                    log.effects.push((id, text));
                }
                Some("stats") => {
                    let mut n = || words.next().expect("count").parse::<u64>().unwrap();
                    log.stats[slot] = (n(), n(), n());
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
    });
    (child, reader)
}

/// Waits until the durable `inbox` exists (the process attached).
async fn attached(url: &str, stream: &str) {
    let js = raw_context(url).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while js
        .get_stream(stream)
        .await
        .unwrap()
        .consumer_info("inbox")
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "never attached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until nothing was printed for half a second.
async fn quiet(log: &Arc<Mutex<Log>>) {
    let mut last = usize::MAX;
    loop {
        let now = log.lock().unwrap().lines;
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Kills a handler process behind `proxy` after everything it fetched was run and committed
/// but before any ack since the freeze reached the server.
async fn kill_between_commit_and_ack(
    proxy: &Proxy,
    log: &Arc<Mutex<Log>>,
    (mut child, reader): (Child, std::thread::JoinHandle<()>),
) {
    proxy.freeze();
    quiet(log).await;
    child.kill().expect("SIGKILL the handler process");
    child.wait().unwrap();
    reader.join().unwrap();
    proxy.cut();
}

/// The durable `inbox` of `stream` has nothing pending and nothing unacknowledged.
async fn drained(url: &str, stream: &str) -> bool {
    let js = raw_context(url).await;
    let info = js
        .get_stream(stream)
        .await
        .unwrap()
        .consumer_info("inbox")
        .await
        .unwrap()
        .clone();
    info.num_pending == 0 && info.num_ack_pending == 0
}

async fn publisher(url: &str, dir: &std::path::Path, streams: Vec<StreamConfig>) -> Bus {
    let mut builder = Bus::builder()
        .nats([url])
        .name("inbox-publisher")
        .outbox_path(dir.join("publisher.sqlite3"))
        .reconnect_delay(Duration::from_millis(100));
    for s in streams {
        builder = builder.stream(s);
    }
    let bus = builder.connect().await.expect("publisher connect");
    bus.streams_ready(GUARD).await.expect("streams set up");
    bus
}

/// Publishes `0..n` on the fault channel, message `i` with msg id `m-<i>`, and flushes.
async fn publish_with_ids(bus: &Bus, n: usize) {
    for i in 0..n {
        let mut headers = Headers::new();
        headers.insert("Nats-Msg-Id", format!("m-{i}"));
        bus.publish_with_headers(&outbound("fault", "p", &i.to_string()), headers)
            .await
            .expect("publish");
    }
    tokio::time::timeout(GUARD, bus.flush())
        .await
        .expect("flush in time")
        .expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_and_redeliveries_after_kills_between_effect_and_ack_run_once() {
    let server = JsServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    // A short duplicate window: the second copies, published after it, are stored too, so
    // only the inbox stands between them and a second effect.
    let stream = StreamConfig::new("FAULTS", ["plugin.outbound.fault.>"])
        .duplicate_window(Duration::from_secs(1));
    let bus = publisher(&server.url(), dir.path(), vec![stream]).await;
    let outbox = dir.path().join("handler.sqlite3");
    let log = Arc::new(Mutex::new(Log::default()));
    let effects = |log: &Arc<Mutex<Log>>| log.lock().unwrap().effects.len();

    let first = spawn_handler(&proxy.url(), &outbox, "effect", log.clone());
    attached(&server.url(), "FAULTS").await;
    let publishing = {
        let bus = bus.clone();
        tokio::spawn(async move { publish_with_ids(&bus, n).await })
    };
    let l = log.clone();
    wait_until("a third run", GUARD, || effects(&l) >= n / 3).await;
    kill_between_commit_and_ack(&proxy, &log, first).await;
    let killed_after = [effects(&log), 0];

    let second = spawn_handler(&proxy.url(), &outbox, "effect", log.clone());
    let l = log.clone();
    wait_until("two thirds run", GUARD, || effects(&l) >= 2 * n / 3).await;
    kill_between_commit_and_ack(&proxy, &log, second).await;
    let killed_after = [killed_after[0], effects(&log)];

    publishing.await.unwrap();
    // Past the stream's duplicate window: every message again, same msg ids.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_with_ids(&bus, n).await;
    assert_eq!(
        stream_messages(&raw_context(&server.url()).await, "FAULTS").await,
        2 * n as u64,
        "the stream keeps both copies of every message"
    );

    let (mut third, reader) = spawn_handler(&proxy.url(), &outbox, "effect", log.clone());
    let deadline = tokio::time::Instant::now() + GUARD;
    while !drained(&server.url(), "FAULTS").await {
        assert!(tokio::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quiet(&log).await;
    third.kill().unwrap();
    third.wait().unwrap();
    reader.join().unwrap();

    let log = log.lock().unwrap();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (id, text) in &log.effects {
        assert_eq!(id, &format!("m-{text}"), "effect of the message it says");
        *per_id.entry(id).or_default() += 1;
    }
    let twice = per_id.values().filter(|&&c| c > 1).count();
    let handled: u64 = log.stats.iter().map(|s| s.0).sum();
    let skipped: u64 = log.stats.iter().map(|s| s.1).sum();
    let without_id: u64 = log.stats.iter().map(|s| s.2).sum();
    eprintln!(
        "dedupe: {n} messages x2, killed between commit and ack after {killed_after:?} effects: \
         {} effects, {} distinct, {twice} run twice; stats per process {:?}: handled {handled}, \
         duplicates skipped {skipped}, without msg id {without_id}",
        log.effects.len(),
        per_id.len(),
        log.stats
    );
    assert_eq!(per_id.len(), n, "every message had its effect");
    assert_eq!(log.effects.len(), n, "no effect ran twice");
    assert_eq!(handled, n as u64, "each message completed once");
    assert_eq!(without_id, 0);
    // Every stored copy was either run (n) or skipped: the n second copies, plus every
    // redelivery of what a killed process had committed but not acknowledged.
    assert!(
        skipped > n as u64,
        "the stats account for every second copy and for the redeliveries the kills left \
         (committed, not acknowledged): {skipped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_the_shared_store_run_each_message_once_across_kills() {
    let server = JsServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let stream = StreamConfig::new("FAULTS", ["plugin.outbound.fault.>"])
        .duplicate_window(Duration::from_secs(1));
    let bus = publisher(&server.url(), dir.path(), vec![stream]).await;
    // Each instance has its own outbox file: only the bucket is shared.
    let outbox = |k: usize| dir.path().join(format!("handler-{k}.sqlite3"));
    let log = Arc::new(Mutex::new(Log::default()));
    let effects = |log: &Arc<Mutex<Log>>| log.lock().unwrap().effects.len();

    let stay = spawn_handler(&proxy.url(), &outbox(0), "shared", log.clone());
    let mut killed = spawn_handler(&proxy.url(), &outbox(1), "shared", log.clone());
    attached(&server.url(), "FAULTS").await;
    let publishing = {
        let bus = bus.clone();
        tokio::spawn(async move { publish_with_ids(&bus, n).await })
    };
    let mut kills = Vec::new();
    for third in 1..=2 {
        let l = log.clone();
        wait_until("effects", GUARD, || effects(&l) >= third * n / 3).await;
        // Acks dropped for both (their completions, in the bucket too, still written), one
        // killed; the other's connection is cut too, so what it finished comes back as well,
        // possibly to the new instance.
        proxy.drop_acks();
        quiet(&log).await;
        let (mut child, reader) = killed;
        child.kill().expect("SIGKILL the handler process");
        child.wait().unwrap();
        reader.join().unwrap();
        proxy.cut();
        kills.push(effects(&log));
        killed = spawn_handler(&proxy.url(), &outbox(1), "shared", log.clone());
    }
    publishing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_with_ids(&bus, n).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while !drained(&server.url(), "FAULTS").await {
        assert!(tokio::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    quiet(&log).await;
    for (mut child, reader) in [stay, killed] {
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
    }

    let log = log.lock().unwrap();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &log.effects {
        *per_id.entry(id).or_default() += 1;
    }
    let handled: u64 = log.stats.iter().map(|s| s.0).sum();
    let skipped: u64 = log.stats.iter().map(|s| s.1).sum();
    eprintln!(
        "shared store: {n} messages x2, two instances, one killed after {kills:?} effects: {} \
         effects, {} distinct; stats per process {:?}: handled {handled}, duplicates skipped \
         {skipped}",
        log.effects.len(),
        per_id.len(),
        log.stats
    );
    assert_eq!(per_id.len(), n, "every message had its effect");
    assert_eq!(
        log.effects.len(),
        n,
        "no two instances (or runs) had one effect"
    );
    assert_eq!(handled, n as u64, "each message completed once");
    assert!(
        skipped > n as u64,
        "every second copy and redelivery skipped: {skipped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_published_through_the_envelope_arrive_once_across_three_kills() {
    let server = JsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 3_000;
    let bus = publisher(
        &server.url(),
        dir.path(),
        vec![
            StreamConfig::new("FAULTS", ["plugin.outbound.fault.>"]),
            StreamConfig::new("PRODUCED", ["agent.route.produced"]),
        ],
    )
    .await;
    // Downstream: every output, as (its msg id, the index it carries).
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let s = seen.clone();
    let downstream = bus
        .handle_with(
            Delegate::filter().agent("produced"),
            HandlerOptions::named("downstream").durable("downstream"),
            move |msg| {
                let id = msg.msg_id().expect("outputs carry an id").to_owned();
                s.lock().unwrap().push((id, msg.task.clone()));
                async { Ok::<_, String>(()) }
            },
        )
        .await
        .unwrap();
    let outbox = dir.path().join("handler.sqlite3");
    let log = Arc::new(Mutex::new(Log::default()));
    let mut child = spawn_handler(&server.url(), &outbox, "produce", log.clone());
    attached(&server.url(), "FAULTS").await;
    let publishing = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..n {
                outbound("fault", "p", &i.to_string())
                    .publish(&bus)
                    .await
                    .expect("publish");
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            bus.flush().await.expect("flush");
        })
    };
    let distinct = |seen: &Arc<Mutex<Vec<(String, String)>>>| {
        let seen = seen.lock().unwrap();
        let mut tasks: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        tasks.len()
    };
    let mut kills = Vec::new();
    for quarter in 1..=3 {
        let s = seen.clone();
        wait_until("outputs downstream", GUARD, || {
            distinct(&s) >= quarter * n / 4
        })
        .await;
        let (mut killed, reader) = child;
        killed.kill().expect("SIGKILL the handler process");
        killed.wait().unwrap();
        reader.join().unwrap();
        kills.push(distinct(&seen));
        child = spawn_handler(&server.url(), &outbox, "produce", log.clone());
    }
    let s = seen.clone();
    wait_until("every output downstream", GUARD, || distinct(&s) >= n).await;
    publishing.await.unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    while !drained(&server.url(), "FAULTS").await {
        assert!(tokio::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the last process committed reaches the stream, and resends would show up now.
    quiet(&log).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut last, reader) = child;
    last.kill().unwrap();
    last.wait().unwrap();
    reader.join().unwrap();
    downstream.stop().await;

    let seen = seen.lock().unwrap();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for (id, task) in seen.iter() {
        assert!(
            id.ends_with(".0"),
            "an output's id derives from its input's: {id}"
        );
        *per_id.entry(id).or_default() += 1;
        *per_task.entry(task).or_default() += 1;
    }
    let log = log.lock().unwrap();
    eprintln!(
        "consume-produce: {n} inputs, handler SIGKILLed with {kills:?} outputs downstream: {} \
         outputs received, {} distinct ids, {} distinct inputs; stats per process {:?}",
        seen.len(),
        per_id.len(),
        per_task.len(),
        log.stats
    );
    assert_eq!(per_task.len(), n, "every input produced its output");
    assert_eq!(per_id.len(), n, "one output id per input");
    assert_eq!(seen.len(), n, "each output received exactly once");
}

/// The local broker without an outbox: the memory store skips copies, counts them and the
/// messages without an id, and a handler's outputs go out once, after `Ok` only.
#[tokio::test]
async fn local_memory_inbox_skips_copies_and_publishes_outputs_after_ok() {
    let bus = Bus::local().await.unwrap();
    let outputs: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let o = outputs.clone();
    let downstream = Delegate::handle(&bus, Delegate::filter(), move |msg| {
        o.lock()
            .unwrap()
            .push((msg.msg_id().unwrap_or("-").to_owned(), msg.task.clone()));
        async { Ok::<_, String>(()) }
    })
    .await
    .unwrap();
    let effects: Arc<Mutex<Vec<String>>> = Arc::default();
    let e = effects.clone();
    let handler = bus
        .handle_with(
            Outbound::filter().channel("local"),
            HandlerOptions::named("local-inbox")
                .ordered(true)
                .dedupe(Duration::from_secs(60))
                .retry(
                    bus::RetryPolicy::default()
                        .base(Duration::from_millis(1))
                        .max_attempts(2),
                ),
            move |msg| {
                let e = e.clone();
                async move {
                    msg.publish(&Delegate {
                        agent: "next".into(),
                        task: msg.text.clone(),
                    })
                    .map_err(|e| e.to_string())?;
                    if msg.text == "fails" {
                        return Err("fails always".to_owned());
                    }
                    e.lock().unwrap().push(msg.text.clone());
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    let n = 200;
    for round in 0..2 {
        for i in 0..n {
            let mut headers = Headers::new();
            headers.insert("Nats-Msg-Id", format!("l-{i}"));
            bus.publish_with_headers(&outbound("local", "p", &i.to_string()), headers)
                .await
                .unwrap();
        }
        let _ = round;
    }
    // Without an id: run each time, counted.
    for _ in 0..3 {
        outbound("local", "p", "no-id").publish(&bus).await.unwrap();
    }
    let mut headers = Headers::new();
    headers.insert("Nats-Msg-Id", "l-fails");
    bus.publish_with_headers(&outbound("local", "p", "fails"), headers)
        .await
        .unwrap();
    let stats = handler.stats().clone();
    wait_until("all seen", GUARD, || {
        stats.handled() + stats.duplicates_skipped() + stats.dead_lettered() >= 2 * n as u64 + 4
    })
    .await;
    let o = outputs.clone();
    wait_until("outputs", GUARD, || o.lock().unwrap().len() >= n + 3).await;
    handler.stop().await;
    downstream.stop().await;
    assert_eq!(stats.handled(), n as u64 + 3);
    assert_eq!(stats.duplicates_skipped(), n as u64);
    assert_eq!(stats.without_msg_id(), 3);
    assert_eq!(stats.dead_lettered(), 1);
    assert_eq!(effects.lock().unwrap().len(), n + 3);
    let outputs = outputs.lock().unwrap();
    assert_eq!(outputs.len(), n + 3, "one output per run that returned Ok");
    assert!(
        outputs.iter().all(|(_, task)| task != "fails"),
        "a failed handler published nothing"
    );
    for i in 0..n {
        let want = (format!("l-{i}.0"), i.to_string());
        assert_eq!(
            outputs.iter().filter(|o| **o == want).count(),
            1,
            "{want:?}"
        );
    }
}

/// `Envelope::publish` outside a deduplicating handler is refused, and says what to do.
#[tokio::test]
async fn envelope_publish_outside_a_dedupe_handler_is_refused() {
    let env = bus::Envelope::new(
        outbound("x", "y", "z"),
        "plugin.outbound.x.y".into(),
        None,
        Headers::new(),
    );
    let err = env
        .publish(&outbound("x", "y", "z"))
        .expect_err("not in a dedupe handler");
    assert!(err.to_string().contains("HandlerOptions::dedupe"), "{err}");
}

/// A deduplicating handler on a core subscription of a NATS bus with an outbox: its completions
/// are in the file (`OutboxStats::inbox`, what `bus outbox stats` shows), and a bus opened again
/// on the file skips the same msg ids, while the messages it never finished still run.
#[tokio::test]
async fn completions_survive_a_restart_and_show_in_the_stats() {
    let server = bus_tests::server::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite3");
    let effects: Arc<Mutex<Vec<String>>> = Arc::default();
    let run = |ids: std::ops::Range<usize>| {
        let (url, path, effects) = (server.url(), path.clone(), effects.clone());
        async move {
            let bus = Bus::builder()
                .nats([url.as_str()])
                .outbox_path(&path)
                .connect()
                .await
                .unwrap();
            let e = effects.clone();
            let handler = bus
                .handle_with(
                    Outbound::filter().channel("restart"),
                    HandlerOptions::named("restart").dedupe(Duration::from_secs(600)),
                    move |msg| {
                        e.lock().unwrap().push(msg.text.clone());
                        async { Ok::<_, String>(()) }
                    },
                )
                .await
                .unwrap();
            let expected = ids.len() as u64;
            for i in ids {
                let mut headers = Headers::new();
                headers.insert("Nats-Msg-Id", format!("r-{i}"));
                bus.publish_with_headers(&outbound("restart", "p", &i.to_string()), headers)
                    .await
                    .unwrap();
            }
            bus.flush().await.unwrap();
            let stats = handler.stats().clone();
            wait_until("every message handled or skipped", GUARD, || {
                stats.handled() + stats.duplicates_skipped() >= expected
            })
            .await;
            let inbox = bus.outbox_stats().await.unwrap().unwrap().inbox;
            handler.stop().await;
            bus.close().await.unwrap();
            (stats.handled(), stats.duplicates_skipped(), inbox)
        }
    };
    assert_eq!(run(0..50).await, (50, 0, 50));
    // Again on the same file: 0..50 were finished, 50..80 are new.
    assert_eq!(run(0..80).await, (30, 50, 80));
    let file = bus::outbox::OutboxFile::open_read_only(&path).unwrap();
    assert_eq!(file.stats().unwrap().inbox, 80);
    let effects = effects.lock().unwrap();
    assert_eq!(effects.len(), 80, "each message ran once");
}

/// A durable deduplicating handler acknowledges each delivery after its completion's group
/// commit, off the handler's own task; `stop` still returns only once every delivery it ran
/// is committed and acknowledged: the stats count all of them, the consumer has nothing
/// unacknowledged, and the file holds every completion.
#[tokio::test]
async fn stop_returns_after_every_run_delivery_is_committed_and_acknowledged() {
    let server = JsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let n = 2_000;
    let stream = StreamConfig::new("SETTLE", ["plugin.outbound.settle.>"]);
    let bus = publisher(&server.url(), dir.path(), vec![stream.clone()]).await;
    let consumer = Bus::builder()
        .nats([server.url().as_str()])
        .outbox_path(dir.path().join("handler.sqlite3"))
        .stream(stream)
        .connect()
        .await
        .unwrap();
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_ran = Arc::new(tokio::sync::Notify::new());
    let (r, a) = (ran.clone(), all_ran.clone());
    let handler = consumer
        .handle_with(
            Outbound::filter().channel("settle"),
            HandlerOptions::named("inbox")
                .durable("inbox")
                .dedupe(Duration::from_secs(600)),
            move |_msg| {
                if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    a.notify_one();
                }
                async { Ok::<_, String>(()) }
            },
        )
        .await
        .unwrap();
    for i in 0..n {
        let mut headers = Headers::new();
        headers.insert("Nats-Msg-Id", format!("settle-{i}"));
        bus.publish_with_headers(&outbound("settle", "p", &i.to_string()), headers)
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    // Stopped as soon as the last message ran: its completion and ack are still on their way.
    tokio::time::timeout(GUARD, all_ran.notified())
        .await
        .expect("every message run");
    let stats = handler.stats().clone();
    handler.stop().await;
    assert_eq!(
        stats.handled(),
        n as u64,
        "every run counted once committed"
    );
    assert_eq!(stats.failed_attempts(), 0);
    assert!(
        drained(&server.url(), "SETTLE").await,
        "every delivery acknowledged when stop returned"
    );
    let inbox = consumer.outbox_stats().await.unwrap().unwrap().inbox;
    assert_eq!(inbox, n as u64, "every completion in the file");
    assert_eq!(ran.load(Ordering::Relaxed), n, "each message ran once");
}
