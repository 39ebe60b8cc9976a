//! What the CLI tests share: running the built `bus` binary, and a service that holds an
//! outbox file, publishes, handles and sends heartbeats.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus::{Bus, Handler, HandlerOptions, RetryPolicy};
use bus_tests::msgs::{outbound, Outbound};
use serde_json::Value;

/// How long anything may take on the shared test machine.
pub const GUARD: Duration = Duration::from_secs(30);

/// The environment variables the CLI reads: removed, so the tests see only their arguments.
const NATS_ENV: [&str; 9] = [
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CREDS",
    "NATS_NKEY",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
];

/// The built binary, with a clean environment.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bus"));
    c.args(args);
    for v in NATS_ENV {
        c.env_remove(v);
    }
    c
}

/// What one run printed, and its exit status.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as one JSON document; panics (with both streams) if it is not one.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts exit status `code` and returns self.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "unexpected exit status: {self:?}");
        self
    }
}

/// Runs `bus ARGS` to its end (off the async worker threads).
pub async fn bus(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = command(&refs)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run the bus binary");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// Starts `bus ARGS` with stdout and stderr piped (for `tap`), killed on drop.
pub struct Spawned(pub Option<Child>);

impl Spawned {
    pub fn start(args: &[&str]) -> Spawned {
        let child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run the bus binary");
        Spawned(Some(child))
    }

    /// Waits until stderr says the subscription is live (the first line), then returns.
    pub async fn listening(&mut self) {
        use std::io::{BufRead, BufReader};
        let stderr = self
            .0
            .as_mut()
            .unwrap()
            .stderr
            .take()
            .expect("stderr taken");
        let line = tokio::time::timeout(
            GUARD,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stderr).read_line(&mut line).map(|_| line)
            }),
        )
        .await
        .expect("tap never said it was listening")
        .unwrap()
        .unwrap();
        assert!(line.starts_with("listening on "), "{line:?}");
    }

    /// Waits for the end; returns the run (stderr after the first line, if `listening` read it).
    pub async fn finish(mut self) -> Run {
        let child = self.0.take().unwrap();
        let out = tokio::time::timeout(
            GUARD,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("the command did not end")
        .unwrap()
        .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some`, for at most [`GUARD`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running service: its outbox file, a handler `mailer` on `plugin.outbound.work.*` that
/// gives up on the first try of a text starting with `poison` (one attempt: a dead letter in
/// the file) and takes it the next time, and the texts it took.
pub struct Service {
    pub bus: Bus,
    pub path: PathBuf,
    pub delivered: Arc<Mutex<Vec<String>>>,
    _mailer: Handler,
}

impl Service {
    /// `builder` with the outbox at `path`, instance `svc-1` and a 200 ms heartbeat.
    pub async fn start(builder: bus::BusBuilder, path: &Path) -> Service {
        let bus = builder
            .outbox_path(path)
            .instance("svc-1")
            .heartbeat(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let tried = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let sink = Arc::clone(&delivered);
        let mailer = bus
            .handle_with(
                Outbound::filter().channel("work"),
                HandlerOptions::named("mailer").retry(RetryPolicy::default().max_attempts(1)),
                move |m| {
                    let first = tried
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(m.text.clone());
                    let sink = Arc::clone(&sink);
                    async move {
                        if first && m.text.starts_with("poison") {
                            return Err(format!("refused {:?}", m.text));
                        }
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(m.text.clone());
                        Ok(())
                    }
                },
            )
            .await
            .unwrap();
        Service {
            bus,
            path: path.to_path_buf(),
            delivered,
            _mailer: mailer,
        }
    }

    /// Publishes `text` on `plugin.outbound.work.svc-1` (through the outbox).
    pub async fn publish(&self, text: &str) {
        outbound("work", "svc-1", text)
            .publish(&self.bus)
            .await
            .unwrap();
    }

    /// Publishes `tick 1`, `tick 2`, … every 50 ms until the task is aborted.
    pub fn tick(&self) -> tokio::task::JoinHandle<()> {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            for n in 1.. {
                let _ = outbound("tick", "svc-1", &format!("tick {n}"))
                    .publish(&bus)
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Whether the handler took `text`.
    pub fn took(&self, text: &str) -> bool {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|t| t == text)
    }

    /// The file as a command argument.
    pub fn file(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// The `text` field of a JSON message's payload.
pub fn text_of(m: &Value) -> &str {
    m["payload"]["text"].as_str().unwrap_or("")
}
