//! `bus`: the operator's command for a `bus` deployment (`docs/design.md`, "Operations").
//!
//! `bus outbox` and `bus dead-letters` work on an outbox file that a running service holds,
//! without stopping it; `bus tap`, `bus pub`, `bus req` and `bus health` talk to NATS. See
//! `bus-cli/README.md` (every command, its output and exit codes), or `bus help`.

mod cli;
mod net;
mod out;
mod outbox;
mod value;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::out::{Failure, Outcome};

fn main() -> ExitCode {
    // clap exits with 2 on a usage error, 0 for --help and --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            out::failure(&f);
            f.code()
        }
    }
}

fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    match cli.command {
        // SQLite is blocking and local: no runtime needed.
        Command::Outbox { command } => outbox::outbox(command, json),
        Command::DeadLetters { command } => outbox::dead_letters(command, json),
        Command::Tap(args) => block_on(net::tap(args, json)),
        Command::Pub(args) => block_on(net::publish(args, json)),
        Command::Req(args) => block_on(net::request(args, json)),
        Command::Health(args) => block_on(net::health(args, json)),
        Command::Catalog(args) => block_on(net::catalog(args, json)),
    }
}

fn block_on(f: impl std::future::Future<Output = Outcome>) -> Outcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}
