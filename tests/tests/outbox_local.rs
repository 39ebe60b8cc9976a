//! The outbox in front of the local broker (`Bus::builder().local().outbox_path(p)`): group
//! commit, FIFO, flush, restart, dead letters, stats, file mode, bad files, the lock.

use std::path::Path;
use std::time::Duration;

use bus::headers::MSG_ID;
use bus::{Bus, Error, Headers, Message, RawMessage, RawSubscription};
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
        // A NATS bus whose server does not exist: everything stays queued.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = Bus::builder()
            .nats([format!("nats://127.0.0.1:{port}")])
            .outbox_path(&path)
            .connect()
            .await
            .unwrap();
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
async fn without_an_outbox_there_are_no_dead_letters_or_stats() {
    let bus = Bus::local().await.unwrap();
    assert!(matches!(
        bus.dead_letters().count().await,
        Err(Error::NoOutbox)
    ));
    assert!(matches!(
        bus.dead_letters().replay(1).await,
        Err(Error::NoOutbox)
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
