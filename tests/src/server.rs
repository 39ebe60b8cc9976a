//! The nats-server test harness: starts the real `nats-server` binary on free loopback ports.
//!
//! Each [`NatsServer`] gets its own temporary directory holding a generated config file and the
//! server's log, a client port and a monitoring port, both on 127.0.0.1. `start` returns once the
//! server answers on `/healthz` (a [`Cluster`] also waits until every route is up), and panics
//! with the log's tail when it does not. The process is killed on `Drop`.
//!
//! The binary comes from `NATS_SERVER_BIN`, else `PATH` (plus `/usr/sbin`, where Debian puts it
//! and which a non-root `PATH` often lacks). When it is missing the test fails with
//! [`MISSING_BINARY`]: a NATS test is never skipped.
//!
//! Everything here is synchronous (std::process) so that `Drop` can always kill the server.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The panic message when no `nats-server` binary can be found.
pub const MISSING_BINARY: &str =
    "nats-server not found: install nats-server (Debian: apt-get install nats-server) or set NATS_SERVER_BIN";

/// How long a server may take to become ready (generous: the test machine is shared).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds the `nats-server` binary: `explicit` if given, else `NATS_SERVER_BIN`, else `PATH`,
/// `/usr/sbin`, `/usr/local/sbin`. `Err` carries [`MISSING_BINARY`].
///
/// `explicit` exists so tests can check the failure without touching the process-wide
/// environment.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let from_env = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty());
    if let Some(path) = explicit
        .map(Path::to_path_buf)
        .or(from_env.map(PathBuf::from))
    {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(MISSING_BINARY.to_string())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| MISSING_BINARY.to_string())
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port to find a free one")
}

/// Configures a [`NatsServer`]. Start with [`NatsServer::builder`].
#[derive(Debug, Clone, Default)]
pub struct NatsServerBuilder {
    binary: Option<PathBuf>,
    max_payload: Option<usize>,
    token: Option<String>,
    user_password: Option<(String, String)>,
    extra: String,
    name: Option<String>,
    cluster: Option<ClusterConfig>,
    port: Option<u16>,
}

#[derive(Debug, Clone)]
struct ClusterConfig {
    name: String,
    port: u16,
    routes: Vec<u16>,
}

impl NatsServerBuilder {
    /// Use this binary instead of looking it up.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The server's `max_payload`, in bytes.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Require this token from clients.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Require this user and password from clients.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// The server name (shown in logs and monitoring).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Use this client port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Raw lines appended to the generated config file.
    pub fn config(mut self, lines: impl AsRef<str>) -> Self {
        self.extra.push_str(lines.as_ref());
        self.extra.push('\n');
        self
    }

    /// Starts the server and waits until it is ready. Panics (with how to fix it) when the binary
    /// is missing or the server does not come up.
    pub fn start(self) -> NatsServer {
        let server = self.spawn();
        server.wait_ready(0);
        server
    }

    /// Starts the process without waiting (a cluster waits for all nodes at once).
    fn spawn(self) -> NatsServer {
        let binary = find_binary(self.binary.as_deref()).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .expect("cannot create a temporary directory for nats-server");
        let port = self.port.unwrap_or_else(free_port);
        let monitor_port = free_port();
        let log_path = dir.path().join("nats-server.log");
        let config_path = dir.path().join("nats-server.conf");
        let config = self.config_text(port, monitor_port, &log_path);
        std::fs::write(&config_path, config).expect("cannot write the nats-server config file");
        let server = NatsServer {
            binary,
            dir,
            config_path,
            log_path,
            port,
            monitor_port,
            child: Mutex::new(None),
        };
        server.spawn_process();
        server
    }

    fn config_text(&self, port: u16, monitor_port: u16, log_path: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "listen: \"127.0.0.1:{port}\"");
        let _ = writeln!(c, "http: \"127.0.0.1:{monitor_port}\"");
        let _ = writeln!(c, "log_file: {:?}", log_path.display().to_string());
        if let Some(name) = &self.name {
            let _ = writeln!(c, "server_name: {name:?}");
        }
        if let Some(max) = self.max_payload {
            let _ = writeln!(c, "max_payload: {max}");
        }
        if let Some(token) = &self.token {
            let _ = writeln!(c, "authorization {{ token: {token:?} }}");
        }
        if let Some((user, password)) = &self.user_password {
            let _ = writeln!(
                c,
                "authorization {{ user: {user:?}, password: {password:?} }}"
            );
        }
        if let Some(cluster) = &self.cluster {
            let routes = cluster
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                c,
                "cluster {{ name: {:?}, listen: \"127.0.0.1:{}\", routes: [{routes}] }}",
                cluster.name, cluster.port
            );
        }
        c.push_str(&self.extra);
        c
    }
}

/// A running `nats-server` process on loopback ports; killed on `Drop`.
///
/// Methods take `&self` (the process sits behind a mutex) so a test can kill and restart a
/// [`Cluster`] node it only borrows.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    monitor_port: u16,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server with default settings on free ports.
    pub fn start() -> NatsServer {
        NatsServer::builder().start()
    }

    /// A builder for a server with options (max_payload, auth, raw config).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring URL, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The server's temporary directory (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is alive.
    pub fn is_running(&self) -> bool {
        match self.child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the server gracefully (SIGTERM: it closes client connections), waiting for the exit;
    /// SIGKILL if it takes more than 10 s.
    pub fn stop(&self) {
        let mut guard = self.child();
        if let Some(mut child) = guard.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL): no goodbye to its clients, as in a crash.
    pub fn kill(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Puts the server in lame duck mode (SIGUSR2): it tells its clients to move elsewhere, then
    /// closes their connections over `lame_duck_duration` and exits.
    pub fn lame_duck(&self) {
        if let Some(child) = self.child().as_ref() {
            let _ = Command::new("kill")
                .args(["-USR2", &child.id().to_string()])
                .status();
        }
    }

    /// Starts the server again on the same ports with the same config (after `stop` or `kill`),
    /// and waits until it is ready.
    pub fn start_again(&self) {
        assert!(
            !self.is_running(),
            "start_again: the server is still running; stop or kill it first"
        );
        self.spawn_process();
        self.wait_ready(0);
    }

    /// Stops the server gracefully and starts it again on the same port.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Fetches a monitoring endpoint (`/varz`, `/routez`, `/connz`, …) and returns its body.
    pub fn monitor(&self, path: &str) -> std::io::Result<String> {
        http_get(self.monitor_port, path)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_process(&self) {
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log"))
            .expect("cannot create nats-server's stderr file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; {MISSING_BINARY}",
                    self.binary.display()
                )
            });
        *self.child() = Some(child);
    }

    /// Waits until `/healthz` answers 200 and, in a cluster, `routes` routes are up.
    fn wait_ready(&self, routes: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                self.fail("nats-server exited during startup");
            }
            let healthy = self
                .monitor("/healthz")
                .is_ok_and(|body| body.starts_with("HTTP/1.1 200") || body.contains("\"ok\""));
            let routed = routes == 0
                || self
                    .monitor("/routez")
                    .is_ok_and(|body| count_routes(&body) >= routes);
            if healthy && routed {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "nats-server not ready after {READY_TIMEOUT:?} (healthy: {healthy}, routes wanted: {routes})"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn fail(&self, what: &str) -> ! {
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let log = self.log();
        self.kill();
        panic!(
            "{what}\n--- config ({}) ---\n{}\n--- log tail ---\n{}\n--- stderr ---\n{}",
            self.config_path.display(),
            std::fs::read_to_string(&self.config_path).unwrap_or_default(),
            tail(&log, 40),
            tail(&stderr, 20),
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of nats-servers on loopback, fully meshed by routes.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts `n` nodes (n >= 2) and waits until every node has a route to every other.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, NatsServer::builder)
    }

    /// Like [`start`](Cluster::start), each node configured from `builder()` (e.g. to set
    /// max_payload); the cluster settings are added.
    pub fn start_with(n: usize, builder: impl Fn() -> NatsServerBuilder) -> Cluster {
        assert!(n >= 2, "a cluster needs at least 2 nodes");
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes: Vec<NatsServer> = (0..n)
            .map(|i| {
                let mut b = builder().name(format!("node{i}"));
                b.cluster = Some(ClusterConfig {
                    name: "bus-test".into(),
                    port: route_ports[i],
                    routes: route_ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, p)| *p)
                        .collect(),
                });
                b.spawn()
            })
            .collect();
        for node in &nodes {
            node.wait_ready(n - 1);
        }
        Cluster { nodes }
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least two nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A bare HTTP/1.0 GET on 127.0.0.1:`port` (no client library needed); returns the whole
/// response, status line included.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// `"num_routes": N` in a `/routez` body.
fn count_routes(body: &str) -> usize {
    monitor_count(body, "num_routes").unwrap_or(0)
}

/// The number after `"key":` in a monitoring endpoint's JSON body (`num_routes` in `/routez`,
/// `num_connections` in `/connz`), without a JSON parser; `None` if the key is absent.
pub fn monitor_count(body: &str, key: &str) -> Option<usize> {
    body.split_once(&format!("\"{key}\":"))
        .and_then(|(_, rest)| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
