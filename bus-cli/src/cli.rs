//! The command line: every command, argument and option (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Operate a `bus` deployment: the outbox and dead letters of a running service, the messages
/// on the wire, publish and request from JSON, the heartbeats of every instance.
///
/// Exit status: 0 done, 1 failed (the message says why), 2 wrong usage.
#[derive(Debug, Parser)]
#[command(name = "bus", version, max_term_width = 100)]
pub struct Cli {
    /// Machine output: one JSON document on stdout (for `tap`, one JSON object per line).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The outbox queue of a file, read while its service runs (read-only, no lock taken).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The dead letters of an outbox file: list, show, replay, purge (a running service
    /// carries out replay and purge itself).
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Print every message on subjects matching PATTERN, payloads decoded from MessagePack.
    Tap(TapArgs),
    /// Publish a JSON value, sent as MessagePack, to SUBJECT.
    Pub(PubArgs),
    /// Send a JSON value as a MessagePack request to SUBJECT and print the reply as JSON.
    Req(ReqArgs),
    /// The latest heartbeat of every instance (listens on plugin.health.* for --wait).
    Health(HealthArgs),
    /// Every message type the running services know (asked on _bus.catalog), as a table, or
    /// as one AsyncAPI 3.0 document with --asyncapi.
    Catalog(CatalogArgs),
}

/// `bus outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Queue depth, age of the oldest queued message, dead letters, size on disk.
    Stats {
        /// The outbox file (the service's `outbox_path`).
        file: PathBuf,
    },
    /// The queued messages, oldest first, then the scheduled ones (published for later, not due
    /// yet) with their due time.
    List {
        /// The outbox file (the service's `outbox_path`).
        file: PathBuf,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this queue id (to page through a long queue).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
    },
}

/// `bus dead-letters ...`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Every dead letter, oldest first.
    List {
        /// The outbox file (the service's `outbox_path`).
        file: PathBuf,
    },
    /// One dead letter in full: headers, payload as JSON, last error.
    Show {
        /// The outbox file (the service's `outbox_path`).
        file: PathBuf,
        /// The dead letter's id (see `list`).
        id: i64,
    },
    /// Put dead letters back at the end of the queue (same msg id, fresh attempts).
    #[command(
        override_usage = "bus dead-letters replay [OPTIONS] <FILE> <ID>...\n       \
                                bus dead-letters replay [OPTIONS] <FILE> --all"
    )]
    Replay(ChangeArgs),
    /// Delete dead letters for good.
    #[command(
        override_usage = "bus dead-letters purge [OPTIONS] <FILE> <ID>...\n       \
                                bus dead-letters purge [OPTIONS] <FILE> --all"
    )]
    Purge(ChangeArgs),
}

/// What `replay` and `purge` take: the file first, then ids or `--all` (the usage line says so;
/// a required group of the two would be printed ahead of the file).
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// The outbox file (the service's `outbox_path`).
    pub file: PathBuf,
    /// The dead letters' ids (see `list`); or `--all`.
    #[arg(value_name = "ID", required_unless_present = "all")]
    pub ids: Vec<i64>,
    /// Every dead letter in the file (as listed when the command starts).
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// How long to wait for the process that holds the file to carry the request out; what
    /// it has not started by then is withdrawn.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub timeout: Duration,
}

/// `bus tap`
#[derive(Debug, Args)]
pub struct TapArgs {
    /// A subject or pattern: `*` matches one token, a final `>` the rest (quote it in a shell).
    pub pattern: String,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub conn: ServerArgs,
}

/// `bus pub`
#[derive(Debug, Args)]
pub struct PubArgs {
    /// A concrete subject (no wildcards).
    pub subject: String,
    /// The payload as JSON (`-`: read it from stdin).
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// A header to send, `Name=value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub conn: ServerArgs,
}

/// `bus req`
#[derive(Debug, Args)]
pub struct ReqArgs {
    /// A concrete subject (no wildcards).
    pub subject: String,
    /// The request payload as JSON (`-`: read it from stdin).
    #[arg(value_name = "JSON")]
    pub payload: String,
    /// How long to wait for the reply.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    pub timeout: Duration,
    /// A header to send, `Name=value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub conn: ServerArgs,
}

/// `bus health`
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// How long to listen for heartbeats (longer than the services' heartbeat interval).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = seconds)]
    pub wait: Duration,
    #[command(flatten)]
    pub conn: ServerArgs,
}

/// `bus catalog`
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Print the merged AsyncAPI 3.0 document (JSON) instead of the table.
    #[arg(long)]
    pub asyncapi: bool,
    /// How long to gather the services' answers.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = seconds)]
    pub wait: Duration,
    #[command(flatten)]
    pub conn: ServerArgs,
}

/// Where the NATS server is and how to log in: the builder's options, with the environment
/// variables of the `nats` CLI.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        short = 's',
        env = "NATS_URL",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub server: Vec<String>,
    /// User name (with --password).
    #[arg(long, env = "NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// Password (with --user; prefer the environment variable to the command line).
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// Token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["user", "creds", "nkey"])]
    pub token: Option<String>,
    /// A `.creds` file (user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS", value_name = "FILE", conflicts_with_all = ["user", "nkey"])]
    pub creds: Option<PathBuf>,
    /// A user NKey seed (`SU…`), or a file holding it.
    #[arg(
        long,
        env = "NATS_NKEY",
        value_name = "SEED|FILE",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    pub nkey: Option<String>,
    /// A root CA (PEM) to trust for TLS.
    #[arg(long = "tls-ca", env = "NATS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with --tls-key.
    #[arg(
        long = "tls-cert",
        env = "NATS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM), with --tls-cert.
    #[arg(
        long = "tls-key",
        env = "NATS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// How long to wait for the connection.
    #[arg(long = "connect-timeout", value_name = "SECS", default_value = "5", value_parser = seconds)]
    pub connect_timeout: Duration,
}

/// Seconds, fractions allowed (`0.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_file_then_ids_and_all_excludes_ids() {
        let cli = Cli::try_parse_from(["bus", "dead-letters", "replay", "f.db", "1", "2"]).unwrap();
        let Command::DeadLetters {
            command: DeadLettersCommand::Replay(args),
        } = cli.command
        else {
            panic!("not a replay")
        };
        assert_eq!(args.ids, [1, 2]);
        assert_eq!(args.file, PathBuf::from("f.db"));
        assert!(!args.all);

        let all = Cli::try_parse_from(["bus", "dead-letters", "purge", "f.db", "--all"]).unwrap();
        assert!(matches!(
            all.command,
            Command::DeadLetters { command: DeadLettersCommand::Purge(ChangeArgs { all: true, ref ids, .. }) } if ids.is_empty()
        ));
        for bad in [
            &["bus", "dead-letters", "purge", "f.db"][..],
            &["bus", "dead-letters", "purge", "--all", "f.db", "1"],
            &["bus", "dead-letters", "replay", "f.db", "x"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payload_positional_and_the_json_flag_coexist() {
        let cli = Cli::try_parse_from([
            "bus",
            "req",
            "--json",
            "agent.route.a",
            "{}",
            "--timeout",
            "0.5",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Req(args) = cli.command else {
            panic!("not a req")
        };
        assert_eq!(args.payload, "{}");
        assert_eq!(args.timeout, Duration::from_millis(500));
        let cli = Cli::try_parse_from(["bus", "pub", "plugin.x.y", "[1]", "-H", "A=b"]).unwrap();
        assert!(!cli.json);
        assert!(
            matches!(cli.command, Command::Pub(PubArgs { ref payload, ref headers, .. }) if payload == "[1]" && headers == &["A=b"])
        );
    }

    #[test]
    fn seconds_take_fractions() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(seconds("-1").is_err());
        assert!(seconds("soon").is_err());
    }
}
