//! The `bus` binary against a real nats-server (the `bus-tests` harness) and real outbox
//! files, with a service running and publishing beside it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bus::outbox::OperatorRequests;
use bus::{Broker, Bus, Headers, LocalBroker, RawMessage};
use bus_tests::msgs::{Delegate, Outbound, RouteReply};
use bus_tests::server::NatsServer;
use futures::StreamExt;
use serde_json::{json, Value};

use support::{bus, eventually, text_of, Service, Spawned, GUARD};

/// The acceptance case: against a service that is running and publishing, `bus outbox stats`
/// shows the live depth, a dead letter replayed from the CLI is delivered, and
/// `bus tap 'plugin.>'` shows JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_running_service_stats_replay_and_tap() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        Bus::builder().nats([server.url()]),
        &dir.path().join("outbox.sqlite3"),
    )
    .await;
    let ticker = service.tick();
    let file = service.file();

    // A dead letter of the handler, in the file the service holds.
    service.publish("poison 1").await;
    let listed = eventually("the handler's dead letter in the file", || async {
        let v = bus(&["dead-letters", "list", file, "--json"])
            .await
            .expect(0)
            .json();
        (!v.as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    let dead = &listed[0];
    assert_eq!(dead["origin"], "handler:mailer");
    assert_eq!(dead["subject"], "plugin.outbound.work.svc-1");
    assert_eq!(text_of(dead), "poison 1");
    assert!(dead["last_error"]
        .as_str()
        .unwrap()
        .contains("refused \"poison 1\""));
    let id = dead["id"].as_i64().unwrap().to_string();
    let shown = bus(&["dead-letters", "show", file, &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(shown["payload"], dead["payload"]);
    assert!(shown["headers"]["Nats-Msg-Id"].is_string(), "{shown}");
    let human = bus(&["dead-letters", "show", file, &id]).await.expect(0);
    assert!(
        human.stdout.contains("\"text\": \"poison 1\"")
            && human.stdout.contains("origin      handler:mailer"),
        "{human:?}"
    );

    // Live depth: the server goes away, the service goes on publishing into its outbox.
    server.stop();
    for i in 1..=5 {
        service.publish(&format!("outage {i}")).await;
    }
    let stats = bus(&["outbox", "stats", file, "--json"])
        .await
        .expect(0)
        .json();
    assert!(stats["depth"].as_u64().unwrap() >= 5, "{stats}");
    assert!(stats["oldest_age_ms"].is_u64(), "{stats}");
    assert_eq!(stats["dead_letters"], 1);
    assert_eq!(stats["schema_version"], 4);
    assert_eq!(
        stats["inbox"], 0,
        "no deduplicating handler: an empty inbox"
    );
    let queued = bus(&["outbox", "list", file, "--json", "--limit", "100000"])
        .await
        .expect(0)
        .json();
    let outage: Vec<&str> = queued
        .as_array()
        .unwrap()
        .iter()
        .map(text_of)
        .filter(|t| t.starts_with("outage"))
        .collect();
    assert_eq!(
        outage,
        ["outage 1", "outage 2", "outage 3", "outage 4", "outage 5"]
    );
    let human = bus(&["outbox", "stats", file]).await.expect(0);
    assert!(human.stdout.contains("dead letters  1"), "{human:?}");
    server.start_again();
    eventually("the queue drained after the outage", || async {
        let s = bus(&["outbox", "stats", file, "--json"])
            .await
            .expect(0)
            .json();
        (s["depth"] == 0).then_some(())
    })
    .await;
    assert!(service.took("outage 5"));

    // The replay is carried out by the service (the owner) and the message delivered.
    assert!(!service.took("poison 1"));
    let replayed = bus(&["dead-letters", "replay", file, &id, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(replayed["ran_by"], "owner", "{replayed}");
    assert_eq!(replayed["requests"][0]["outcome"], "replayed");
    assert!(replayed["requests"][0]["queue_id"].is_i64());
    eventually("the replayed dead letter delivered", || async {
        service.took("poison 1").then_some(())
    })
    .await;
    let listed = bus(&["dead-letters", "list", file, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(listed, json!([]));

    // Tap shows the service's messages as JSON.
    let tapped = bus(&[
        "tap",
        "plugin.>",
        "--count",
        "5",
        "--json",
        "--server",
        &server.url(),
    ])
    .await
    .expect(0);
    let lines: Vec<Value> = tapped
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{tapped:?}");
    for m in &lines {
        assert!(m["subject"].as_str().unwrap().starts_with("plugin."), "{m}");
        assert!(m["payload"].is_object(), "{m}");
    }
    assert!(
        lines
            .iter()
            .any(|m| m["subject"] == "plugin.outbound.tick.svc-1"
                && text_of(m).starts_with("tick ")
                && m["headers"]["Nats-Msg-Id"].is_string()),
        "{tapped:?}"
    );
    ticker.abort();
}

/// Health: the latest heartbeat of each instance, through the same auth options as the
/// builder (here a token, from the command line and from `NATS_TOKEN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_lists_every_instance_with_auth() {
    let server = NatsServer::builder().token("s3cret").start();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        Bus::builder().nats([server.url()]).token("s3cret"),
        &dir.path().join("outbox.sqlite3"),
    )
    .await;
    let url = server.url();
    let beats = bus(&[
        "health", "--json", "--wait", "1", "--server", &url, "--token", "s3cret",
    ])
    .await
    .expect(0)
    .json();
    let beats = beats.as_array().unwrap();
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert_eq!(beats[0]["instance"], "svc-1");
    assert_eq!(beats[0]["state"], "connected");
    assert_eq!(beats[0]["subject"], "plugin.health.svc-1");
    assert!(beats[0]["uptime_ms"].is_u64());

    let human = tokio::task::spawn_blocking(move || {
        support::command(&["health", "--wait", "1", "--server", &url])
            .env("NATS_TOKEN", "s3cret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&human.stdout);
    assert!(human.status.success(), "{human:?}");
    let mut rows = stdout.lines();
    assert!(
        rows.next().unwrap().starts_with("INSTANCE  STATE "),
        "{stdout}"
    );
    assert!(
        rows.next().unwrap().starts_with("svc-1     connected "),
        "{stdout}"
    );

    let refused = bus(&[
        "health",
        "--wait",
        "1",
        "--server",
        &server.url(),
        "--token",
        "wrong",
        "--connect-timeout",
        "3",
    ])
    .await
    .expect(1);
    assert!(
        refused.stderr.contains("cannot connect") && refused.stderr.contains("authorization"),
        "{refused:?}"
    );
    drop(service);

    // Nobody sends heartbeats: an error, not an empty success.
    let quiet = NatsServer::start();
    let none = bus(&["health", "--wait", "0.5", "--server", &quiet.url()])
        .await
        .expect(1);
    assert!(none.stderr.contains("no heartbeat"), "{none:?}");
}

/// A file with `n` handler dead letters (`dl 1` … `dl n` on `plugin.outbound.work.svc-1`),
/// that no process holds.
async fn unowned_file_with_dead_letters(dir: &std::path::Path, n: usize) -> String {
    let path = dir.join("outbox.sqlite3");
    let bus = Bus::builder()
        .local()
        .outbox_path(&path)
        .connect()
        .await
        .unwrap();
    let _failing = bus
        .handle_with(
            Outbound::filter(),
            bus::HandlerOptions::named("mailer").retry(bus::RetryPolicy::default().max_attempts(1)),
            |_m| async { Err::<(), _>("down") },
        )
        .await
        .unwrap();
    for i in 1..=n {
        bus_tests::msgs::outbound("work", "svc-1", &format!("dl {i}"))
            .publish(&bus)
            .await
            .unwrap();
    }
    let dlq = bus.dead_letters();
    eventually("the dead letters", || async {
        (dlq.count().await.unwrap() == n as u64).then_some(())
    })
    .await;
    bus.close().await.unwrap();
    drop(_failing);
    drop(bus);
    path.to_str().unwrap().to_string()
}

/// Without an owner the command runs the requests itself, under the lock; the next service on
/// the file sends the replayed messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_owner_replay_and_purge_run_here() {
    let dir = tempfile::tempdir().unwrap();
    let file = unowned_file_with_dead_letters(dir.path(), 3).await;
    let file = file.as_str();

    let purged = bus(&["dead-letters", "purge", file, "1", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(purged["ran_by"], "cli");
    assert_eq!(purged["requests"][0]["outcome"], "purged");
    let human = bus(&["dead-letters", "list", file]).await.expect(0);
    let ids: Vec<&str> = human
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["2", "3"], "{human:?}");

    let missing = bus(&["dead-letters", "replay", file, "9"]).await.expect(1);
    assert!(
        missing.stdout.contains("not found") && missing.stderr.contains("dead letter 9: not found"),
        "{missing:?}"
    );
    let all = bus(&["dead-letters", "replay", file, "--all"])
        .await
        .expect(0);
    assert!(
        all.stderr.contains("replayed 2 of 2: no process holds"),
        "{all:?}"
    );
    let stats = bus(&["outbox", "stats", file, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        (stats["depth"].as_u64(), stats["dead_letters"].as_u64()),
        (Some(2), Some(0))
    );
    let queued = bus(&["outbox", "list", file, "--json"])
        .await
        .expect(0)
        .json();
    let texts: Vec<&str> = queued.as_array().unwrap().iter().map(text_of).collect();
    assert_eq!(texts, ["dl 2", "dl 3"]);
    let none = bus(&["dead-letters", "purge", file, "--all", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(none["requests"], json!([]));

    // The next owner sends them.
    let broker = Arc::new(LocalBroker::new());
    let mut sub = Broker::subscribe(&*broker, "plugin.outbound.>", None)
        .await
        .unwrap();
    let owner = Bus::builder()
        .broker(broker.clone())
        .outbox_path(file)
        .connect()
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(GUARD, sub.messages.next())
            .await
            .expect("the replayed messages were not sent")
            .unwrap();
        got.push(rmp_serde::from_slice::<Outbound>(&m.payload).unwrap().text);
    }
    assert_eq!(got, ["dl 2", "dl 3"]);
    owner.close().await.unwrap();
}

/// A holder that never answers (here: the lock held, no writer behind it): the command gives
/// up after --timeout, withdraws its requests and says so; nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_never_answers_times_out_and_the_request_is_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let file = unowned_file_with_dead_letters(dir.path(), 1).await;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{file}.lock"))
        .unwrap();
    lock.lock().unwrap();

    let started = std::time::Instant::now();
    let run = bus(&["dead-letters", "replay", &file, "1", "--timeout", "1"])
        .await
        .expect(1);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        run.stderr
            .contains("did not carry out the request within 1.0s")
            && run.stderr.contains("0 of 1 done, 1 withdrawn"),
        "{run:?}"
    );
    let requests = OperatorRequests::open(&file).unwrap();
    assert!(
        requests.recent(10).unwrap().is_empty(),
        "the withdrawn request is gone"
    );
    let listed = bus(&["dead-letters", "list", &file, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing was replayed");

    drop(lock);
    let again = bus(&["dead-letters", "replay", &file, "1", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(again["ran_by"], "cli");
}

/// Tap never stops at a payload it cannot decode: hex for bytes that are not MessagePack,
/// headers as sent, JSON for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_undecodable_payloads_as_hex_and_goes_on() {
    let server = NatsServer::start();
    let url = server.url();
    let mut machine = Spawned::start(&["tap", "demo.*", "--count", "3", "--json", "-s", &url]);
    let mut human = Spawned::start(&["tap", "demo.>", "--count", "3", "--server", &url]);
    machine.listening().await;
    human.listening().await;

    let client = Bus::builder()
        .nats([url.as_str()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut headers = Headers::new();
    headers.insert("X-Tenant", "acme");
    for msg in [
        RawMessage::new("demo.text", &b"hello"[..]),
        RawMessage::new("demo.empty", Vec::new()),
        RawMessage::new(
            "demo.ok",
            rmp_serde::to_vec_named(&json!({"a": 1})).unwrap(),
        )
        .with_headers(headers),
    ] {
        client.publish_raw(msg).await.unwrap();
    }
    client.flush().await.unwrap();

    let run = machine.finish().await.expect(0);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert_eq!(lines[0]["subject"], "demo.text");
    assert_eq!(lines[0]["payload"], Value::Null);
    assert_eq!(lines[0]["payload_hex"], "68656c6c6f");
    assert!(lines[0]["payload_error"]
        .as_str()
        .unwrap()
        .contains("MessagePack"));
    assert_eq!(
        (lines[1]["size"].as_u64(), &lines[1]["payload"]),
        (Some(0), &Value::Null)
    );
    assert!(lines[1].get("payload_hex").is_none());
    assert_eq!(lines[2]["payload"], json!({"a": 1}));
    assert_eq!(lines[2]["headers"]["X-Tenant"], "acme");

    let run = human.finish().await.expect(0);
    assert!(run.stdout.contains("] demo.text\n"), "{run:?}");
    assert!(run.stdout.contains("hex 68656c6c6f"), "{run:?}");
    assert!(
        run.stdout.contains("  X-Tenant: acme\n  {\"a\":1}\n"),
        "{run:?}"
    );
}

/// `pub` and `req` speak the derive's wire format (named MessagePack maps), check subjects by
/// the grammar, and show a responder's `Bus-Error` as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_and_req_speak_the_derives_wire_format() {
    let server = NatsServer::start();
    let url = server.url();
    let service = Bus::builder()
        .nats([url.as_str()])
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let mut typed = Outbound::subscribe(&service, Outbound::filter().channel("cli"))
        .await
        .unwrap();
    let _agent = Delegate::serve(
        &service,
        Delegate::filter().agent("planner"),
        |req| async move {
            if req.task == "fail" {
                return Err("cannot do that".to_string());
            }
            Ok(RouteReply {
                accepted: req.task == "t",
            })
        },
    )
    .await
    .unwrap();
    service.flush().await.unwrap();

    let published = bus(&[
        "pub",
        "plugin.outbound.cli.x",
        r#"{"channel":"cli","instance":"x","text":"hi"}"#,
        "--server",
        &url,
        "--json",
    ])
    .await
    .expect(0)
    .json();
    assert_eq!(published["subject"], "plugin.outbound.cli.x");
    let got = tokio::time::timeout(GUARD, typed.next())
        .await
        .expect("the published message did not arrive")
        .unwrap()
        .unwrap();
    assert_eq!(got.text, "hi");
    assert_eq!(got.subject(), "plugin.outbound.cli.x");

    // `bus req agent.route.planner '{"agent":"planner","task":TASK}' -s URL [--json]`
    let ask = |task: &str, json: bool| {
        let body = json!({"agent": "planner", "task": task}).to_string();
        let url = url.clone();
        async move {
            let mut args = vec!["req", "agent.route.planner", &body, "-s", &url];
            if json {
                args.push("--json");
            }
            bus(&args).await
        }
    };
    let reply = ask("t", true).await.expect(0).json();
    assert_eq!(reply["payload"], json!({"accepted": true}));
    assert_eq!(reply["error"], Value::Null);
    let human = ask("other", false).await.expect(0);
    assert_eq!(
        serde_json::from_str::<Value>(&human.stdout).unwrap(),
        json!({"accepted": false})
    );

    let failed = ask("fail", true).await.expect(1);
    assert_eq!(failed.json()["error"], "cannot do that");
    assert!(
        failed
            .stderr
            .contains("the responder on agent.route.planner failed: cannot do that"),
        "{failed:?}"
    );
    let nobody = bus(&[
        "req",
        "agent.route.nobody",
        "{}",
        "-s",
        &url,
        "--timeout",
        "1",
    ])
    .await
    .expect(1);
    assert!(nobody.stderr.contains("no responders"), "{nobody:?}");

    // Usage errors, found before connecting: exit 2.
    for (args, says) in [
        (&["pub", "plugin.*.x", "{}"][..], "wildcards"),
        (&["pub", "plugin.a..b", "{}"], "invalid subject"),
        (&["pub", "plugin.a.b", "{nope"], "not valid JSON"),
        (
            &["req", "agent.route.a", "{}", "-H", "Bad Name=x"],
            "Bad Name",
        ),
        (&["tap", "a.>.b"], "invalid pattern"),
    ] {
        let run = bus(args).await.expect(2);
        assert!(run.stderr.contains(says), "{args:?}: {run:?}");
    }
    let down = format!("nats://127.0.0.1:{}", bus_tests::server::free_port());
    let run = bus(&[
        "pub",
        "plugin.a.b",
        "{}",
        "-s",
        &down,
        "--connect-timeout",
        "0.5",
    ])
    .await
    .expect(1);
    assert!(run.stderr.contains("cannot connect to"), "{run:?}");
}

/// Wrong usage exits 2, a missing file or dead letter 1, each with what to do.
#[tokio::test]
async fn usage_and_file_errors() {
    bus(&[]).await.expect(2);
    bus(&["outbox"]).await.expect(2);
    let no_ids = bus(&["dead-letters", "replay", "f.db"]).await.expect(2);
    assert!(no_ids.stderr.contains("--all"), "{no_ids:?}");
    let missing = bus(&["outbox", "stats", "/nonexistent/outbox.sqlite3"])
        .await
        .expect(1);
    assert!(missing.stderr.contains("outbox_path"), "{missing:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = unowned_file_with_dead_letters(dir.path(), 1).await;
    let run = bus(&["dead-letters", "show", &file, "99"]).await.expect(1);
    assert!(run.stderr.contains("no dead letter 99"), "{run:?}");
    let empty = bus(&["outbox", "list", &file]).await.expect(0);
    assert!(empty.stderr.contains("nothing queued"), "{empty:?}");
    bus(&["--version"]).await.expect(0);
}

/// What the usage of `replay` and `purge` says is what parses: the file first, then ids or
/// `--all`, run against a real file. (Before, the usage read `<ID|--all> <FILE>`, and a command
/// written that way failed as wrong usage.)
#[tokio::test]
async fn replay_and_purge_parse_as_their_usage_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = unowned_file_with_dead_letters(dir.path(), 3).await;
    for op in ["replay", "purge"] {
        let help = bus(&["dead-letters", op, "--help"]).await.expect(0);
        let usage: Vec<&str> = help
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("Usage:"))
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("Usage:").trim())
            .collect();
        assert_eq!(
            usage,
            [
                format!("bus dead-letters {op} [OPTIONS] <FILE> <ID>..."),
                format!("bus dead-letters {op} [OPTIONS] <FILE> --all"),
            ],
            "{help:?}"
        );
        // Ids before the file, as the old usage had it: wrong usage.
        bus(&["dead-letters", op, "1", &file]).await.expect(2);
    }
    let one = bus(&["dead-letters", "replay", &file, "1", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(one["requests"][0]["outcome"], "replayed", "{one}");
    let rest = bus(&["dead-letters", "purge", &file, "--all", "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(rest["requests"].as_array().unwrap().len(), 2, "{rest}");
}

/// A password in `--server`'s URL is never printed: not in the note of `tap`, nor in the error
/// of a refused or unreachable connection (the URL is shown as `nats://alice:***@…`).
#[tokio::test]
async fn a_password_in_the_server_url_is_never_printed() {
    const SECRET: &str = "S3cretPassw0rdXYZ";
    let server = NatsServer::builder().user_password("alice", SECRET).start();
    let with_secret = |password: &str| {
        server
            .url()
            .replacen("nats://", &format!("nats://alice:{password}@"), 1)
    };
    let good = with_secret(SECRET);
    let sent = bus(&["pub", "cli.secret", "1", "--server", &good])
        .await
        .expect(0);
    assert!(!format!("{sent:?}").contains(SECRET), "{sent:?}");
    let wrong = with_secret("Wr0ngPassw0rdXYZ");
    let refused = bus(&[
        "pub",
        "cli.secret",
        "1",
        "--server",
        &wrong,
        "--connect-timeout",
        "3",
    ])
    .await
    .expect(1);
    assert!(refused.stderr.contains("nats://alice:***@"), "{refused:?}");
    assert!(
        !format!("{refused:?}").contains("Wr0ngPassw0rdXYZ"),
        "{refused:?}"
    );
    let port = bus_tests::server::free_port();
    let down = format!("nats://alice:{SECRET}@127.0.0.1:{port}");
    let unreachable = bus(&[
        "pub",
        "cli.secret",
        "1",
        "--server",
        &down,
        "--connect-timeout",
        "0.5",
    ])
    .await
    .expect(1);
    assert!(
        unreachable.stderr.contains("cannot connect"),
        "{unreachable:?}"
    );
    assert!(
        !format!("{unreachable:?}").contains(SECRET),
        "{unreachable:?}"
    );
}

/// `bus catalog` merges what every running service reports on `_bus.catalog`: the table, the
/// JSON, and one AsyncAPI 3.0 document; no service answering is an error.
#[tokio::test]
async fn catalog_lists_what_the_running_services_report() {
    let server = NatsServer::start();
    let url = server.url();
    let none = bus(&["catalog", "--wait", "0.5", "--server", &url]).await;
    none.expect(1);
    let svc = Bus::builder()
        .nats([server.url()])
        .instance("planner-1")
        .no_outbox()
        .connect()
        .await
        .unwrap();
    let responder = bus::catalog::serve(&svc).await.unwrap();
    svc.flush().await.unwrap();
    let table = bus(&["catalog", "--server", &url, "--wait", "1"])
        .await
        .expect(0);
    let text = table.stdout.as_str();
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("TYPE"), "{text}");
    let outbound = text
        .lines()
        .find(|l| l.starts_with("Outbound "))
        .unwrap_or_else(|| panic!("no Outbound row: {text}"));
    assert!(
        outbound.contains("plugin.outbound.<channel>.<instance>"),
        "{outbound}"
    );
    assert!(outbound.contains("planner-1"), "{outbound}");
    let delegate = text.lines().find(|l| l.starts_with("Delegate ")).unwrap();
    assert!(delegate.contains("RouteReply"), "{delegate}");

    let json = bus(&["--json", "catalog", "--server", &url, "--wait", "1"])
        .await
        .expect(0)
        .json();
    assert_eq!(json["services"][0]["instance"], "planner-1", "{json}");

    let doc = bus(&["catalog", "--asyncapi", "--server", &url, "--wait", "1"])
        .await
        .expect(0)
        .json();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(
        doc["channels"]["Outbound"]["address"], "plugin.outbound.{channel}.{instance}",
        "{doc}"
    );
    responder.stop().await;
}

/// Messages published for later show in `bus outbox list` with their due time (after the
/// queue), and `bus outbox stats` counts them, while the service holds the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_are_listed_with_their_due_time_and_counted() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        Bus::builder().nats([server.url()]),
        &dir.path().join("outbox.sqlite3"),
    )
    .await;
    let file = service.file();
    let due = std::time::SystemTime::now() + Duration::from_secs(3600);
    let msg = Outbound {
        channel: "later".into(),
        instance: "svc-1".into(),
        text: "in an hour".into(),
    };
    msg.publish_at(&service.bus, due).await.unwrap();
    let due_ms = due
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stats = bus(&["outbox", "stats", file, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(stats["scheduled"], 1, "{stats}");
    assert_eq!(stats["schema_version"], 4, "{stats}");
    let next = stats["next_due_ms"].as_u64().unwrap();
    assert!(next.abs_diff(due_ms) <= 1, "{stats}");
    let listed = bus(&["outbox", "list", file, "--json"])
        .await
        .expect(0)
        .json();
    let scheduled: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["due_at_ms"].is_u64())
        .collect();
    assert_eq!(scheduled.len(), 1, "{listed}");
    assert_eq!(text_of(scheduled[0]), "in an hour");
    assert_eq!(scheduled[0]["subject"], "plugin.outbound.later.svc-1");
    let human = bus(&["outbox", "list", file]).await.expect(0);
    assert!(
        human.stdout.contains("plugin.outbound.later.svc-1") && human.stdout.contains("(in "),
        "{human:?}"
    );
}
