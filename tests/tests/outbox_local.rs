//! The outbox in front of the local broker (`Bus::builder().local().outbox_path(p)`): group
//! commit, FIFO, flush, restart, dead letters, stats, file mode, bad files, the lock; the v2
//! file migration, the read-only view of a file a Bus holds, rows that cannot be decoded, the
//! retry policy.

use std::path::Path;
use std::time::Duration;

use bus::headers::{LEGACY_MSG_ID, MSG_ID};
use bus::outbox::{OutboxFile, QueuedMessage};
use bus::{Bus, DeadLetter, Error, Headers, Message, RawMessage, RawSubscription, RetryPolicy};
use bus_tests::support::{collect, flush, publish_around};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Guards against hangs; never a timing assertion.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>")]
struct Step {
    agent: String,
    seq: u64,
}

/// A NATS bus whose server does not exist: everything it publishes stays queued.
async fn down(path: &Path) -> Bus {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Bus::builder()
        .nats([format!("nats://127.0.0.1:{port}")])
        .outbox_path(path)
        .connect()
        .await
        .expect("a NATS bus connects (and queues) while its server is down")
}

async fn local(path: &Path) -> Bus {
    Bus::builder()
        .local()
        .outbox_path(path)
        .connect()
        .await
        .expect("local bus with an outbox")
}

/// Everything already delivered to `sub` (after a flush), up to `n`.
async fn drain(sub: &mut RawSubscription, n: usize) -> Vec<RawMessage> {
    collect(sub, n, Duration::from_secs(2)).await
}

fn text(m: &RawMessage) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

fn outbox_error(r: Result<Bus, Error>) -> String {
    match r {
        Ok(_) => panic!("connect must fail"),
        Err(e @ Error::Outbox { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Outbox, got {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_publishes_are_committed_and_delivered_in_fifo_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local(&dir.path().join("o.db")).await;
    let mut sub = Step::subscribe(&bus, Step::filter()).await.unwrap();
    // 10 publishers x 100 messages, all in flight at once: they share transactions, and each
    // publisher's messages must come out in the order it published them.
    let publishers = (0..10).map(|p| {
        let bus = bus.clone();
        async move {
            for seq in 0..100 {
                Step {
                    agent: format!("p{p}"),
                    seq,
                }
                .publish(&bus)
                .await
                .unwrap();
            }
        }
    });
    futures::future::join_all(publishers).await;
    flush(&bus, GUARD).await;
    let mut next = vec![0u64; 10];
    for _ in 0..1000 {
        let env = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("a message is missing")
            .unwrap()
            .unwrap();
        let p: usize = env.agent[1..].parse().unwrap();
        assert_eq!(env.seq, next[p], "FIFO per publisher");
        next[p] += 1;
        assert!(env.headers().get(MSG_ID).is_some());
    }
    assert_eq!(next, vec![100; 10]);
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!(stats.depth, 0);
    assert_eq!(stats.oldest_age, None);
}

#[tokio::test]
async fn concurrent_raw_publishes_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local(&dir.path().join("o.db")).await;
    let mut sub = bus.broker().subscribe("raw.>", None).await.unwrap();
    let all = (0..1000).map(|i| bus.publish_raw(RawMessage::new("raw.x", format!("{i}"))));
    for r in futures::future::join_all(all).await {
        r.unwrap();
    }
    flush(&bus, GUARD).await;
    let got = drain(&mut sub, 1000).await;
    let mut seen: Vec<u32> = got.iter().map(|m| text(m).parse().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>(), "each exactly once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_bus_on_the_same_file_drains_what_the_last_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut ids = Vec::new();
    {
        let down = down(&path).await;
        for i in 0..100 {
            let mut h = Headers::new();
            let id = bus::new_msg_id();
            h.append(MSG_ID, id.clone());
            ids.push(id);
            down.publish_raw(RawMessage::new("left.over", format!("{i}")).with_headers(h))
                .await
                .unwrap();
        }
        let stats = down.outbox_stats().await.unwrap().unwrap();
        assert_eq!(stats.depth, 100);
        assert!(stats.oldest_age.is_some());
    }
    // On a current-thread runtime the new drainer cannot run before this task first waits, so
    // the subscription exists before anything is delivered.
    let bus = local(&path).await;
    let mut sub = bus.broker().subscribe("left.>", None).await.unwrap();
    flush(&bus, GUARD).await;
    let got = drain(&mut sub, 100).await;
    let got_ids: Vec<&str> = got.iter().map(|m| m.headers.get(MSG_ID).unwrap()).collect();
    assert_eq!(got_ids, ids, "all of them, in order, with their msg ids");
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
}

#[tokio::test]
async fn oversize_goes_to_the_dead_letters_after_exactly_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local(&dir.path().join("o.db")).await;
    let mut sub = bus.broker().subscribe("dl.>", None).await.unwrap();
    let max = bus.broker().max_payload();
    let want = publish_around(&bus, "dl", vec![1u8; max + 1], 20).await;
    flush(&bus, GUARD).await;
    let got: Vec<String> = drain(&mut sub, 21).await.iter().map(text).collect();
    assert_eq!(got, want, "the queue went on behind the dead letter");

    let dlq = bus.dead_letters();
    let list = dlq.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let dead = &list[0];
    assert_eq!(dead.subject, "dl.big");
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.payload.len(), max + 1);
    assert!(dead.headers.get(MSG_ID).is_some());
    assert!(
        dead.last_error.contains("max_payload"),
        "{}",
        dead.last_error
    );
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 1));
}

#[tokio::test]
async fn dead_letters_list_count_replay_purge() {
    let dir = tempfile::tempdir().unwrap();
    let bus = local(&dir.path().join("o.db")).await;
    let mut sub = bus.broker().subscribe("dl.>", None).await.unwrap();
    let max = bus.broker().max_payload();
    bus.publish_raw(RawMessage::new("dl.a", vec![b'a'; max + 1]))
        .await
        .unwrap();
    bus.publish_raw(RawMessage::new("dl.b", vec![b'b'; max + 1]))
        .await
        .unwrap();
    flush(&bus, GUARD).await;
    let dlq = bus.dead_letters();
    assert_eq!(dlq.count().await.unwrap(), 2);
    let list = dlq.list().await.unwrap();
    assert_eq!(
        list.iter().map(|d| d.subject.as_str()).collect::<Vec<_>>(),
        ["dl.a", "dl.b"],
        "oldest first"
    );
    assert!(matches!(
        dlq.replay(i64::MAX).await,
        Err(Error::DeadLetterNotFound(i64::MAX))
    ));

    // Replay: back to the end of the queue with fresh attempts and the same msg id. Still too
    // big, so it fails 3 more times and comes back as a new dead letter.
    let a = list[0].clone();
    dlq.replay(a.id).await.unwrap();
    assert!(matches!(
        dlq.replay(a.id).await,
        Err(Error::DeadLetterNotFound(_))
    ));
    flush(&bus, GUARD).await;
    let list = dlq.list().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].subject, "dl.a");
    assert_eq!(list[1].attempts, 3);
    assert_eq!(list[1].headers.get(MSG_ID), a.headers.get(MSG_ID));
    assert!(list[1].id > a.id);

    // The queue still flows after replays. (A replay that is then delivered is in
    // outbox_faults, where the server's max_payload can change.)
    bus.publish_raw(RawMessage::new("dl.ok", "fine"))
        .await
        .unwrap();
    flush(&bus, GUARD).await;
    let got = drain(&mut sub, 1).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["fine"]);

    assert_eq!(dlq.purge().await.unwrap(), 2);
    assert_eq!(dlq.count().await.unwrap(), 0);
    assert!(dlq.list().await.unwrap().is_empty());
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().dead_letters, 0);
}

#[tokio::test]
async fn without_an_outbox_only_handler_dead_letters_in_memory() {
    let bus = Bus::local().await.unwrap();
    assert_eq!(bus.dead_letters().count().await.unwrap(), 0);
    assert!(matches!(
        bus.dead_letters().replay(1).await,
        Err(Error::DeadLetterNotFound(1))
    ));
    assert_eq!(bus.outbox_stats().await.unwrap(), None);
}

#[cfg(unix)]
#[tokio::test]
async fn the_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let bus = local(&path).await;
    Step {
        agent: "a".into(),
        seq: 1,
    }
    .publish(&bus)
    .await
    .unwrap();
    for p in [path.clone(), dir.path().join("o.db-wal")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[tokio::test]
async fn a_second_bus_on_the_same_file_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let first = local(&path).await;
    let err = outbox_error(Bus::builder().local().outbox_path(&path).connect().await);
    assert!(err.contains("in use by another Bus"), "{err}");
    drop(first);
    local(&path).await;
}

#[tokio::test]
async fn a_corrupt_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &junk).unwrap();
    let err = outbox_error(Bus::builder().local().outbox_path(&path).connect().await);
    assert!(err.contains("not a SQLite database or is corrupt"), "{err}");
    assert!(err.contains("move it aside"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), junk, "never reset");
}

#[tokio::test]
async fn an_unknown_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    drop(local(&path).await);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA user_version = 7").unwrap();
    }
    let err = outbox_error(Bus::builder().local().outbox_path(&path).connect().await);
    assert!(err.contains("unknown outbox schema version 7"), "{err}");
    assert!(err.contains("upgrade bus"), "{err}");
}

#[tokio::test]
async fn an_unwritable_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // root ignores directory permissions: then use a directory no one may create files in.
    let target = if std::fs::write(ro.join("probe"), b"").is_ok() {
        Path::new("/sys").to_path_buf()
    } else {
        ro.clone()
    };
    let err = outbox_error(
        Bus::builder()
            .local()
            .outbox_path(target.join("o.db"))
            .connect()
            .await,
    );
    assert!(err.contains("must exist and be writable"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `tests/data/outbox-v2.sqlite3`: written by the v2 code (schema version 2, one blob per row)
/// through its own store and drainer. Its recipe, which the tests below check against:
/// - 5 messages `fixture.sent.<i>` sent and confirmed, then 3 `fixture.big.<i>` (2,000 bytes of
///   `a`+i, headers `Bus-Msg-Id: fixture-big-<i>`, `X-Tenant: Zürich ☃`) dead-lettered after 3
///   attempts on a broker with max_payload 1024: dead letters 1 to 3;
/// - 40 messages [`fixture_msg`] 0 to 39 queued (ids 9 to 48) on a broker that is down; the
///   watermark then marks ids up to 10 confirmed (rows 1-5, 9 and 10 are still in the table and
///   must not come back); 15 (message 6) failed once, 18 (message 9) twice; 29 (message 20) was
///   dead-lettered by hand: dead letter 4.
const V2_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/outbox-v2.sqlite3");

/// Message `i` of the fixture's queue (queue id `9 + i`).
fn fixture_msg(i: u32) -> RawMessage {
    let mut h = Headers::new();
    if i != 7 {
        h.append(LEGACY_MSG_ID, format!("fixture-q-{i:02}"));
        h.append(MSG_ID, format!("fixture-q-{i:02}"));
    }
    if i.is_multiple_of(3) {
        h.append("X-Tenant", "café ☕ 日本");
    }
    if i.is_multiple_of(5) {
        h.append("X-Multi", "a");
        h.append("X-Multi", "b: c");
    }
    let payload: Vec<u8> = match i {
        13 => Vec::new(),
        i if i.is_multiple_of(2) => vec![i as u8, 0, 0xff, 0xc3, b'\n', i as u8],
        i => format!("payload {i}").into_bytes(),
    };
    let mut m = RawMessage::new(format!("fixture.q.{i}"), payload).with_headers(h);
    if i == 11 {
        m.reply = Some("_INBOX.fixture.11".into());
    }
    m
}

/// The fixture's queue after migration: message numbers, oldest first.
fn fixture_queue() -> Vec<u32> {
    (2..40).filter(|&i| i != 20).collect()
}

fn as_raw(m: &QueuedMessage) -> RawMessage {
    let mut raw =
        RawMessage::new(m.subject.as_str(), m.payload.clone()).with_headers(m.headers.clone());
    raw.reply = m.reply.clone();
    raw
}

/// The fixture's dead letters, checked field by field.
fn check_fixture_dead_letters(dead: &[DeadLetter]) {
    assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
    for (i, d) in dead[..3].iter().enumerate() {
        assert_eq!(d.subject, format!("fixture.big.{i}"));
        assert_eq!(&d.payload[..], &vec![b'a' + i as u8; 2000][..]);
        let want: Headers = [
            (LEGACY_MSG_ID, format!("fixture-big-{i}")),
            ("X-Tenant", "Zürich ☃".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(d.headers, want);
        assert!(
            d.last_error
                .contains("over the broker's max_payload of 1024"),
            "{}",
            d.last_error
        );
    }
    let m = fixture_msg(20);
    let d = &dead[3];
    assert_eq!(
        (&d.subject, &d.headers, &d.payload),
        (&m.subject, &m.headers, &m.payload)
    );
    assert_eq!(
        d.last_error,
        "confirm refused: permissions violation for publish to \"fixture.q.20\""
    );
    for d in dead {
        assert_eq!(
            (d.attempts, d.origin.as_str(), d.queue_id, &d.reply),
            (3, "outbox", None, &None)
        );
        assert!(d.failed_at >= d.created_at);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_v2_file_written_by_the_v2_code_migrates_and_drains_completely_in_fifo_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    std::fs::copy(V2_FIXTURE, &path).unwrap();
    let err = OutboxFile::open_read_only(&path).unwrap_err().to_string();
    assert!(err.contains("schema version 2"), "{err}");

    // Migrated by a bus that cannot send, so that the result can be read before it drains.
    let held = down(&path).await;
    let file = OutboxFile::open_read_only(&path).unwrap();
    let stats = file.stats().unwrap();
    assert_eq!(
        (stats.depth, stats.dead_letters, stats.schema_version),
        (37, 4, 4)
    );
    let queued = file.queued(1000, None).unwrap();
    let want = fixture_queue();
    assert_eq!(
        queued.iter().map(|m| m.id).collect::<Vec<_>>(),
        want.iter().map(|i| 9 + *i as i64).collect::<Vec<_>>()
    );
    for (m, &i) in queued.iter().zip(&want) {
        assert_eq!(as_raw(m), fixture_msg(i), "message {i}");
        assert_eq!(m.decode_error, None);
        let (attempts, error) = match i {
            6 => (1, Some("NATS publish failed: connection reset by peer")),
            9 => (2, Some("confirm refused: délai dépassé")),
            _ => (0, None),
        };
        assert_eq!(
            (m.attempts, m.last_error.as_deref()),
            (attempts, error),
            "message {i}"
        );
    }
    check_fixture_dead_letters(&file.dead_letters().unwrap());
    assert_eq!(held.outbox_stats().await.unwrap().unwrap().depth, 37);
    drop(held);

    // On a current-thread runtime the drainer cannot run before this task first waits, so the
    // subscription exists before anything is delivered.
    let bus = local(&path).await;
    let mut sub = bus.broker().subscribe("fixture.>", None).await.unwrap();
    flush(&bus, GUARD).await;
    let got = drain(&mut sub, 100).await;
    let expected: Vec<RawMessage> = want.iter().map(|&i| fixture_msg(i)).collect();
    assert_eq!(
        got, expected,
        "every queued row, once, in FIFO order, as it was queued"
    );
    let stats = bus.outbox_stats().await.unwrap().unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 4));
    check_fixture_dead_letters(&bus.dead_letters().list().await.unwrap());
    // New rows are numbered after the migrated ones.
    bus.publish_raw(RawMessage::new("fixture.new", "n"))
        .await
        .unwrap();
    flush(&bus, GUARD).await;
    assert_eq!(
        drain(&mut sub, 1)
            .await
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        ["n"]
    );
}

#[tokio::test]
async fn a_v3_file_whose_tables_were_changed_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    drop(local(&path).await);
    for (change, what) in [
        (
            "ALTER TABLE outbox ADD COLUMN priority INTEGER",
            "table outbox has columns",
        ),
        (
            // By hand, as an operator might: without the views that use the column.
            "DROP VIEW dead; ALTER TABLE dead_letters DROP COLUMN origin",
            "table dead_letters has columns",
        ),
        ("DELETE FROM outbox_seq", "outbox_seq has 0 rows"),
    ] {
        let broken = dir.path().join("broken.db");
        std::fs::copy(&path, &broken).unwrap();
        rusqlite::Connection::open(&broken)
            .unwrap()
            .execute_batch(change)
            .unwrap();
        let before = std::fs::read(&broken).unwrap();
        let err = outbox_error(Bus::builder().local().outbox_path(&broken).connect().await);
        assert!(
            err.contains("tables do not match") && err.contains(what),
            "{change}: {err}"
        );
        assert!(err.contains("move it aside"), "{err}");
        let err = OutboxFile::open_read_only(&broken).unwrap_err().to_string();
        assert!(err.contains(what), "{change}: {err}");
        assert_eq!(std::fs::read(&broken).unwrap(), before, "never changed");
        std::fs::remove_file(&broken).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_view_reads_while_a_bus_publishes_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let bus = local(&path).await;
    let _sub = bus.broker().subscribe("live.>", None).await.unwrap();
    let max = bus.broker().max_payload();
    let file = OutboxFile::open_read_only(&path).unwrap();
    const N: usize = 3000;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let m = if i % 300 == 0 {
                    RawMessage::new("live.big", vec![b'x'; max + 1])
                } else {
                    RawMessage::new("live.ok", format!("{i}"))
                };
                bus.publish_raw(m).await.unwrap();
            }
        })
    };
    // Read, on another thread, while the bus writes: every read succeeds and is consistent.
    let reader = tokio::task::spawn_blocking(move || {
        let mut reads = 0;
        let mut dead_seen = 0;
        while reads < 50 || dead_seen < 10 {
            let stats = file.stats().unwrap();
            assert!(stats.depth <= N as u64, "{stats:?}");
            assert!(
                stats.dead_letters >= dead_seen,
                "dead letters never go away by themselves"
            );
            dead_seen = stats.dead_letters;
            let page = file.queued(50, None).unwrap();
            assert!(page.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
            assert!(page.iter().all(|m| m.decode_error.is_none()));
            assert!(file.dead_letters().unwrap().len() as u64 >= dead_seen);
            reads += 1;
            assert!(reads < 100_000, "the dead letters never showed up");
        }
        file
    });
    publisher.await.unwrap();
    let file = tokio::time::timeout(GUARD, reader).await.unwrap().unwrap();
    flush(&bus, GUARD).await;
    // The bus's own stats run after the writer has recorded the confirmation in the file.
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
    let stats = file.stats().unwrap();
    assert_eq!(
        (stats.depth, stats.oldest_age, stats.dead_letters),
        (0, None, 10)
    );
    assert_eq!(stats.schema_version, 4);
    assert!(stats.file_size > 0);
    let from_file = file.dead_letters().unwrap();
    assert_eq!(
        from_file,
        bus.dead_letters().list().await.unwrap(),
        "the same as the bus sees"
    );
    assert_eq!(
        file.dead_letter(from_file[3].id).unwrap().as_ref(),
        Some(&from_file[3])
    );
    assert_eq!(file.dead_letter(i64::MAX).unwrap(), None);
    // A replay through the bus shows in the file at once.
    bus.dead_letters().replay(from_file[0].id).await.unwrap();
    assert_eq!(file.dead_letter(from_file[0].id).unwrap(), None);
}

#[tokio::test]
async fn the_read_only_view_pages_the_queue_and_never_takes_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let first = down(&path).await;
    let mut sent = Vec::new();
    for i in 0..250 {
        let mut h = Headers::new();
        h.append("X-Seq", format!("{i} ✓"));
        let m = RawMessage::new(format!("page.{i}"), format!("{i}")).with_headers(h);
        first.publish_raw(m.clone()).await.unwrap();
        sent.push(m);
    }
    let file = OutboxFile::open_read_only(&path).unwrap();
    let stats = file.stats().unwrap();
    assert_eq!(stats.depth, 250);
    assert!(stats.oldest_age.is_some());
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = file.queued(100, after).unwrap();
        assert!(page.len() <= 100);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        got.extend(page);
    }
    assert_eq!(got.len(), 250);
    for (m, want) in got.iter().zip(&sent) {
        assert_eq!(m.subject, want.subject);
        assert_eq!(m.headers.get("X-Seq"), want.headers.get("X-Seq"));
        assert!(m.headers.get(MSG_ID).is_some(), "stamped by the bus");
        assert_eq!(m.payload, want.payload);
        assert_eq!((m.attempts, &m.last_error), (0, &None));
    }
    // The reader holds the file open, yet the lock is free: another Bus takes the file over.
    drop(first);
    let second = local(&path).await;
    flush(&second, GUARD).await;
    // The bus's own stats run after the writer has recorded the confirmation in the file.
    assert_eq!(second.outbox_stats().await.unwrap().unwrap().depth, 0);
    assert_eq!(file.stats().unwrap().depth, 0);
}

#[tokio::test]
async fn the_read_only_view_opens_a_file_no_one_holds_even_in_a_read_only_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("ro");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("o.db");
    {
        let bus = down(&path).await;
        for i in 0..3 {
            bus.publish_raw(RawMessage::new("ro.x", format!("{i}")))
                .await
                .unwrap();
        }
    }
    let side = |suffix: &str| sub.join(format!("o.db{suffix}"));
    assert!(
        !side("-wal").exists() && !side("-shm").exists(),
        "a clean close removes them"
    );
    // Without -wal and -shm SQLite creates them beside the file (empty) and reads normally.
    let stats = OutboxFile::open_read_only(&path).unwrap().stats().unwrap();
    assert_eq!(stats.depth, 3);
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(side(s));
    }
    // Where they cannot be created, nothing can write the file either: it is read as it is.
    let _ro = ReadOnlyDir::new(&sub);
    assert!(
        std::fs::write(sub.join("probe"), b"").is_err(),
        "the directory must be read-only"
    );
    let file = OutboxFile::open_read_only(&path).unwrap();
    let queued = file.queued(10, None).unwrap();
    assert_eq!(
        queued.iter().map(|m| text(&as_raw(m))).collect::<Vec<_>>(),
        ["0", "1", "2"]
    );
    assert_eq!(file.stats().unwrap().depth, 3);
    assert!(!side("-wal").exists() && !side("-shm").exists());
}

/// Makes a directory read-only until dropped: mode 0555, and as root (whom modes do not stop)
/// the immutable attribute as well.
struct ReadOnlyDir(std::path::PathBuf);

impl ReadOnlyDir {
    fn new(dir: &Path) -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(dir.join("probe"), b"").is_ok() {
            std::fs::remove_file(dir.join("probe")).unwrap();
            let out = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .output();
            assert!(
                out.as_ref().is_ok_and(|o| o.status.success()),
                "running as root, the test needs `chattr +i` (e2fsprogs, CAP_LINUX_IMMUTABLE) to \
                 make a directory read-only; run the tests as a normal user instead: {out:?}"
            );
        }
        ReadOnlyDir(dir.to_path_buf())
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .output();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_row_that_cannot_be_decoded_is_dead_lettered_and_the_next_rows_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    {
        let bus = down(&path).await;
        for i in 0..5 {
            let mut h = Headers::new();
            // A name NATS can carry (ASCII); the UTF-8 cut below is written into the file by hand.
            h.append("X-Region", "ok");
            bus.publish_raw(RawMessage::new("cut.x", format!("{i}")).with_headers(h))
                .await
                .unwrap();
        }
    }
    // Row 3's header name ends in the middle of a `é` (C3 A9): the bytes of a name cut short,
    // as the v2 encoding could produce (a disk error or another writer may too).
    let cut: Vec<u8> = b"[[\"X-R\xc3"
        .to_vec()
        .into_iter()
        .chain(*b"\",\"ok\"]]")
        .collect();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let n = c
            .execute(
                "UPDATE outbox SET headers = CAST(?1 AS TEXT) WHERE id = 3",
                [&cut],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let file = OutboxFile::open_read_only(&path).unwrap();
    let bad = &file.queued(10, Some(2)).unwrap()[0];
    assert!(
        bad.decode_error
            .as_deref()
            .unwrap_or("")
            .contains("not valid UTF-8"),
        "{bad:?}"
    );

    let bus = local(&path).await;
    let mut sub = bus.broker().subscribe("cut.>", None).await.unwrap();
    flush(&bus, GUARD).await;
    let got: Vec<String> = drain(&mut sub, 5).await.iter().map(text).collect();
    assert_eq!(got, ["0", "1", "3", "4"], "the queue went on past it");
    let dead = bus.dead_letters().list().await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.queue_id, d.attempts, d.origin.as_str()),
        (Some(3), 0, "outbox")
    );
    assert_eq!((d.subject.as_str(), &d.payload[..]), ("cut.x", &b"2"[..]));
    assert!(
        d.last_error
            .contains("cannot be decoded: headers are not valid UTF-8"),
        "{}",
        d.last_error
    );
    // The dead letter keeps the raw bytes.
    let raw: Vec<u8> = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT CAST(headers AS BLOB) FROM dead_letters", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(raw, cut);
    assert_eq!(bus.outbox_stats().await.unwrap().unwrap().depth, 0);
}

#[tokio::test]
async fn the_retry_policy_of_the_builder_decides_when_a_message_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .local()
        .outbox_path(dir.path().join("o.db"))
        .outbox_retry(RetryPolicy::default().max_attempts(1))
        .connect()
        .await
        .unwrap();
    let max = bus.broker().max_payload();
    bus.publish_raw(RawMessage::new("dl.big", vec![0u8; max + 1]))
        .await
        .unwrap();
    flush(&bus, GUARD).await;
    let dead = bus.dead_letters().list().await.unwrap();
    assert_eq!(dead.iter().map(|d| d.attempts).collect::<Vec<_>>(), [1]);
}

/// On `bus::testing`'s harness (an outbox in a temporary directory, a recording broker): a lost
/// confirmation sends the batch again with the same msg id, and while the broker is
/// disconnected the outbox holds the message, then drains it; `wait_idle` instead of a flush
/// and a collection timeout.
#[tokio::test]
async fn lost_confirmations_and_a_disconnect_on_the_harness() {
    let t = bus::testing::TestBus::builder()
        .outbox()
        .start()
        .await
        .unwrap();
    let _handler = t
        .bus()
        .handle(Step::filter(), |_s| async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    t.broker().fail_confirms(1);
    let step = |seq| Step {
        agent: "a".into(),
        seq,
    };
    step(1).publish(t.bus()).await.unwrap();
    t.wait_idle().await;
    let sent = t.published::<Step>();
    assert_eq!(sent.len(), 2, "sent again after the lost confirmation");
    assert_eq!(sent[0].record.msg_id, sent[1].record.msg_id);
    assert_eq!(t.consumed::<Step>().len(), 2);

    t.broker().disconnect();
    step(2).publish(t.bus()).await.unwrap();
    let busy = t
        .try_wait_idle(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(busy.outbox_queued, 1);
    t.broker().reconnect();
    t.wait_idle().await;
    assert_eq!(t.published::<Step>().last().unwrap().seq, 2);
    assert!(t.dead_letters().await.unwrap().is_empty());
}
