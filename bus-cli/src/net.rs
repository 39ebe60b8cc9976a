//! The commands that talk to NATS: `tap`, `pub`, `req`, `health`.
//!
//! They connect through `bus` itself (a `Bus` without an outbox: what is published goes out
//! directly, confirmed by the server before the command exits) and use its raw broker API,
//! which carries headers both ways.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::{Bus, Headers, RawMessage};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::cli::{CatalogArgs, HealthArgs, PubArgs, ReqArgs, ServerArgs, TapArgs};
use crate::out::{self, Failure, Outcome, Table};
use crate::outbox::headers_json;
use crate::value::{encode_json, hex, Payload};

/// Connects with the options given; fails if no connection comes up within the timeout.
async fn connect(args: &ServerArgs) -> Result<Bus, Failure> {
    let mut b = Bus::builder()
        .nats(args.server.iter().map(|s| s.trim().to_string()))
        .no_outbox()
        .name("bus-cli")
        .connect_timeout(args.connect_timeout)
        .wait_for_connection(args.connect_timeout);
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        b = b.user_password(user, password);
    }
    if let Some(token) = &args.token {
        b = b.token(token);
    }
    if let Some(creds) = &args.creds {
        b = b.credentials_file(creds);
    }
    if let Some(nkey) = &args.nkey {
        // A seed, or a file holding one (as the `nats` CLI takes it).
        let seed = if std::path::Path::new(nkey).is_file() {
            std::fs::read_to_string(nkey).map_err(|e| {
                Failure::Failed(format!("cannot read the NKey seed file {nkey}: {e}"))
            })?
        } else {
            nkey.clone()
        };
        b = b.nkey(seed.trim());
    }
    if let Some(ca) = &args.tls_ca {
        b = b.tls_root_certificate(ca);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        b = b.tls_client_cert(cert, key);
    }
    b.connect()
        .await
        .map_err(|e| Failure::Failed(format!("cannot connect to {}: {e}", servers(args))))
}

/// The server URLs, comma-separated, as they may be shown: without a password or token.
fn servers(args: &ServerArgs) -> String {
    let shown: Vec<String> = args
        .server
        .iter()
        .map(|u| bus::redact_url(u.trim()))
        .collect();
    shown.join(",")
}

/// A JSON argument (`-`: stdin) as MessagePack.
fn payload_arg(text: &str) -> Result<Vec<u8>, Failure> {
    let text = if text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Failed(format!("cannot read the payload from stdin: {e}")))?;
        s
    } else {
        text.to_string()
    };
    encode_json(&text).map_err(Failure::Usage)
}

/// `--header Name=value` arguments, checked as NATS would.
fn header_args(args: &[String]) -> Result<Headers, Failure> {
    let mut h = Headers::new();
    for a in args {
        let Some((name, value)) = a.split_once('=') else {
            return Err(Failure::Usage(format!("header {a:?} is not NAME=VALUE")));
        };
        h.append(name.trim().to_string(), value.to_string());
    }
    h.check().map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(h)
}

/// A concrete subject, by the bus-subject grammar (no wildcards).
fn subject_arg(subject: &str) -> Result<(), Failure> {
    bus_subject::check_subject(subject)
        .map_err(|e| Failure::Usage(format!("invalid subject {subject:?}: {e}")))
}

/// `bus tap`
pub async fn tap(args: TapArgs, json: bool) -> Outcome {
    bus_subject::check_pattern(&args.pattern)
        .map_err(|e| Failure::Usage(format!("invalid pattern {:?}: {e}", args.pattern)))?;
    if args.count == Some(0) {
        return Ok(());
    }
    let bus = connect(&args.conn).await?;
    let broker = bus.broker();
    let mut sub = broker.subscribe(&args.pattern, None).await?;
    // The subscription is live once the server has processed it: a round trip proves it.
    broker.confirm().await?;
    out::note(format!(
        "listening on {} at {}",
        args.pattern,
        servers(&args.conn)
    ));
    let mut seen = 0u64;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            m = sub.messages.next() => m,
            _ = &mut stop => break,
        };
        let Some(msg) = msg else {
            return Err(Failure::Failed(
                "the subscription ended (the connection was closed)".into(),
            ));
        };
        print_message(&msg, json);
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    let dropped = sub.stats.dropped();
    if dropped > 0 {
        out::note(format!(
            "{dropped} message(s) were dropped: the terminal could not keep up"
        ));
    }
    Ok(())
}

fn print_message(msg: &RawMessage, json: bool) {
    let payload = Payload::decode(&msg.payload);
    if json {
        let mut m = Map::new();
        m.insert("subject".into(), msg.subject.clone().into());
        m.insert(
            "reply".into(),
            msg.reply.clone().map_or(Value::Null, Value::from),
        );
        m.insert("headers".into(), headers_json(&msg.headers));
        m.insert("size".into(), msg.payload.len().into());
        m.insert("received_at_ms".into(), now_ms().into());
        payload.json_fields(&msg.payload, &mut m);
        out::json(&Value::Object(m));
        return;
    }
    let mut first = format!("[{}] {}", out::clock(SystemTime::now()), msg.subject);
    if let Some(reply) = &msg.reply {
        first.push_str(&format!(" (reply to {reply})"));
    }
    out::line(first);
    for (name, value) in msg.headers.iter() {
        out::line(format!("  {name}: {value}"));
    }
    match payload {
        Payload::Json(v) => out::line(format!("  {v}")),
        Payload::Empty => out::line("  (empty payload)"),
        Payload::Undecodable(why) => out::line(format!(
            "  ({} bytes, {why}) hex {}",
            msg.payload.len(),
            hex(&msg.payload)
        )),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `bus pub`
pub async fn publish(args: PubArgs, json: bool) -> Outcome {
    subject_arg(&args.subject)?;
    let payload = payload_arg(&args.payload)?;
    let headers = header_args(&args.headers)?;
    let bus = connect(&args.conn).await?;
    let size = payload.len();
    bus.publish_raw(RawMessage::new(args.subject.clone(), payload).with_headers(headers))
        .await?;
    // Confirmed by the server before the command ends.
    bus.flush_timeout(args.conn.connect_timeout).await?;
    if json {
        out::json(&json!({"subject": args.subject, "size": size}));
    } else {
        out::note(format!("published {size} bytes to {}", args.subject));
    }
    Ok(())
}

/// `bus req`
pub async fn request(args: ReqArgs, json: bool) -> Outcome {
    subject_arg(&args.subject)?;
    let payload = payload_arg(&args.payload)?;
    let headers = header_args(&args.headers)?;
    let bus = connect(&args.conn).await?;
    let msg = RawMessage::new(args.subject.clone(), payload).with_headers(headers);
    let reply = bus.broker().request(msg, args.timeout).await?;
    let error = reply.headers.get(bus::headers::ERROR).map(str::to_string);
    let decoded = Payload::decode(&reply.payload);
    if json {
        let mut m = Map::new();
        m.insert("subject".into(), args.subject.clone().into());
        m.insert("headers".into(), headers_json(&reply.headers));
        m.insert("size".into(), reply.payload.len().into());
        decoded.json_fields(&reply.payload, &mut m);
        m.insert(
            "error".into(),
            error.clone().map_or(Value::Null, Value::from),
        );
        out::json(&Value::Object(m));
    } else if error.is_none() {
        match &decoded {
            Payload::Json(v) => out::line(serde_json::to_string_pretty(v).unwrap_or_default()),
            Payload::Empty => out::note("(empty reply)"),
            Payload::Undecodable(why) => {
                out::note(format!("the reply is {why}; hex:"));
                out::line(hex(&reply.payload));
            }
        }
    }
    match error {
        Some(message) => Err(Failure::Failed(format!(
            "the responder on {} failed: {message}",
            args.subject
        ))),
        None => Ok(()),
    }
}

/// `bus health`
pub async fn health(args: HealthArgs, json: bool) -> Outcome {
    let bus = connect(&args.conn).await?;
    let mut sub = bus.broker().subscribe("plugin.health.*", None).await?;
    let deadline = tokio::time::Instant::now() + args.wait;
    // The latest heartbeat of each instance, by the instance's own clock (`at_ms`).
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    let mut undecodable = 0u64;
    loop {
        let msg = match tokio::time::timeout_at(deadline, sub.messages.next()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        let Payload::Json(Value::Object(mut beat)) = Payload::decode(&msg.payload) else {
            undecodable += 1;
            continue;
        };
        let instance = msg
            .subject
            .strip_prefix("plugin.health.")
            .unwrap_or(&msg.subject)
            .to_string();
        beat.insert("subject".into(), msg.subject.clone().into());
        let at = |v: &Value| v.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
        let newer = latest
            .get(&instance)
            .is_none_or(|old| at(old) <= beat.get("at_ms").and_then(Value::as_u64).unwrap_or(0));
        if newer {
            latest.insert(instance, Value::Object(beat));
        }
    }
    if undecodable > 0 {
        out::note(format!(
            "{undecodable} message(s) on plugin.health.* were not heartbeats (not a MessagePack map)"
        ));
    }
    if json {
        out::json(&Value::Array(latest.values().cloned().collect()));
    } else if !latest.is_empty() {
        let mut table = Table::new(&[
            "INSTANCE", "STATE", "OUTBOX", "OLDEST", "DEAD", "DROPS", "FAILURES", "VERSION",
            "UPTIME", "SEEN",
        ]);
        for (instance, beat) in &latest {
            let num = |k: &str| {
                beat.get(k)
                    .and_then(Value::as_u64)
                    .map_or("-".into(), |n| n.to_string())
            };
            let ms = |k: &str| {
                beat.get(k)
                    .and_then(Value::as_u64)
                    .map_or("-".into(), |n| out::duration(Duration::from_millis(n)))
            };
            let text = |k: &str| {
                beat.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            };
            let seen = beat
                .get("at_ms")
                .and_then(Value::as_u64)
                .map_or("-".into(), |at| {
                    out::ago(UNIX_EPOCH + Duration::from_millis(at))
                });
            table.row(vec![
                instance.clone(),
                text("state"),
                num("outbox_depth"),
                ms("outbox_oldest_ms"),
                num("dead_letters"),
                num("slow_consumer_drops"),
                num("handler_failures"),
                text("version"),
                ms("uptime_ms"),
                seen,
            ]);
        }
        table.print();
    }
    if latest.is_empty() {
        return Err(Failure::Failed(format!(
            "no heartbeat on plugin.health.* within {} (a service sends them only with \
             BusBuilder::heartbeat; wait longer than its interval with --wait)",
            out::duration(args.wait)
        )));
    }
    Ok(())
}

/// `bus catalog`
pub async fn catalog(args: CatalogArgs, json: bool) -> Outcome {
    let bus = connect(&args.conn).await?;
    let found = bus::catalog::discover(&bus, args.wait).await?;
    if found.services.is_empty() {
        return Err(Failure::Failed(format!(
            "no service answered on {} within {} (a service answers once it runs \
             bus::catalog::serve(&bus); wait longer with --wait)",
            bus::catalog::CATALOG_SUBJECT,
            out::duration(args.wait)
        )));
    }
    if args.asyncapi {
        out::json(&found.asyncapi());
    } else if json {
        out::json(&serde_json::to_value(&found).map_err(|e| Failure::Failed(e.to_string()))?);
    } else {
        out::line(found.table().trim_end());
    }
    Ok(())
}
