//! Operator requests: replays and purges of dead letters asked through the outbox file itself,
//! and run by the process that holds it ([`OperatorRequests`] says how a tool asks).
//!
//! A tool must not open the outbox as its owner while a service holds it (the file is locked,
//! and a second drainer would send the queue twice), so it writes a row and waits for its
//! `done_at`. The owner's writer thread polls every [`POLL`] (one indexed `SELECT`, no write
//! lock when there is nothing to do), busy or idle, and runs the rows with the code of
//! [`DeadLetters`](crate::DeadLetters) (`Store::with_replays`: same SQL, the drainer told),
//! marking each done with its outcome in the same transaction: run exactly once, a crash leaves
//! it pending for the next owner, and a row the tool withdraws (deletes) before that transaction
//! starts is never run. With no owner, the tool may run them itself
//! ([`OperatorRequests::run_unowned`]: the outbox opened as its owner, without a drainer).
//!
//! Why this table needs no schema version of its own: it is an addition that no existing query
//! reads, and `schema::check` only compares the queue tables, so a build without this
//! module opens a file that has it (and `OutboxFile` reads it) unchanged. A version bump would
//! make every older build refuse a file that a newer tool had only asked something of. Such an
//! older owner never creates the table, which is how a tool tells it apart
//! ([`OperatorRequests::created_table`]) instead of waiting for an answer that cannot come.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::io::sql_err;
use super::request_rows::{request, OperatorRequest, RequestOp, COLUMNS};
use super::request_runner::{process, CHUNK};
use super::schema::{self, REQUESTS};
use super::store::{Durability, Store};
use crate::clock::now_ms;
use crate::error::{Error, Result};

/// How long a tool's connection waits for the owner's write transaction to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the process that holds an outbox file to replay or purge dead letters, through the
/// file (table `operator_requests`), without stopping it and without a second drainer.
///
/// It writes through an ordinary SQLite connection beside the owner's (WAL mode allows it; it
/// waits up to 5 s for the owner's transactions) and never takes the file's `.lock`. The owner
/// (a `Bus` of this version with the outbox open) looks for pending requests every 500 ms and
/// runs each exactly once, in order; [`requests`](OperatorRequests::requests) shows what it
/// did. Requests nobody ran are run by the next `Bus` that opens the file. The calls are
/// blocking (SQLite is).
///
/// ```no_run
/// # fn run() -> Result<(), bus::Error> {
/// use bus::outbox::{OperatorRequests, RequestOp};
///
/// let mut requests = OperatorRequests::open("/var/lib/billing/bus-outbox.sqlite3")?;
/// let ids = requests.submit(RequestOp::Replay, &[7, 8])?;
/// loop {
///     let rows = requests.requests(ids.clone())?;
///     if rows.iter().all(|r| r.outcome.is_some()) {
///         for r in rows {
///             eprintln!("{} of dead letter {}: {:?}", r.op, r.dead_letter_id, r.outcome);
///         }
///         break;
///     }
///     std::thread::sleep(std::time::Duration::from_millis(100));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OperatorRequests {
    conn: Connection,
    path: PathBuf,
    created_table: bool,
}

impl OperatorRequests {
    /// Opens the outbox file at `path` to write requests into it (creating the table if it is
    /// missing). Fails with [`Error::Outbox`] if there is no such file, if it is not a
    /// version-3 outbox, or if this process cannot write to it (the file and its `-wal`/`-shm`
    /// must be writable: run as the service's user).
    pub fn open(path: impl AsRef<Path>) -> Result<OperatorRequests> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::outbox(
                path,
                "no outbox file here; give the path of the outbox file (its outbox_path)",
                None,
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, "cannot open the outbox file for writing", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_err(path, "cannot configure the connection", e))?;
        if conn
            .is_readonly(rusqlite::DatabaseName::Main)
            .unwrap_or(false)
        {
            return Err(Error::outbox(
                path,
                "the outbox file is not writable by this process; replay and purge write a \
                 request into it: run as the user of the service that owns it",
                None,
            ));
        }
        schema::check_current(&conn, path, "and only then can requests be written into it")?;
        let exists = schema::has_table(&conn, "operator_requests")
            .map_err(|e| sql_err(path, "cannot read the outbox schema", e))?;
        if !exists {
            conn.execute_batch(REQUESTS)
                .map_err(|e| sql_err(path, "cannot create the operator requests table", e))?;
        }
        Ok(OperatorRequests {
            conn,
            path: path.to_path_buf(),
            created_table: !exists,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the table was missing, so that [`open`](OperatorRequests::open) created it. A
    /// `Bus` of this version creates it when it opens the file: a file that a process holds
    /// and that lacked the table is held by an older bus, which never runs requests.
    pub fn created_table(&self) -> bool {
        self.created_table
    }

    /// Writes one request per dead letter, in one transaction; returns their ids (consecutive).
    /// Fails with [`Error::Config`] if `dead_letter_ids` is empty.
    pub fn submit(
        &mut self,
        op: RequestOp,
        dead_letter_ids: &[i64],
    ) -> Result<RangeInclusive<i64>> {
        if dead_letter_ids.is_empty() {
            return Err(Error::Config("no dead letter id to ask for".into()));
        }
        let path = self.path.clone();
        let mut run = || -> rusqlite::Result<RangeInclusive<i64>> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            let (mut first, mut last) = (None, 0);
            {
                let mut insert = tx.prepare(
                    "INSERT INTO operator_requests (op, dead_letter_id, requested_at)
                     VALUES (?1, ?2, ?3)",
                )?;
                for id in dead_letter_ids {
                    insert.execute(params![op.as_str(), id, now])?;
                    last = tx.last_insert_rowid();
                    first.get_or_insert(last);
                }
            }
            tx.commit()?;
            Ok(first.unwrap_or(last)..=last)
        };
        run().map_err(|e| sql_err(&path, "cannot write the request into the outbox file", e))
    }

    /// The requests with ids in `ids`, oldest first.
    pub fn requests(&self, ids: RangeInclusive<i64>) -> Result<Vec<OperatorRequest>> {
        let range = [*ids.start(), *ids.end()];
        self.select("WHERE id BETWEEN ?1 AND ?2 ORDER BY id", range)
    }

    /// How many of the requests with ids in `ids` the owner has run.
    pub fn done_count(&self, ids: RangeInclusive<i64>) -> Result<u64> {
        self.conn
            .prepare_cached(
                "SELECT count(*) FROM operator_requests
                  WHERE id BETWEEN ?1 AND ?2 AND done_at IS NOT NULL",
            )
            .and_then(|mut s| s.query_row([*ids.start(), *ids.end()], |r| r.get(0)))
            .map_err(|e| sql_err(&self.path, "cannot read the operator requests", e))
    }

    /// The latest `limit` requests, newest first (answered ones are kept for 7 days).
    pub fn recent(&self, limit: usize) -> Result<Vec<OperatorRequest>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.select("ORDER BY id DESC LIMIT ?1", [limit])
    }

    /// The requests that `tail` (what follows [`COLUMNS`]) selects.
    fn select(&self, tail: &str, params: impl rusqlite::Params) -> Result<Vec<OperatorRequest>> {
        self.conn
            .prepare_cached(&format!("{COLUMNS} {tail}"))
            .and_then(|mut stmt| stmt.query_map(params, request)?.collect())
            .map_err(|e| sql_err(&self.path, "cannot read the operator requests", e))
    }

    /// Deletes the requests with ids in `ids` that the owner has not run yet; returns how many.
    /// Each request is either run or withdrawn, never both (the owner reads them inside its
    /// transaction).
    pub fn withdraw(&mut self, ids: RangeInclusive<i64>) -> Result<u64> {
        self.conn
            .execute(
                "DELETE FROM operator_requests
                  WHERE id BETWEEN ?1 AND ?2 AND done_at IS NULL",
                [*ids.start(), *ids.end()],
            )
            .map(|n| n as u64)
            .map_err(|e| sql_err(&self.path, "cannot withdraw the operator requests", e))
    }

    /// For tools beside a service (the `bus` CLI): when no process holds the file, runs every
    /// pending request here, as its owner would, and returns how many (`None`: a process holds
    /// the file; its owner runs them). Opens the outbox like a `Bus` does (the lock, the
    /// checks, a migration) but starts no drainer: replayed messages are sent by the next `Bus`
    /// on the file. A `Bus` that tries to open the file meanwhile fails as for any other holder.
    ///
    /// ```no_run
    /// use bus::outbox::{OperatorRequests, RequestOp};
    /// # fn run() -> Result<(), bus::Error> {
    /// let path = "var/bus-outbox.sqlite3";
    /// let mut requests = OperatorRequests::open(path)?;
    /// requests.submit(RequestOp::Replay, &[7])?;
    /// match OperatorRequests::run_unowned(path)? {
    ///     Some(n) => println!("no service holds the file: ran {n} request(s) here"),
    ///     None => println!("the service that holds the file runs it"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn run_unowned(path: impl AsRef<Path>) -> Result<Option<usize>> {
        let path = path.as_ref();
        let Some(mut store) = Store::try_open(path, Durability::PowerLoss)? else {
            return Ok(None);
        };
        let mut ran = 0;
        loop {
            let done = process(&mut store, CHUNK)
                .map_err(|e| sql_err(path, "cannot run the operator requests", e))?;
            ran += done.ran();
            if !done.more {
                return Ok(Some(ran));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;

    use std::time::Instant;

    use super::*;
    use crate::headers::MSG_ID;
    use crate::local::LocalBroker;
    use crate::outbox::{read, Outbox, OutboxOptions, RequestOutcome};

    /// A new outbox file with dead letters `1..=n` (subject `dl.<i>`, msg id `m<i>`), not held.
    fn file_with_dead_letters(dir: &Path, n: i64) -> PathBuf {
        let path = dir.join("o.db");
        let store = Store::open(&path, Durability::ProcessCrash).unwrap();
        for i in 1..=n {
            store
                .conn
                .execute(
                    "INSERT INTO dead_letters (origin, msg_id, subject, headers, payload,
                       created_at, attempts, last_error, failed_at)
                     VALUES ('outbox', ?2, ?3, ?4, ?5, 0, 3, 'too big', 0)",
                    params![
                        i,
                        format!("m{i}"),
                        format!("dl.{i}"),
                        format!("[[\"Nats-Msg-Id\",\"m{i}\"]]"),
                        format!("payload {i}").into_bytes()
                    ],
                )
                .unwrap();
        }
        path
    }

    fn outcomes(requests: &OperatorRequests, ids: RangeInclusive<i64>) -> Vec<RequestOutcome> {
        requests
            .requests(ids)
            .unwrap()
            .into_iter()
            .map(|r| r.outcome.expect("still pending"))
            .collect()
    }

    #[test]
    fn requests_run_once_in_order_with_their_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_dead_letters(dir.path(), 3);
        let mut requests = OperatorRequests::open(&path).unwrap();
        assert!(
            !requests.created_table(),
            "a Bus of this version creates the table"
        );
        let replays = requests.submit(RequestOp::Replay, &[1, 2, 9]).unwrap();
        let purges = requests.submit(RequestOp::Purge, &[3, 2]).unwrap();
        assert_eq!(*purges.start(), replays.end() + 1);
        assert_eq!(
            requests
                .done_count(*replays.start()..=*purges.end())
                .unwrap(),
            0
        );

        assert_eq!(OperatorRequests::run_unowned(&path).unwrap(), Some(5));
        assert_eq!(
            outcomes(&requests, replays),
            [
                RequestOutcome::Replayed { queue_id: 1 },
                RequestOutcome::Replayed { queue_id: 2 },
                RequestOutcome::NotFound,
            ]
        );
        // Dead letter 2 was replayed by the earlier request: its purge finds nothing.
        assert_eq!(
            outcomes(&requests, purges),
            [RequestOutcome::Purged, RequestOutcome::NotFound]
        );
        // Run once: nothing is pending any more.
        assert_eq!(OperatorRequests::run_unowned(&path).unwrap(), Some(0));

        let store = Store::open(&path, Durability::ProcessCrash).unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 0);
        let queued = read::queued(&store.conn, 0, 10).unwrap();
        assert_eq!(
            queued
                .iter()
                .map(|m| (m.id, m.subject.as_str(), m.headers.get(MSG_ID), m.attempts))
                .collect::<Vec<_>>(),
            [(1, "dl.1", Some("m1"), 0), (2, "dl.2", Some("m2"), 0)]
        );
        assert_eq!(store.watermarks().unwrap().committed, 2);
    }

    #[test]
    fn withdrawn_unknown_and_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_dead_letters(dir.path(), 2);
        let mut requests = OperatorRequests::open(&path).unwrap();
        let withdrawn = requests.submit(RequestOp::Purge, &[1]).unwrap();
        assert_eq!(requests.withdraw(withdrawn.clone()).unwrap(), 1);
        // A newer tool's operation, and a value no tool writes.
        requests
            .conn
            .execute_batch(
                "INSERT INTO operator_requests (op, dead_letter_id, requested_at)
                   VALUES ('requeue', 2, 0), ('replay', 'x', 0)",
            )
            .unwrap();
        let last = requests.conn.last_insert_rowid();

        // Held (by a Bus, here a Store in this process): not run here.
        let held = Store::open(&path, Durability::ProcessCrash).unwrap();
        assert_eq!(OperatorRequests::run_unowned(&path).unwrap(), None);
        drop(held);
        assert_eq!(OperatorRequests::run_unowned(&path).unwrap(), Some(2));

        assert!(requests.requests(withdrawn).unwrap().is_empty());
        let answered = outcomes(&requests, last - 1..=last);
        assert!(
            matches!(&answered[0], RequestOutcome::Refused(why) if why.contains("unknown operation \"requeue\"")),
            "{answered:?}"
        );
        assert!(
            matches!(&answered[1], RequestOutcome::Refused(why) if why.contains("not an integer")),
            "{answered:?}"
        );
        let store = Store::open(&path, Durability::ProcessCrash).unwrap();
        assert_eq!(store.dead_letter_count().unwrap(), 2, "nothing was purged");
        assert_eq!(requests.recent(1).unwrap()[0].id, last);
    }

    #[test]
    fn a_file_without_the_table_gets_it_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_dead_letters(dir.path(), 1);
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE operator_requests")
            .unwrap();
        let mut requests = OperatorRequests::open(&path).unwrap();
        assert!(requests.created_table());
        assert!(!OperatorRequests::open(&path).unwrap().created_table());
        assert!(matches!(
            requests.submit(RequestOp::Replay, &[]),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn only_outbox_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let missing = OperatorRequests::open(dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("no outbox file"), "{missing}");
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = OperatorRequests::open(&other).unwrap_err();
        assert!(err.to_string().contains("not a bus outbox"), "{err}");
    }

    /// The owner's writer thread picks a request up while the outbox is open and draining, and
    /// the replayed message is delivered with its msg id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_owner_picks_requests_up_and_drains_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_dead_letters(dir.path(), 2);
        let broker = Arc::new(LocalBroker::new());
        let mut sub = crate::Broker::subscribe(&*broker, "dl.>", None)
            .await
            .unwrap();
        let outbox = Outbox::open(path.clone(), OutboxOptions::default(), broker)
            .await
            .unwrap();
        let ids = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                let mut requests = OperatorRequests::open(&path).unwrap();
                let ids = requests.submit(RequestOp::Replay, &[2]).unwrap();
                let started = Instant::now();
                while requests.done_count(ids.clone()).unwrap() == 0 {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "never picked up"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                outcomes(&requests, ids)
            }
        })
        .await
        .unwrap();
        assert_eq!(ids, [RequestOutcome::Replayed { queue_id: 1 }]);
        let got = tokio::time::timeout(Duration::from_secs(10), sub.messages.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.subject, "dl.2");
        assert_eq!(got.headers.get(MSG_ID), Some("m2"));
        outbox.flush().await.unwrap();
        assert_eq!(outbox.dead_letters().count().await.unwrap(), 1);
        assert_eq!(outbox.stats().await.unwrap().depth, 0);
    }
}
