//! `bus outbox` and `bus dead-letters`: an outbox file, read while its service runs, and
//! replay and purge carried out by the process that holds it.
//!
//! Reading goes through [`OutboxFile`] (read-only, no lock). Replay and purge never open the
//! file as its owner while a service holds it (that would be a second drainer): they write one
//! request per dead letter into the file ([`OperatorRequests`]) and wait until the owner's
//! writer has run them (it looks every 500 ms). When no process holds the file, the command
//! runs the requests itself, under the file's lock, without sending anything: the replayed
//! messages go out when the service next opens the file.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::{Duration, Instant};

use bus::outbox::{OperatorRequests, OutboxFile, QueuedMessage, RequestOp, RequestOutcome};
use bus::{DeadLetter, Headers};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::cli::{ChangeArgs, DeadLettersCommand, OutboxCommand};
use crate::out::{self, Failure, Outcome, Table};
use crate::value::{hex, Payload};

/// How often the command looks whether the owner has answered.
const POLL: Duration = Duration::from_millis(100);

/// `bus outbox ...`
pub fn outbox(command: OutboxCommand, json: bool) -> Outcome {
    match command {
        OutboxCommand::Stats { file } => stats(&file, json),
        OutboxCommand::List { file, limit, after } => list_queue(&file, limit, after, json),
    }
}

/// `bus dead-letters ...`
pub fn dead_letters(command: DeadLettersCommand, json: bool) -> Outcome {
    match command {
        DeadLettersCommand::List { file } => list_dead(&file, json),
        DeadLettersCommand::Show { id, file } => show(&file, id, json),
        DeadLettersCommand::Replay(args) => change(RequestOp::Replay, args, json),
        DeadLettersCommand::Purge(args) => change(RequestOp::Purge, args, json),
    }
}

fn stats(file: &Path, json: bool) -> Outcome {
    let stats = OutboxFile::open_read_only(file)?.stats()?;
    if json {
        out::json(&json!({
            "file": file,
            "schema_version": stats.schema_version,
            "depth": stats.depth,
            "oldest_age_ms": stats.oldest_age.map(|d| d.as_millis() as u64),
            "dead_letters": stats.dead_letters,
            "file_size": stats.file_size,
            "inbox": stats.inbox,
            "scheduled": stats.scheduled,
            "next_due_ms": stats.next_due.map(out::unix_ms),
        }));
    } else {
        out::fields(&[
            ("file", file.display().to_string()),
            ("schema", stats.schema_version.to_string()),
            ("queued", stats.depth.to_string()),
            ("oldest", stats.oldest_age.map_or("-".into(), out::duration)),
            ("dead letters", stats.dead_letters.to_string()),
            ("scheduled", stats.scheduled.to_string()),
            (
                "next due",
                stats.next_due.map_or("-".into(), |t| {
                    format!("{} ({})", out::utc(t), out::until(t))
                }),
            ),
            ("size on disk", out::bytes(stats.file_size)),
            ("inbox", stats.inbox.to_string()),
        ]);
    }
    Ok(())
}

/// The queue, oldest first, then (on the first page) the messages published for later that are
/// not due yet, soonest first, with their due time: they join the end of the queue when due.
fn list_queue(file: &Path, limit: usize, after: Option<i64>, json: bool) -> Outcome {
    let outbox = OutboxFile::open_read_only(file)?;
    let rows = outbox.queued(limit, after)?;
    let scheduled = match after {
        None => outbox.scheduled(limit, None)?,
        Some(_) => Vec::new(),
    };
    if json {
        let all = rows.iter().chain(&scheduled).map(queued_json).collect();
        out::json(&Value::Array(all));
        return Ok(());
    }
    if rows.is_empty() {
        out::note(format!("nothing queued in {}", file.display()));
    } else {
        let mut table = Table::new(&["ID", "AGE", "ATTEMPTS", "SUBJECT", "LAST ERROR", "PAYLOAD"]);
        for m in &rows {
            table.row(vec![
                m.id.to_string(),
                out::ago(m.created_at).trim_end_matches(" ago").to_string(),
                m.attempts.to_string(),
                m.subject.clone(),
                out::cut(
                    m.decode_error
                        .as_deref()
                        .or(m.last_error.as_deref())
                        .unwrap_or("-"),
                    40,
                ),
                out::cut(&preview(&m.payload), 72),
            ]);
        }
        table.print();
        if rows.len() == limit {
            out::note(format!(
                "(first {limit}; more with --after {})",
                rows.last().map_or(0, |m| m.id)
            ));
        }
    }
    if !scheduled.is_empty() {
        out::note("scheduled (published for later, not due yet; they join the queue when due):");
        let mut table = Table::new(&["SCHEDULED", "DUE", "SUBJECT", "PAYLOAD"]);
        for m in &scheduled {
            let due = m.due_at.unwrap_or(m.created_at);
            table.row(vec![
                m.id.to_string(),
                format!("{} ({})", out::utc(due), out::until(due)),
                m.subject.clone(),
                out::cut(&preview(&m.payload), 72),
            ]);
        }
        table.print();
        if scheduled.len() == limit {
            out::note(format!(
                "(the first {limit} due; `bus outbox stats` counts them all)"
            ));
        }
    }
    Ok(())
}

fn list_dead(file: &Path, json: bool) -> Outcome {
    let letters = OutboxFile::open_read_only(file)?.dead_letters()?;
    if json {
        out::json(&Value::Array(letters.iter().map(dead_json).collect()));
        return Ok(());
    }
    if letters.is_empty() {
        out::note(format!("no dead letters in {}", file.display()));
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID",
        "ORIGIN",
        "SUBJECT",
        "ATTEMPTS",
        "FAILED",
        "LAST ERROR",
    ]);
    for dl in &letters {
        table.row(vec![
            dl.id.to_string(),
            dl.origin.clone(),
            dl.subject.clone(),
            dl.attempts.to_string(),
            out::ago(dl.failed_at),
            out::cut(&dl.last_error, 60),
        ]);
    }
    table.print();
    Ok(())
}

fn show(file: &Path, id: i64, json: bool) -> Outcome {
    let Some(dl) = OutboxFile::open_read_only(file)?.dead_letter(id)? else {
        return Err(Failure::Failed(format!(
            "no dead letter {id} in {} (`bus dead-letters list` shows them)",
            file.display()
        )));
    };
    if json {
        out::json(&dead_json(&dl));
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    out::fields(&[
        ("id", dl.id.to_string()),
        ("origin", dl.origin.clone()),
        ("subject", dl.subject.clone()),
        ("reply", opt(dl.reply.clone())),
        ("queue id", opt(dl.queue_id.map(|q| q.to_string()))),
        ("attempts", dl.attempts.to_string()),
        (
            "created",
            format!("{} ({})", out::utc(dl.created_at), out::ago(dl.created_at)),
        ),
        (
            "failed",
            format!("{} ({})", out::utc(dl.failed_at), out::ago(dl.failed_at)),
        ),
        ("last error", dl.last_error.clone()),
    ]);
    print_headers_and_payload(&dl.headers, &dl.payload);
    Ok(())
}

/// A payload on one line: compact JSON, or its size when it is not MessagePack.
fn preview(payload: &[u8]) -> String {
    match Payload::decode(payload) {
        Payload::Json(v) => v.to_string(),
        Payload::Empty => "(empty)".into(),
        Payload::Undecodable(_) => format!("({} bytes, not MessagePack)", payload.len()),
    }
}

/// Headers, then the payload pretty-printed (or as hex), for one message shown in full.
pub fn print_headers_and_payload(headers: &Headers, payload: &[u8]) {
    out::line("headers");
    if headers.is_empty() {
        out::line("  (none)");
    }
    for (name, value) in headers.iter() {
        out::line(format!("  {name}: {value}"));
    }
    match Payload::decode(payload) {
        Payload::Json(v) => {
            out::line(format!("payload ({} bytes, MessagePack)", payload.len()));
            out::line(serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Payload::Empty => out::line("payload (empty)"),
        Payload::Undecodable(why) => {
            out::line(format!("payload ({} bytes, {why}), hex:", payload.len()));
            out::line(hex(payload));
        }
    }
}

/// Headers as a JSON object; a name sent more than once has its values joined by `, `.
pub fn headers_json(headers: &Headers) -> Value {
    let mut m = Map::new();
    for (name, value) in headers.iter() {
        match m.get_mut(name) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(value);
            }
            _ => {
                m.insert(name.to_string(), Value::String(value.to_string()));
            }
        }
    }
    Value::Object(m)
}

fn message_json(
    subject: &str,
    reply: Option<&str>,
    headers: &Headers,
    payload: &[u8],
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("subject".into(), subject.into());
    m.insert("reply".into(), reply.map_or(Value::Null, Value::from));
    m.insert("headers".into(), headers_json(headers));
    m.insert("size".into(), payload.len().into());
    Payload::decode(payload).json_fields(payload, &mut m);
    m
}

fn queued_json(q: &QueuedMessage) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), q.id.into());
    m.extend(message_json(
        &q.subject,
        q.reply.as_deref(),
        &q.headers,
        &q.payload,
    ));
    m.insert("created_at_ms".into(), out::unix_ms(q.created_at).into());
    m.insert("attempts".into(), q.attempts.into());
    m.insert("last_error".into(), q.last_error.clone().into());
    m.insert("decode_error".into(), q.decode_error.clone().into());
    // Set for a message published for later, not due yet (its id is then its schedule id).
    m.insert("due_at_ms".into(), q.due_at.map(out::unix_ms).into());
    Value::Object(m)
}

fn dead_json(dl: &DeadLetter) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), dl.id.into());
    m.insert("origin".into(), dl.origin.clone().into());
    m.insert("queue_id".into(), dl.queue_id.into());
    m.extend(message_json(
        &dl.subject,
        dl.reply.as_deref(),
        &dl.headers,
        &dl.payload,
    ));
    m.insert("attempts".into(), dl.attempts.into());
    m.insert("last_error".into(), dl.last_error.clone().into());
    m.insert("created_at_ms".into(), out::unix_ms(dl.created_at).into());
    m.insert("failed_at_ms".into(), out::unix_ms(dl.failed_at).into());
    Value::Object(m)
}

/// Who ran the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RanBy {
    /// The process that holds the file.
    Owner,
    /// This command, under the file's lock (no process held it).
    Here,
}

/// `replay` and `purge`.
fn change(op: RequestOp, args: ChangeArgs, json: bool) -> Outcome {
    let file = args.file.as_path();
    let ids = if args.all {
        let all: Vec<i64> = OutboxFile::open_read_only(file)?
            .dead_letters()?
            .iter()
            .map(|d| d.id)
            .collect();
        if all.is_empty() {
            if json {
                out::json(&json!({"file": file, "ran_by": null, "requests": []}));
            } else {
                out::note(format!("no dead letters in {}", file.display()));
            }
            return Ok(());
        }
        all
    } else {
        args.ids.clone()
    };
    let mut requests = OperatorRequests::open(file)?;
    let range = requests.submit(op, &ids)?;
    let ran_by = match OperatorRequests::run_unowned(file)? {
        Some(_) => RanBy::Here,
        None if requests.created_table() => {
            // The holder opened the file without creating the table: a bus that predates
            // operator requests, which will never run them.
            requests.withdraw(range)?;
            return Err(Failure::Failed(format!(
                "the process that holds {} is a bus too old to carry out requests from the \
                 file; nothing was changed. Upgrade it, or stop it and run this again (the \
                 command then does it itself)",
                file.display()
            )));
        }
        None => {
            wait_for_owner(&mut requests, range.clone(), args.timeout, op, json)?;
            RanBy::Owner
        }
    };
    report(&requests, range, ran_by, op, json)
}

/// Waits until every request in `range` is answered, with a progress bar on a terminal;
/// withdraws what is left at the timeout.
fn wait_for_owner(
    requests: &mut OperatorRequests,
    range: RangeInclusive<i64>,
    timeout: Duration,
    op: RequestOp,
    json: bool,
) -> Outcome {
    let total = (range.end() - range.start() + 1) as u64;
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!(
        "{} by the process that holds the file",
        match op {
            RequestOp::Replay => "replaying",
            _ => "purging",
        }
    ));
    let started = Instant::now();
    loop {
        let done = requests.done_count(range.clone())?;
        bar.set_position(done);
        if done == total {
            bar.finish_and_clear();
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            let withdrawn = requests.withdraw(range.clone())?;
            let done = requests.done_count(range)?;
            return Err(Failure::Failed(format!(
                "the process that holds {} did not carry out the request within {}: {done} of \
                 {total} done, {withdrawn} withdrawn (never run). Is it stuck (its writer \
                 busy, the disk full)? Check its logs, give more time with --timeout, or stop \
                 it and run this again (the command then does it itself)",
                requests.path().display(),
                out::duration(timeout),
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn outcome_text(o: Option<&RequestOutcome>) -> (String, Option<i64>) {
    match o {
        Some(RequestOutcome::Replayed { queue_id }) => ("replayed".into(), Some(*queue_id)),
        Some(RequestOutcome::Purged) => ("purged".into(), None),
        Some(RequestOutcome::NotFound) => ("not found".into(), None),
        Some(RequestOutcome::Refused(why)) => (why.clone(), None),
        Some(other) => (format!("{other:?}"), None),
        None => ("pending".into(), None),
    }
}

fn report(
    requests: &OperatorRequests,
    range: RangeInclusive<i64>,
    ran_by: RanBy,
    op: RequestOp,
    json: bool,
) -> Outcome {
    let rows = requests.requests(range)?;
    let file = requests.path();
    let wanted = match op {
        RequestOp::Replay => "replayed",
        _ => "purged",
    };
    let missed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (text, _) = outcome_text(r.outcome.as_ref());
            (text != wanted).then(|| format!("dead letter {}: {text}", r.dead_letter_id))
        })
        .collect();
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| {
                let (text, queue_id) = outcome_text(r.outcome.as_ref());
                json!({
                    "request_id": r.id,
                    "op": r.op,
                    "dead_letter_id": r.dead_letter_id,
                    "outcome": text,
                    "queue_id": queue_id,
                    "done_at_ms": r.done_at.map(out::unix_ms),
                })
            })
            .collect();
        out::json(&json!({
            "file": file,
            "ran_by": match ran_by { RanBy::Owner => "owner", RanBy::Here => "cli" },
            "requests": list,
        }));
    } else {
        let mut table = Table::new(&["DEAD LETTER", "OUTCOME", "QUEUE ID"]);
        for r in &rows {
            let (text, queue_id) = outcome_text(r.outcome.as_ref());
            table.row(vec![
                r.dead_letter_id.to_string(),
                text,
                queue_id.map_or("-".into(), |q| q.to_string()),
            ]);
        }
        table.print();
        let n = rows.len() - missed.len();
        match ran_by {
            RanBy::Owner => out::note(format!(
                "{wanted} {n} of {} by the process that holds {}{}",
                rows.len(),
                file.display(),
                if op == RequestOp::Replay && n > 0 {
                    "; it sends them now"
                } else {
                    ""
                }
            )),
            RanBy::Here => out::note(format!(
                "{wanted} {n} of {}: no process holds {}, so this command did it under the \
                 file's lock{}",
                rows.len(),
                file.display(),
                if op == RequestOp::Replay && n > 0 {
                    "; the messages are sent when the service next opens the file"
                } else {
                    ""
                }
            )),
        }
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "not everything was {wanted}: {}",
            missed.join("; ")
        )))
    }
}
