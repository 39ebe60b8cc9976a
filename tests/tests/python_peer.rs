//! The worked example of docs/wire-format.md: `examples/python/bus_peer.py`, a Python peer with
//! only the standard library, against a Rust service on a real nats-server. The peer publishes,
//! receives the service's echo (sent through the outbox), requests, and sees a handler's error
//! and the server's no-responders status, checking each against the wire format.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bus::{Bus, ConnectionState};
use bus_tests::msgs::{outbound, Delegate, Outbound, RouteReply};
use bus_tests::server::NatsServer;
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_python_peer_of_the_wire_format_talks_to_a_rust_service() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .nats([server.url()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .connect()
        .await
        .unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();

    // What the peer publishes, as a typed subscriber sees it.
    let mut from_python = Outbound::subscribe(&bus, Outbound::filter().channel("python"))
        .await
        .unwrap();
    // The echo: plugin.outbound.python.<i> back out on plugin.outbound.slack.<i>.
    let echo_bus = bus.clone();
    let _echo = Outbound::handle(&bus, Outbound::filter().channel("python"), move |msg| {
        let bus = echo_bus.clone();
        async move {
            outbound("slack", &msg.instance, &msg.text)
                .publish(&bus)
                .await
        }
    })
    .await
    .unwrap();
    let _serve = Delegate::serve(&bus, Delegate::filter(), |req| async move {
        if req.task.is_empty() {
            return Err("empty task".to_string());
        }
        Ok(RouteReply {
            accepted: req.task == "plan",
        })
    })
    .await
    .unwrap();
    bus.broker().confirm().await.unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/bus_peer.py");
    let child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the peer (tests/run.sh needs python3 too)");
    let out = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .expect("the peer finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peer failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("peer: done\n"), "{stdout}");

    let env = tokio::time::timeout(GUARD, from_python.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(env.subject(), "plugin.outbound.python.py1");
    assert_eq!(env.text, "hi from python");
    let sent_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sent plugin.outbound.python.py1 Nats-Msg-Id="))
        .unwrap();
    assert_eq!(env.msg_id(), Some(sent_id));
}
