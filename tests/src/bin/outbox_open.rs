//! Helper process for the outbox lock and permission tests (`tests/outbox_hardening.rs`): opens
//! a local `Bus` with an outbox at `OUTBOX_PATH` and prints `opened` (then waits to be killed)
//! or `refused: <the error>` and exits with status 3.
//!
//! Usage: `outbox_open OUTBOX_PATH`

use std::io::Write;

use bus::Bus;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path] = args.as_slice() else {
        panic!("usage: outbox_open OUTBOX_PATH");
    };
    let mut out = std::io::stdout().lock();
    match Bus::builder().local().outbox_path(path).connect().await {
        Ok(_bus) => {
            writeln!(out, "opened").expect("stdout");
            out.flush().expect("stdout");
            drop(out);
            std::future::pending::<()>().await;
        }
        Err(e) => {
            writeln!(out, "refused: {e}").expect("stdout");
            out.flush().expect("stdout");
            std::process::exit(3);
        }
    }
}
